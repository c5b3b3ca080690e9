"""data.py on real files: generated Tiny ImageNet-layout sources (conftest.make_source), zips built
from them, and the embedded archive."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_tiny import cli
from alexnet_tiny.data import (EMBEDDED_SHA256, OFFICIAL_VAL, SPLITS, Source, decode_image, ensure_dataset,
                               load_dataset, prepare, read_meta)
from alexnet_tiny.errors import UserError
from conftest import make_source, run_cli

TINY_WNIDS = ["n09000000", "n09000001", "n09000002"]
EMBEDDED_WNIDS = ["n01443537", "n01629819", "n01641577", "n01644900", "n01698640",
                  "n01742172", "n01768244", "n01770393", "n01774384", "n01774750"]


def split_files(root: Path) -> dict[str, list[str]]:
    """Relative paths of the image files in each split folder, read from disk."""
    return {s: sorted(p.relative_to(root).as_posix() for p in (root / s).rglob("*") if p.is_file()) for s in SPLITS}


def zip_folder(folder: Path, zip_path: Path, prefix: str = "tiny-imagenet-200/", extra: dict | None = None) -> Path:
    with zipfile.ZipFile(zip_path, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, prefix + p.relative_to(folder).as_posix())
        for name, blob in (extra or {}).items():
            z.writestr(name, blob)
    return zip_path


def jpeg_bytes(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ----------------------------------------------------------------------------- the prepared folder

def test_split_counts_per_class(tiny_data):
    files = split_files(tiny_data)
    expected = {"train": 400, "val": 50, "test": 50, OFFICIAL_VAL: 4}
    for split, per_class in expected.items():
        for w in TINY_WNIDS:
            assert sum(f.startswith(f"{split}/{w}/") for f in files[split]) == per_class, (split, w)
    ds = load_dataset(tiny_data, progress=False)
    for split, per_class in expected.items():
        assert torch.bincount(ds.splits[split].labels, minlength=3).tolist() == [per_class] * 3


def test_layout_is_imagefolder(tiny_data):
    assert sorted(p.name for p in tiny_data.iterdir()) == sorted([*SPLITS, "dataset.json", "decoded.pt"])
    for split in SPLITS:
        assert sorted(p.name for p in (tiny_data / split).iterdir()) == TINY_WNIDS
        for path in (tiny_data / split).rglob("*"):
            rel = path.relative_to(tiny_data / split)
            assert path.is_dir() == (len(rel.parts) == 1), path  # <split>/<wnid>/<file>.JPEG, nothing deeper
            if path.is_file():
                assert path.suffix == ".JPEG" and rel.parts[0] in TINY_WNIDS
    try:
        from torchvision.datasets import ImageFolder
    except ImportError:  # an optional extra; the layout check above is what ImageFolder relies on
        return
    folder = ImageFolder(str(tiny_data / "train"))
    assert folder.classes == TINY_WNIDS and len(folder) == 1200
    image, label = folder[0]
    assert image.size == (64, 64) and label == 0


def test_dataset_json(tiny_data, tiny_source):
    meta = json.loads((tiny_data / "dataset.json").read_text())
    assert meta["wnids"] == TINY_WNIDS
    assert meta["names"] == ["colour0", "colour1", "colour2"]  # first name of each words.txt entry
    assert meta["counts"] == {"train": 1200, "val": 150, "test": 150, OFFICIAL_VAL: 12}
    assert meta["split"] == "number" and meta["seed"] is None  # the study's split needs no seed
    assert meta["source_sha256"] == Source(tiny_source).sha256


def test_splits_are_disjoint_and_cover_the_train_images(tiny_data, tiny_source):
    files = split_files(tiny_data)
    for w in TINY_WNIDS:
        names = {s: {Path(f).name for f in files[s] if f.startswith(f"{s}/{w}/")} for s in ("train", "val", "test")}
        assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
        source_names = {p.name for p in (tiny_source / "train" / w / "images").iterdir()}
        assert names["train"] | names["val"] | names["test"] == source_names
    annotations = (tiny_source / "val" / "val_annotations.txt").read_text().split("\n")
    expected_official = sorted(f"{OFFICIAL_VAL}/{line.split()[1]}/{line.split()[0]}" for line in annotations if line)
    assert files[OFFICIAL_VAL] == expected_official


def test_prepared_files_are_the_source_bytes(tiny_data, tiny_source):
    for rel in split_files(tiny_data)["val"][:5]:
        _, wnid, name = rel.split("/")
        assert (tiny_data / rel).read_bytes() == (tiny_source / "train" / wnid / "images" / name).read_bytes()


def test_a_folder_of_an_earlier_version_is_used_and_said_so_once(small_data, tmp_path):
    """A data folder prepared before the split choice (its dataset.json has no "split": hashed) is used as
    it is; the first load in a process says so in one line with the command that re-prepares it."""
    old = Path(shutil.copytree(small_data, tmp_path / "old"))
    meta = json.loads((old / "dataset.json").read_text())
    del meta["split"]
    (old / "dataset.json").write_text(json.dumps(meta))
    lines = []
    first = ensure_dataset(old, progress=False, log=lines.append)
    ensure_dataset(old, progress=False, log=lines.append)
    assert len(first.splits["train"]) == len(ensure_dataset(small_data, progress=False, log=lines.append).splits["train"])
    assert lines == [f"{old}: prepared by an earlier version with a hashed split, not the study's split by file "
                     f"number; used as it is (to re-prepare: rm -r {old} && alexnet-tiny prepare --out {old})"]


def test_hashed_split_is_deterministic_in_the_seed(tiny_data, tiny_source, tmp_path):
    hashed = prepare(tmp_path / "hashed", source=tiny_source, classes=3, seed=0, split="hash", progress=False)
    same = prepare(tmp_path / "same", source=tiny_source, classes=3, seed=0, split="hash", progress=False)
    other = prepare(tmp_path / "other", source=tiny_source, classes=3, seed=1, split="hash", progress=False)
    assert split_files(same) == split_files(hashed)
    assert split_files(hashed)["test"] != split_files(tiny_data)["test"]  # not the study's numbered split
    a, b = split_files(hashed), split_files(other)
    assert a["val"] != b["val"] and a["test"] != b["test"]
    assert sorted(a["train"] + a["val"] + a["test"]) != sorted(b["train"] + b["val"] + b["test"])  # other folders
    names = lambda files: sorted(Path(f).name for s in ("train", "val", "test") for f in files[s])  # noqa: E731
    assert names(a) == names(b)  # the same images, only assigned differently
    assert read_meta(other)["seed"] == 1 and read_meta(other)["split"] == "hash"


def test_numbered_split_is_the_studys_on_the_embedded_archive(embedded_data):
    """The study's split: file numbers 0-49 validation, 50-99 test, 100-499 train, in every class."""
    files = split_files(embedded_data)
    numbers = {s: {} for s in ("train", "val", "test")}
    for split in numbers:
        for rel in files[split]:
            _, wnid, name = rel.split("/")
            assert name.startswith(f"{wnid}_")
            numbers[split].setdefault(wnid, set()).add(int(name[len(wnid) + 1:-len(".JPEG")]))
    for wnid in EMBEDDED_WNIDS:
        assert numbers["val"][wnid] == set(range(0, 50))
        assert numbers["test"][wnid] == set(range(50, 100))
        assert numbers["train"][wnid] == set(range(100, 500))


def test_numbered_split_refuses_names_without_numbers(tmp_path):
    src = make_source(tmp_path / "src", classes=1, per_class=500, val_per_class=1)
    folder = src / "train" / "n09000000" / "images"
    (folder / "n09000000_7.JPEG").rename(folder / "holiday.JPEG")
    with pytest.raises(UserError, match="holiday.JPEG: no file number"):
        prepare(tmp_path / "ds", source=src, classes=1, progress=False)
    assert not (tmp_path / "ds").exists()
    hashed = prepare(tmp_path / "hashed", source=src, classes=1, split="hash", progress=False, seed=0)
    assert read_meta(hashed)["counts"]["train"] == 400  # any names: 400 / 50 / 50


def test_numbered_split_needs_each_range(tmp_path):
    src = make_source(tmp_path / "src", classes=1, per_class=60, val_per_class=1)  # numbers 0-59: no train images
    with pytest.raises(UserError, match="no image numbered 100 or more for the train split"):
        prepare(tmp_path / "ds", source=src, classes=1, progress=False)


def test_cache_holds_every_image_decoded_once(tiny_data):
    ds = load_dataset(tiny_data, progress=False)
    for split in SPLITS:
        s = ds.splits[split]
        assert s.images.dtype == torch.uint8 and s.images.shape == (len(s.files), 3, 64, 64)
        assert s.labels.dtype == torch.int64 and sorted(s.files) == split_files(tiny_data)[split]
    train = ds.splits["train"]
    for i in (0, 417, 1199):
        path = tiny_data / train.files[i]
        assert train.labels[i].item() == TINY_WNIDS.index(path.parent.name)
        assert torch.equal(train.images[i], torch.tensor(decode_image(path.read_bytes(), str(path))))


def test_grayscale_images_become_three_equal_channels(tiny_data):
    ds = load_dataset(tiny_data, progress=False)
    gray = []
    for split in SPLITS:
        for i, rel in enumerate(ds.splits[split].files):
            with Image.open(tiny_data / rel) as im:
                if im.mode == "L":
                    gray.append((split, i))
    assert len(gray) >= 20  # make_source writes every 50th image in grayscale
    for split, i in gray:
        image = ds.splits[split].images[i]
        assert image.shape == (3, 64, 64)
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def expected_rgb(im: Image.Image) -> np.ndarray:
    """What an image of any of these modes shows, (64, 64, 3) uint8, worked out from its own pixels and
    palette (transparent pixels white)."""
    a = np.asarray(im)
    if im.mode == "1":
        return np.repeat(a[..., None].astype(np.uint8) * 255, 3, axis=2)
    if im.mode == "P":
        return np.array(im.getpalette(), dtype=np.uint8).reshape(-1, 3)[a]
    colour, alpha = (a[..., :-1], a[..., -1:]) if im.mode in ("LA", "RGBA") else (a, None)
    colour = np.repeat(colour[..., None], 3, axis=2) if colour.ndim == 2 else colour
    colour = np.broadcast_to(colour, (*a.shape[:2], 3)).astype(np.uint8)
    return colour if alpha is None else np.where(alpha == 255, colour, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1"])
def test_decode_image_any_mode_to_rgb(mode):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    im = rgb.convert(mode)
    if mode in ("LA", "RGBA"):  # the left half transparent
        im.putalpha(Image.fromarray(np.where(np.arange(64) < 32, 0, 255).astype(np.uint8)[None].repeat(64, 0)))
    buf = io.BytesIO()
    im.save(buf, "JPEG" if mode == "CMYK" else "PNG")
    out = decode_image(buf.getvalue(), "x.png")
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    got = out.transpose(1, 2, 0).astype(int)
    if mode == "CMYK":  # a lossy JPEG: near the colours it was made from
        assert np.abs(got - np.asarray(rgb, dtype=int)).mean() < 12
    else:
        assert np.array_equal(got, expected_rgb(im))


def test_embedded_archive(embedded_data):
    meta = read_meta(embedded_data)
    assert meta["wnids"] == EMBEDDED_WNIDS
    assert meta["names"][0] == "goldfish"
    assert meta["source_sha256"] == EMBEDDED_SHA256
    assert meta["counts"] == {"train": 4000, "val": 500, "test": 500, OFFICIAL_VAL: 500}
    ds = load_dataset(embedded_data, progress=False)
    assert [len(ds.splits[s]) for s in SPLITS] == [4000, 500, 500, 500]
    assert ds.splits["train"].images.shape[1:] == (3, 64, 64)
    # The split is a function of the file names only: pinned, so that it stays the same everywhere.
    digest = hashlib.sha256("\n".join(split_files(embedded_data)["test"]).encode()).hexdigest()
    assert digest == EMBEDDED_TEST_SPLIT_SHA256


# sha256 of the sorted test-split paths of the embedded archive prepared with the numbered split.
EMBEDDED_TEST_SPLIT_SHA256 = "867d230b2d6036fb7129101436771b65b5eb5a3e0171d7abcd3958407f3743b4"


# ----------------------------------------------------------------------------- re-running, cache

def mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_prepare_again_with_the_same_inputs_does_nothing(tiny_data, tiny_source):
    before = mtimes(tiny_data)
    assert prepare(tiny_data, source=tiny_source, classes=3, seed=0, progress=False) == tiny_data
    assert mtimes(tiny_data) == before
    assert not [p for p in tiny_data.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("change", [{"split": "hash"}, {"classes": 2}, {"wnids": ["n09000002"]}])
def test_prepare_refuses_other_inputs_into_an_existing_folder(tiny_data, tiny_source, change):
    before = mtimes(tiny_data)
    with pytest.raises(UserError, match="already exists with different contents"):
        prepare(tiny_data, source=tiny_source, **{"classes": 3, **change}, progress=False)
    assert mtimes(tiny_data) == before


def test_prepare_refuses_a_folder_that_is_not_a_dataset(tiny_source, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        prepare(out, source=tiny_source, classes=1, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    with pytest.raises(UserError, match="not a prepared dataset"):
        ensure_dataset(out, progress=False)


def test_prepare_into_an_existing_empty_folder(tiny_source, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    prepare(out, source=tiny_source, classes=1, progress=False)
    assert read_meta(out)["counts"]["train"] == 400


@pytest.fixture
def copied(tiny_data, tmp_path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(tiny_data, root)  # copy2 keeps mtimes: the cache stays valid
    return root


def test_cache_is_reused_while_the_folder_is_unchanged(copied):
    before = (copied / "decoded.pt").stat().st_mtime_ns
    load_dataset(copied, progress=False)
    assert (copied / "decoded.pt").stat().st_mtime_ns == before


def test_cache_rebuilt_when_an_image_is_deleted(tiny_data, copied):
    original = load_dataset(tiny_data, progress=False).splits["train"]
    gone = original.files[10]
    (copied / gone).unlink()
    train = load_dataset(copied, progress=False).splits["train"]
    assert len(train) == 1199 and gone not in train.files
    index = {f: i for i, f in enumerate(original.files)}
    for i, f in enumerate(train.files):
        assert torch.equal(train.images[i], original.images[index[f]]) and train.labels[i] == original.labels[index[f]]
    again = load_dataset(copied, progress=False).splits["train"]  # the rebuilt cache is now current
    assert again.files == train.files


def test_rebuilt_cache_equals_the_prepared_one(tiny_data, copied):
    """A cache rebuilt from the folder (deleted, damaged, or after touching files) holds the same images
    in the same order, so training on it gives the same results."""
    (copied / "decoded.pt").write_bytes(b"damaged")
    rebuilt = load_dataset(copied, progress=False)
    original = load_dataset(tiny_data, progress=False)
    for split in SPLITS:
        a, b = original.splits[split], rebuilt.splits[split]
        assert a.files == b.files, split
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_explicit_wnids_in_their_order(tiny_source, tmp_path):
    out = prepare(tmp_path / "ds", source=tiny_source, wnids=["n09000002", "n09000000"], progress=False)
    meta = read_meta(out)
    assert meta["wnids"] == ["n09000002", "n09000000"] and meta["names"] == ["colour2", "colour0"]
    assert meta["counts"] == {"train": 800, "val": 100, "test": 100, OFFICIAL_VAL: 8}
    ds = load_dataset(out, progress=False)
    for split in SPLITS:
        s = ds.splits[split]
        for f, y in zip(s.files, s.labels.tolist()):
            assert f.split("/")[1] == meta["wnids"][y]
    with pytest.raises(UserError, match="duplicate wnid"):
        prepare(tmp_path / "dup", source=tiny_source, wnids=["n09000001", "n09000001"], progress=False)


def test_cli_wnids_flag(tiny_source, tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli.main(["prepare", "--source", str(tiny_source), "--wnids", "n09000001", "--out", str(out), "-q"]) == 0
    assert read_meta(out)["wnids"] == ["n09000001"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"prepared {out}: 1 classes (train 400, val 50")


def test_classes_takes_the_first_wnids_in_sorted_order(tmp_path):
    src = make_source(tmp_path / "src", classes=2, per_class=500, val_per_class=1, gray_every=0)
    wnids = (src / "wnids.txt").read_text().split()
    (src / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    assert read_meta(prepare(tmp_path / "ds", source=src, classes=1, progress=False))["wnids"] == [min(wnids)]


def test_zip_and_extracted_folder_give_the_same_dataset(tiny_data, tiny_source, tmp_path):
    archive = zip_folder(tiny_source, tmp_path / "tiny-imagenet-200.zip")
    out = prepare(tmp_path / "from-zip", source=archive, classes=3, progress=False)
    assert split_files(out) == split_files(tiny_data)
    a, b = load_dataset(tiny_data, progress=False), load_dataset(out, progress=False)
    for split in SPLITS:
        assert a.splits[split].files == b.splits[split].files
        assert torch.equal(a.splits[split].images, b.splits[split].images)
    assert read_meta(out)["source_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- bad inputs

@pytest.fixture(scope="module")
def one_class(tmp_path_factory) -> Path:
    return make_source(tmp_path_factory.mktemp("one") / "tiny-imagenet-200", classes=1, val_per_class=2)


def source_copy(one_class: Path, tmp_path: Path) -> Path:
    src = tmp_path / "src" / "tiny-imagenet-200"
    shutil.copytree(one_class, src)
    return src


def first_image(src: Path) -> Path:
    return sorted((src / "train" / "n09000000" / "images").iterdir())[0]


def bad_missing_wnids(src, tmp_path):
    (src / "wnids.txt").unlink()
    return {"source": src}, "no wnids.txt"


def bad_missing_train(src, tmp_path):
    shutil.rmtree(src / "train")
    return {"source": src}, "missing train folder"


def bad_absent_wnid(src, tmp_path):
    return {"source": src, "wnids": ["n01443537"]}, "wnid n01443537 is not in its wnids.txt"


def bad_too_few_images(src, tmp_path):
    for n in range(50, 100):  # the study's test images of one class
        (src / "train" / "n09000000" / "images" / f"n09000000_{n}.JPEG").unlink()
    return {"source": src}, "no image numbered 50-99 for the test split"


def bad_too_many_classes(src, tmp_path):
    return {"source": src, "classes": 2}, "--classes 2: expected 1 to 1"


def bad_corrupt_jpeg(src, tmp_path):
    first_image(src).write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(3000))
    return {"source": src}, f"{first_image(src).name}: not a readable image"


def bad_truncated_jpeg(src, tmp_path):
    path = sorted((src / "train" / "n09000000" / "images").iterdir())[123]
    path.write_bytes(path.read_bytes()[:-200])
    return {"source": src}, f"{path.name}: not a readable image"


def bad_not_an_image(src, tmp_path):
    path = sorted((src / "train" / "n09000000" / "images").iterdir())[-1]
    path.write_text("this is not a JPEG")
    return {"source": src}, f"{path.name}: not a readable image"


def bad_corrupt_official_val(src, tmp_path):
    next((src / "val" / "images").iterdir()).write_bytes(b"GIF89a broken")
    return {"source": src}, "not a readable image"


def bad_missing_official_val(src, tmp_path):
    next((src / "val" / "images").iterdir()).unlink()
    return {"source": src}, "listed in val_annotations.txt but missing"


def bad_zip_slip(src, tmp_path):
    archive = zip_folder(src, tmp_path / "slip.zip", extra={"../evil.JPEG": jpeg_bytes()})
    return {"source": archive}, "unsafe zip entry '../evil.JPEG'"


def bad_zip_slip_nested(src, tmp_path):
    archive = zip_folder(src, tmp_path / "slip.zip",
                         extra={"tiny-imagenet-200/train/n09000000/images/../../../../evil.JPEG": jpeg_bytes()})
    return {"source": archive}, "unsafe zip entry"


def bad_zip_absolute(src, tmp_path):
    archive = zip_folder(src, tmp_path / "abs.zip", extra={"/tmp/evil.JPEG": jpeg_bytes()})
    return {"source": archive}, "unsafe zip entry '/tmp/evil.JPEG'"


def bad_not_a_zip(src, tmp_path):
    path = tmp_path / "fake.zip"
    path.write_bytes(b"PK but not really a zip archive")
    return {"source": path}, "not a readable zip archive"


def bad_nonexistent_source(src, tmp_path):
    return {"source": tmp_path / "nowhere.zip"}, "nowhere.zip: source does not exist"


BAD_INPUTS = [bad_missing_wnids, bad_missing_train, bad_absent_wnid, bad_too_few_images, bad_too_many_classes,
              bad_corrupt_jpeg, bad_truncated_jpeg, bad_not_an_image, bad_corrupt_official_val,
              bad_missing_official_val, bad_zip_slip, bad_zip_slip_nested, bad_zip_absolute, bad_not_a_zip,
              bad_nonexistent_source]


def assert_nothing_written(out: Path, tmp_path: Path):
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no temporary folder either
    assert not list(tmp_path.rglob("evil*"))


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=lambda f: f.__name__[4:])
def test_bad_input_is_refused_and_leaves_nothing(bad, one_class, tmp_path):
    kwargs, message = bad(source_copy(one_class, tmp_path), tmp_path)
    out = tmp_path / "out" / "ds"
    with pytest.raises(UserError) as e:
        prepare(out, **{"classes": 1, **kwargs}, progress=False)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert_nothing_written(out, tmp_path)


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=lambda f: f.__name__[4:])
def test_bad_input_through_the_cli(bad, one_class, tmp_path, capsys):
    kwargs, message = bad(source_copy(one_class, tmp_path), tmp_path)
    out = tmp_path / "out" / "ds"
    argv = ["prepare", "--source", str(kwargs["source"]), "--out", str(out), "-q",
            "--classes", str(kwargs.get("classes", 1))]
    if "wnids" in kwargs:
        argv += ["--wnids", ",".join(kwargs["wnids"])]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet-tiny prepare: error: ") and message in err and err.count("\n") == 1
    assert_nothing_written(out, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("bad", [bad_truncated_jpeg, bad_zip_slip, bad_nonexistent_source],
                         ids=lambda f: f.__name__[4:])
def test_bad_input_in_a_real_subprocess(bad, one_class, tmp_path):
    kwargs, message = bad(source_copy(one_class, tmp_path), tmp_path)
    out = tmp_path / "out" / "ds"
    proc = run_cli("prepare", "--source", kwargs["source"], "--classes", 1, "--out", out)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("alexnet-tiny")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert_nothing_written(out, tmp_path)


def test_load_dataset_without_dataset_json(tmp_path):
    with pytest.raises(UserError, match="not a prepared dataset description"):
        load_dataset(tmp_path, progress=False)


# ----------------------------------------------------------------------------- ensure_dataset: explicit folders

def test_ensure_dataset_refuses_a_folder_that_does_not_exist(tmp_path):
    data = tmp_path / "nowhere" / "data"
    with pytest.raises(UserError) as e:
        ensure_dataset(data, progress=False)
    assert str(e.value) == f"{data}: no such dataset folder; run `alexnet-tiny prepare --out {data}` to prepare it"
    assert list(tmp_path.iterdir()) == []  # nothing prepared there


def test_ensure_dataset_refuses_an_empty_explicit_folder(tmp_path):
    with pytest.raises(UserError) as e:
        ensure_dataset(tmp_path, progress=False)
    assert str(e.value) == (f"{tmp_path}: not a prepared dataset (no dataset.json); "
                            f"run `alexnet-tiny prepare --out {tmp_path}`")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("root", [None, "data/tiny-image10"], ids=["implicit", "named"])
def test_ensure_dataset_prepares_the_default_folder_on_first_use(root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DEFAULT_DATA_DIR is relative: data/tiny-image10 in the current folder
    dataset = ensure_dataset(root, progress=False)
    assert dataset.wnids == EMBEDDED_WNIDS and (tmp_path / "data" / "tiny-image10" / "dataset.json").is_file()


def test_train_with_data_that_does_not_exist_through_the_cli(tmp_path):
    data, run = tmp_path / "nonexistent" / "path", tmp_path / "run"
    proc = run_cli("train", "--data", data, "--out", run, "--preset", "quick", "--epochs", 1, "--device", "cpu", "-q",
                   cwd=tmp_path)  # quick, 1 epoch: short even where the folder would be prepared and trained on
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"alexnet-tiny train: error: {data}: no such dataset folder; "
                                        f"run `alexnet-tiny prepare --out {data}` to prepare it"]
    assert list(tmp_path.iterdir()) == []  # no data folder, no run folder


def test_a_name_ending_in_wnids_txt_is_not_the_root(tiny_source, tmp_path):
    archive = zip_folder(tiny_source, tmp_path / "t.zip", extra={"README_wnids.txt": "how to read wnids.txt"})
    assert Source(archive).has("wnids.txt")  # the root is tiny-imagenet-200/, not the archive's top


@pytest.mark.parametrize("name", ["wnids.txt", "val/val_annotations.txt"])
def test_text_files_that_are_not_utf8_are_refused(name, tmp_path):
    src = make_source(tmp_path / "src", classes=1, per_class=120, val_per_class=1)
    path = src / name
    path.write_bytes(b"\xff\xfe" + path.read_bytes())
    with pytest.raises(UserError, match=f"{name}: not UTF-8 text"):
        prepare(tmp_path / "ds", source=src, classes=1, progress=False)


@pytest.mark.parametrize("kind", ["16-bit png", "32-bit int tiff", "float tiff"])
def test_deep_images_are_scaled_not_clipped(kind):
    """A horizontal gradient over the whole range of a 16-bit or float image comes out as the same
    gradient in 8 bits, in prepare's decoding and in predict's loading (one function)."""
    from alexnet_tiny.predict import load_image
    ramp = np.tile(np.linspace(0, 1, 64), (64, 1))
    if kind == "16-bit png":
        im, fmt = Image.fromarray(np.round(ramp * 65535).astype(np.uint16)), "PNG"
    elif kind == "32-bit int tiff":
        im, fmt = Image.fromarray(np.round(ramp * 65535).astype(np.int32), "I"), "TIFF"
    else:
        im, fmt = Image.fromarray(ramp.astype(np.float32), "F"), "TIFF"
    buf = io.BytesIO()
    im.save(buf, fmt)
    out = decode_image(buf.getvalue(), "x")
    expected = np.round(ramp * 255)
    assert np.abs(out[0].astype(float) - expected).max() <= 1 and (out[0] == out[1]).all()
    path = Path(tempfile.mkdtemp()) / f"x.{fmt.lower()}"
    path.write_bytes(buf.getvalue())
    assert np.array_equal(load_image(path).numpy(), out)


def test_a_member_with_a_bad_crc_is_one_line(tiny_source, tmp_path):
    archive = zip_folder(tiny_source, tmp_path / "t.zip")
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("tiny-imagenet-200/train/n09000000/images/n09000000_7.JPEG")
    blob = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    blob[start + 100] ^= 0xFF  # a stored member's byte, flipped: its CRC no longer matches
    archive.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="n09000000_7.JPEG: cannot be read from the archive .*CRC"):
        prepare(tmp_path / "ds", source=archive, classes=1, progress=False)
    assert not (tmp_path / "ds").exists()
