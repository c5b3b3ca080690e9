"""Property-based fuzzing (Hypothesis) of what users hand the tool: grid files, flag values, image
files and archives. The property everywhere: it works, or it says what is wrong in one line (a
UserError, or argparse's exit 2); never another exception (a traceback), never a file left
half-written or outside the output folder.

Bounded in the suite: a fixed number of examples (FUZZ_EXAMPLES, default 25) drawn from a fixed seed
(derandomize). A longer hunt: ALEXNET_TINY_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz.py."""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from alexnet_tiny import cli
from alexnet_tiny.config import HYPERPARAMETERS
from alexnet_tiny.data import decode_image, prepare
from alexnet_tiny.errors import UserError
from alexnet_tiny.grid import expand, load_grid_toml
from conftest import make_source

FUZZ_EXAMPLES = int(os.environ.get("ALEXNET_TINY_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def one_line(e: UserError) -> None:
    assert str(e) and "\n" not in str(e) and "Traceback" not in str(e)


# ----------------------------------------------------------------------------- grid files

toml_scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                         st.booleans(), st.text(max_size=12), st.just(0), st.just(1), st.just(0.5))
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=4))
keys = st.one_of(st.sampled_from([*HYPERPARAMETERS, "preset", "variant"]), st.text(min_size=1, max_size=10))


def toml_literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
    if isinstance(v, str):
        return '"' + v.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_literal(x) for x in v) + "]"
    return str(v)


@FUZZ
@given(st.dictionaries(keys, toml_values, max_size=5), st.binary(max_size=40))
def test_any_grid_file_expands_or_says_why(table, noise):
    body = "".join(f'"{k.encode("unicode_escape").decode("ascii")}" = {toml_literal(v)}\n' for k, v in table.items())
    with tempfile.TemporaryDirectory() as folder:
        for text in (body.encode(), body.encode() + noise):  # a valid-looking file, and one with garbage after it
            path = Path(folder) / "grid.toml"
            path.write_bytes(text)
            try:
                trials = expand(load_grid_toml(path), where=str(path))
            except UserError as e:
                one_line(e)
            else:
                assert all(t.validate() is t for t in trials)


# ----------------------------------------------------------------------------- flags

flag_values = st.one_of(st.text(max_size=8), st.integers(-10**9, 10**9).map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr), st.sampled_from(["", "-1", "0", "1e400"]))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([n.replace("_", "-") for n in HYPERPARAMETERS] + ["preset"]), flag_values),
                max_size=4))
def test_any_train_flags_parse_or_say_why(flags):
    argv = ["train"] + [x for name, value in flags for x in (f"--{name}", value)]
    try:
        args = cli.build_parser().parse_args(argv)
        cli.config_from_args(args)
    except SystemExit as e:  # argparse: one line and exit 2 (tests/test_cli.py checks the line)
        assert e.code == 2
    except UserError as e:
        one_line(e)


# ----------------------------------------------------------------------------- images

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F", "HSV", "LAB"]
FORMATS = {"PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP"}


def image_bytes(mode: str, width: int, height: int, fmt: str, seed: int) -> bytes | None:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    try:
        if mode == "I;16":
            im = Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16))
        elif mode == "I":
            im = Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.int32), "I")
        elif mode == "F":
            im = Image.fromarray(rng.random((height, width)).astype(np.float32), "F")
        else:
            im = rgb.convert(mode)
        buf = io.BytesIO()
        im.save(buf, fmt)
        return buf.getvalue()
    except (OSError, ValueError, KeyError):
        return None  # PIL cannot write this mode in this format: nothing to test


@FUZZ
@given(st.sampled_from(MODES), st.integers(1, 300), st.integers(1, 300), st.sampled_from(sorted(FORMATS)),
       st.integers(0, 2**16), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
       st.integers(0, 100))
def test_any_image_decodes_to_64px_rgb_or_says_why(mode, width, height, fmt, seed, flips, cut):
    blob = image_bytes(mode, width, height, fmt, seed)
    if blob is None:
        return
    damaged = bytearray(blob)
    for position, value in flips:  # corrupted bytes
        damaged[position % len(damaged)] = value
    for data in (blob, bytes(damaged), blob[: len(blob) * cut // 100]):
        try:
            out = decode_image(data, "fuzzed image")
        except UserError as e:
            one_line(e)
        else:
            assert out.shape == (3, 64, 64) and out.dtype == np.uint8


# ----------------------------------------------------------------------------- archives

@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> Path:
    """A 2-class source with the 100 numbered images each split needs, zipped."""
    folder = make_source(tmp_path_factory.mktemp("fuzz") / "tiny-imagenet-200", classes=2, per_class=110,
                         val_per_class=2, gray_every=7)
    archive = folder.parent / "source.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, "tiny-imagenet-200/" + p.relative_to(folder).as_posix())
    return archive


MUTATIONS = st.lists(st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 100)),
    st.tuples(st.just("flip"), st.integers(0, 10**7)),
    st.tuples(st.just("remove"), st.integers(0, 10**4)),
    st.tuples(st.just("rename"), st.integers(0, 10**4), st.text(min_size=1, max_size=12)),
    st.tuples(st.just("duplicate"), st.integers(0, 10**4)),
    st.tuples(st.just("rewrite"), st.integers(0, 10**4), st.binary(max_size=64))), min_size=1, max_size=3)


def mutate(archive: Path, mutations: list[tuple], out: Path) -> Path:
    """A copy of the archive with members removed, renamed, duplicated or rewritten, then bytes
    flipped and the file truncated."""
    with zipfile.ZipFile(archive) as z:
        members = [(info.filename, z.read(info)) for info in z.infolist()]
    for kind, *args in mutations:
        if not members:
            break
        i = args[0] % len(members) if kind in ("remove", "rename", "duplicate", "rewrite") else None
        if kind == "remove":
            members.pop(i)
        elif kind == "rename":
            members[i] = (members[i][0].rsplit("/", 1)[0] + "/" + args[1].replace("/", "_"), members[i][1])
        elif kind == "duplicate":
            members.append(members[i])
        elif kind == "rewrite":
            members[i] = (members[i][0], args[1])
    with zipfile.ZipFile(out, "w") as z, __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")  # duplicate names
        for name, blob in members:
            z.writestr(name, blob)
    data = bytearray(out.read_bytes())
    for kind, *args in mutations:
        if kind == "flip" and data:
            data[args[0] % len(data)] ^= 0xFF
        elif kind == "truncate":
            data = data[: max(1, len(data) * args[0] // 100)]
    out.write_bytes(bytes(data))
    return out


@FUZZ
@given(MUTATIONS)
def test_any_damaged_archive_prepares_or_says_why_and_leaves_nothing_behind(small_source, mutations):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        archive = mutate(small_source, mutations, folder / "mutated.zip")
        out = folder / "out" / "data"
        try:
            prepare(out, source=archive, classes=2, progress=False)
        except UserError as e:
            one_line(e)
            assert not out.exists()
        else:
            assert (out / "dataset.json").exists() and (out / "decoded.pt").exists()
        leftovers = [p.name for p in (folder / "out").iterdir() if p.name != "data"] if (folder / "out").exists() else []
        assert leftovers == []  # no temporary folder, no lock file
        shutil.rmtree(folder / "out", ignore_errors=True)
