"""Shared fixtures: a generated Tiny ImageNet-layout source (real JPEGs written to disk), the
prepared datasets built from it and from the embedded archive, and a CLI runner (real subprocess)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_tiny.config import TrainConfig
from alexnet_tiny.data import OFFICIAL_VAL, load_dataset, prepare, read_meta
from alexnet_tiny.files import write_json

RAY_INSTALLED = importlib.util.find_spec("ray") is not None


def pytest_collection_modifyitems(config, items):
    """Tests marked `ray` need Ray Tune, which the README's install leaves out: without it they skip,
    saying so. ALEXNET_TINY_REQUIRE_RAY=1 (CI's second run, with Ray installed) makes a missing Ray an
    error instead, so that run cannot pass by skipping everything it is for."""
    if RAY_INSTALLED:
        return
    if os.environ.get("ALEXNET_TINY_REQUIRE_RAY"):
        raise pytest.UsageError("ALEXNET_TINY_REQUIRE_RAY is set but Ray is not importable")
    skip = pytest.mark.skip(reason="needs Ray Tune: pip install -e '.[test,ray]'")
    for item in items:
        if item.get_closest_marker("ray") is not None:
            item.add_marker(skip)


# Small and fast, still real: 64x64 inputs, batch 32, two epochs.
FAST = TrainConfig(lr=0.01, momentum=0.9, gamma=0.5, step_size=1, batch_size=32, epochs=2, image_size=64)
# Grids on the quick preset whose tests need a trial that learns in one epoch of the small data (so
# that ASHA has trials to stop) train as the earlier quick preset did: Kaiming init, dropout 0.5,
# plain crops, no label smoothing (TOML lines to add to such a grid).
LEARNS_AT_ONCE = {"init": "kaiming", "dropout": 0.5, "augment": "crop", "label_smoothing": 0.0}
LEARNS_AT_ONCE_TOML = "".join(f"{k} = {v!r}\n" if isinstance(v, str) else f"{k} = {v}\n" for k, v in LEARNS_AT_ONCE.items())

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]


def make_source(root: Path, classes: int = 3, per_class: int = 500, val_per_class: int = 4,
                gray_every: int = 50, seed: int = 0) -> Path:
    """Write a Tiny ImageNet-layout folder: one colour per class plus noise, so a model can learn it;
    every `gray_every`-th image is grayscale ("L"), as some real ones are."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{9000000 + k:08d}" for k in range(classes)]
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tcolour{k}, shade {k}\n" for k, w in enumerate(wnids)))

    def image(k: int, i: int) -> Image.Image:
        base = np.array(COLOURS[k % len(COLOURS)], dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 60, (64, 64, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(pixels)
        return im.convert("L") if gray_every and i % gray_every == 0 else im

    lines = []
    for k, w in enumerate(wnids):
        folder = root / "train" / w / "images"
        folder.mkdir(parents=True)
        for i in range(per_class):
            image(k, i).save(folder / f"{w}_{i}.JPEG", quality=90)
        for i in range(val_per_class):
            name = f"val_{k * val_per_class + i}.JPEG"
            (root / "val" / "images").mkdir(parents=True, exist_ok=True)
            image(k, i + 1).save(root / "val" / "images" / name, quality=90)
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> Path:
    return make_source(tmp_path_factory.mktemp("src") / "tiny-imagenet-200")


@pytest.fixture(scope="session")
def tiny_data(tiny_source, tmp_path_factory) -> Path:
    """Prepared 3-class dataset (1,200 train / 150 val / 150 test / 12 official-val images)."""
    return prepare(tmp_path_factory.mktemp("data") / "tiny3", source=tiny_source, classes=3, progress=False)


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory) -> Path:
    """The embedded Tiny Image10 archive, prepared (real images)."""
    return prepare(tmp_path_factory.mktemp("data") / "tiny-image10", progress=False)


SMALL_PER_CLASS = {"train": 64, "val": 20, "test": 20, OFFICIAL_VAL: 2}


@pytest.fixture(scope="session")
def small_data(tiny_data, tmp_path_factory) -> Path:
    """tiny_data cut to 64 train / 20 val / 20 test / 2 official-val images per class, for tests that
    train several times (resume, grids): a real prepared folder whose cache is rebuilt from what is left."""
    root = tmp_path_factory.mktemp("data") / "small3"
    shutil.copytree(tiny_data, root)
    for split, keep in SMALL_PER_CLASS.items():
        for folder in (root / split).iterdir():
            for path in sorted(folder.iterdir())[keep:]:
                path.unlink()
    meta = read_meta(root)
    counts = {split: keep * len(meta["wnids"]) for split, keep in SMALL_PER_CLASS.items()}
    write_json(root / "dataset.json", {**meta, "counts": counts})
    load_dataset(root, progress=False)  # rebuild the decoded cache once, here
    return root


NARROW = Path(__file__).parent / "narrow"
# The environment of CLI subprocesses that train the narrow network too (narrow/sitecustomize.py).
NARROW_HIDDEN = 256
NARROW_ENV = {"PYTHONPATH": os.pathsep.join([str(NARROW), *filter(None, [os.environ.get("PYTHONPATH")])]),
              "NARROW_HIDDEN": str(NARROW_HIDDEN)}


@pytest.fixture(scope="module")
def narrow_alexnet():
    """For test modules that train many trial-epochs but do not need the real width: AlexNet's two
    hidden fully connected layers 256 wide instead of 4096, in this process (every layer, code path
    and file the same; a trial folder's checkpoints 50 MB instead of 0.7 GB). Subprocesses (the CLI)
    train the real network unless started with NARROW_ENV.
    Use with `pytestmark = pytest.mark.usefixtures("narrow_alexnet")`."""
    from alexnet_tiny import model
    before, model.HIDDEN = model.HIDDEN, NARROW_HIDDEN
    yield
    model.HIDDEN = before


TIMING = ("epoch_seconds", "images_per_second")  # metrics that differ between identical runs


def quiet(_msg: str) -> None:
    """A `log` that drops every line."""


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def stop_after(epoch: int):
    """A callback that presses Ctrl-C once `epoch` is finished (and saved)."""
    def callback(row):
        if row["epoch"] == epoch:
            raise KeyboardInterrupt
    return callback


def run_cli(*args, cwd=None, timeout=600, check=False, env=None) -> subprocess.CompletedProcess:
    """Run `python -m alexnet_tiny ARGS` as a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "alexnet_tiny", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
