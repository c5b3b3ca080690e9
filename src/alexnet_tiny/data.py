"""Tiny ImageNet archive -> deterministic split -> prepared ImageFolder -> decoded uint8 cache.

Each class's images in the official train/ folder are split three ways (SPLIT_KINDS): "number", the
study's split by the file number n of `<wnid>_<n>.JPEG` (0-49 val, 50-99 test, 100 and up train),
or "hash", 400 / 50 / 50 ordered by a seeded hash of the file names. Both are pure functions of the
file names. The official val/ images of the chosen classes are a fourth split, official-val.

A *source* is the official `tiny-imagenet-200.zip`, any cut of it with the same layout (such as
the embedded 10-class archive), or an extracted folder. `prepare` writes the chosen classes as
`<out>/<split>/<wnid>/<file>.JPEG` plus `dataset.json` and `decoded.pt` (every image decoded once
to N x 3 x 64 x 64 uint8), building in a temporary folder that is renamed into place at the end.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import io
import itertools
import json
import os
import pickle
import re
import shutil
import stat
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import UserError
from .files import atomic_torch_save, folder_lock, write_json
from .progress import progress_bar

EMBEDDED_ARCHIVE = Path(__file__).parent / "assets" / "tiny-imagenet-200-first10.zip"
EMBEDDED_SHA256 = "5655dbb60c42683ced814ce19d786bd1ce7a6a7d1d7bd62d75b1a6e365bf6972"
DEFAULT_DATA_DIR = Path("data/tiny-image10")

SPLIT_SIZES = {"train": 400, "val": 50, "test": 50}  # "hash": taken from each class's 500 train images
# "number": the file numbers of each split, as the study split them (train: every number from 100 up)
SPLIT_NUMBERS = {"val": range(0, 50), "test": range(50, 100)}
FIRST_TRAIN_NUMBER = 100
SPLIT_KINDS = ("number", "hash")
LEGACY_SPLIT = "hash"  # the split of folders prepared (and runs recorded) before the choice existed
OFFICIAL_VAL = "official-val"  # the official validation images: never used for training or selection
SPLITS = (*SPLIT_SIZES, OFFICIAL_VAL)
CACHE_SIZE = 64  # decoded cache resolution (Tiny ImageNet's native size)
FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


# ----------------------------------------------------------------------------- sources

MAX_MEMBER_BYTES = 64 << 20  # the largest file of Tiny ImageNet (words.txt) is 2.6 MB, an image a few kB


class Source:
    """Read-only view of a Tiny ImageNet tree (zip or folder) by paths relative to its root,
    the folder that holds wnids.txt."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else EMBEDDED_ARCHIVE
        if not self.path.exists():
            raise UserError(f"{self.path}: source does not exist (expected a Tiny ImageNet .zip or folder)")
        self._zip = None
        if self.path.is_dir():
            self._names = self._walk_folder()
        else:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                raise UserError(f"{self.path}: not a readable zip archive ({e})") from None
            self._names = self._zip_names()
        self.sha256 = self._fingerprint()
        if self.path == EMBEDDED_ARCHIVE and self.sha256 != EMBEDDED_SHA256:
            raise UserError(f"{self.path}: embedded archive is corrupt (sha256 {self.sha256}, expected {EMBEDDED_SHA256})")

    def _walk_folder(self) -> dict[str, str]:
        root = _find_root([str(p.relative_to(self.path).as_posix()) for p in self.path.rglob("wnids.txt")], self.path)
        base = self.path / root
        names = {}
        for dirpath, _, files in os.walk(base):
            for f in files:
                full = Path(dirpath) / f
                names[full.relative_to(base).as_posix()] = str(full)
        return names

    def _zip_names(self) -> dict[str, str]:
        entries = self._zip.namelist()
        for name in entries:
            if _unsafe_entry(name):
                raise UserError(f"{self.path}: unsafe zip entry {name!r} (absolute or escaping the archive root)")
        root = _find_root([n for n in entries if PurePosixPath(n).name == "wnids.txt"], self.path)
        return {n[len(root):]: n for n in entries if n.startswith(root) and not n.endswith("/")}

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        if self._zip is not None:
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        else:  # a folder: names and sizes (hashing every file of a 100k-image tree is too slow)
            for rel in sorted(self._names):
                try:
                    size = os.stat(self._names[rel]).st_size
                except OSError as e:  # a broken or looping link
                    raise UserError(f"{self.describe(rel)}: cannot be read ({e.strerror})") from None
                h.update(f"{rel}\0{size}\n".encode())
        return h.hexdigest()

    def names(self) -> list[str]:
        return list(self._names)

    def has(self, rel: str) -> bool:
        return rel in self._names

    def read(self, rel: str) -> bytes:
        """A member's bytes. Refused before reading: a member larger than MAX_MEMBER_BYTES (declared
        by the zip, or found while reading: a zip bomb inflates far past its declared size only if it
        lies, and then the read stops at the limit), and in a folder anything but a regular file (a
        FIFO would block forever, /dev/zero never ends)."""
        try:
            if self._zip is not None:
                info = self._zip.getinfo(self._names[rel])
                self._check_size(rel, info.file_size)
                with self._zip.open(info) as f:
                    blob = f.read(MAX_MEMBER_BYTES + 1)
                self._check_size(rel, len(blob))
                return blob
            path = self._names[rel]
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise UserError(f"{self.describe(rel)}: not a regular file (a FIFO, device or socket); expected "
                                f"an image or text file")
            self._check_size(rel, st.st_size)
            with open(path, "rb") as f:
                blob = f.read(MAX_MEMBER_BYTES + 1)
            self._check_size(rel, len(blob))
            return blob
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            # a bad CRC, a damaged or truncated member, an unsupported compression, an encrypted member
            raise UserError(f"{self.describe(rel)}: cannot be read from the archive ({e})") from None

    def _check_size(self, rel: str, size: int) -> None:
        if size > MAX_MEMBER_BYTES:
            raise UserError(f"{self.describe(rel)}: {size:,} bytes, over the limit of {MAX_MEMBER_BYTES:,} for a "
                            f"member of a Tiny ImageNet tree (its images are a few kB; a zip bomb?)")

    def describe(self, rel: str) -> str:
        return f"{self.path}:{self._names.get(rel, rel)}"

    def read_text(self, rel: str) -> str:
        try:
            return self.read(rel).decode()
        except UnicodeDecodeError as e:
            raise UserError(f"{self.describe(rel)}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _unsafe_entry(name: str) -> bool:
    return (name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None
            or ".." in PurePosixPath(name.replace("\\", "/")).parts)


def _find_root(wnids_paths: list[str], where: Path) -> str:
    """The prefix ('' or 'tiny-imagenet-200/') of the shallowest wnids.txt."""
    if not wnids_paths:
        raise UserError(f"{where}: no wnids.txt found (expected a Tiny ImageNet archive or folder)")
    best = min(wnids_paths, key=lambda p: p.count("/"))
    return best[: -len("wnids.txt")]


# ----------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class Item:
    split: str
    wnid: str
    source: str  # path inside the source
    target: str  # path inside the prepared folder


def read_wnids(source: Source) -> list[str]:
    if not source.has("wnids.txt"):
        raise UserError(f"{source.path}: missing wnids.txt")
    listed = source.read_text("wnids.txt").lstrip("\ufeff").split()  # a byte-order mark is no part of a wnid
    if not listed:
        raise UserError(f"{source.describe('wnids.txt')}: lists no class (expected one wnid per line)")
    seen: set[str] = set()
    twice = next((w for w in listed if w in seen or seen.add(w)), None)
    if twice is not None:
        raise UserError(f"{source.describe('wnids.txt')}: {twice} is listed twice (expected each class once)")
    return sorted(listed)


def choose_wnids(available: list[str], classes: int = 10, wnids: list[str] | None = None, where="source") -> list[str]:
    if wnids:
        missing = [w for w in wnids if w not in available]
        if missing:
            raise UserError(f"{where}: wnid {missing[0]} is not in its wnids.txt")
        if len(set(wnids)) != len(wnids):
            raise UserError(f"--wnids: duplicate wnid in {','.join(wnids)}")
        return list(wnids)
    if not 1 <= classes <= len(available):
        raise UserError(f"--classes {classes}: expected 1 to {len(available)} (classes in {where})")
    return available[:classes]


def class_names(source: Source, wnids: list[str]) -> list[str]:
    """First name of each wnid's words.txt entry ('goldfish'); the wnid itself where absent."""
    table = {}
    if source.has("words.txt"):
        for line in source.read("words.txt").decode(errors="replace").splitlines():
            wnid, _, words = line.partition("\t")
            table[wnid] = words.split(",")[0].strip()
    return [table.get(w) or w for w in wnids]


def split_key(seed: int, name: str) -> str:
    """Order images by a hash of (seed, file name): the same split on any machine and Python."""
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def file_number(name: str) -> int | None:
    """n of `<wnid>_<n>.JPEG` (None when the name carries no such number)."""
    match = re.search(r"_(\d+)\.[^.]+$", PurePosixPath(name).name)
    return int(match.group(1)) if match else None


def split_by_number(files: list[str], where: str) -> dict[str, list[str]]:
    """The study's split of one class's files: 0-49 val, 50-99 test, 100 and up train."""
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for name in files:
        n = file_number(name)
        if n is None:
            raise UserError(f"{where}{PurePosixPath(name).name}: no file number (expected <wnid>_<n>.JPEG for "
                            f"--split number; --split hash splits any names)")
        split = next((s for s, numbers in SPLIT_NUMBERS.items() if n in numbers), "train")
        splits[split].append(name)
    for split, names in splits.items():
        if not names:
            numbers = SPLIT_NUMBERS.get(split)
            which = f"{numbers.start}-{numbers.stop - 1}" if numbers else f"{FIRST_TRAIN_NUMBER} or more"
            raise UserError(f"{where}: no image numbered {which} for the {split} split")
    return splits


def split_by_hash(files: list[str], seed: int, where: str) -> dict[str, list[str]]:
    """400 / 50 / 50 of one class's files, in the order of a seeded hash of their names."""
    need = sum(SPLIT_SIZES.values())
    if len(files) < need:
        raise UserError(f"{where}: {len(files)} images, the split needs {need}")
    files = sorted(files, key=lambda n: split_key(seed, PurePosixPath(n).name))
    starts = [0, *itertools.accumulate(SPLIT_SIZES.values())]
    return {split: files[start:start + size] for (split, size), start in zip(SPLIT_SIZES.items(), starts)}


def plan_split(source: Source, wnids: list[str], split: str = "number", seed: int = 0) -> list[Item]:
    if not any(n.startswith("train/") for n in source.names()):
        raise UserError(f"{source.path}: missing train folder")
    if split not in SPLIT_KINDS:
        raise UserError(f"--split {split}: expected one of {', '.join(SPLIT_KINDS)}")
    by_class: dict[str, list[str]] = {w: [] for w in wnids}
    for n in source.names():  # one pass over the archive, whatever the class count
        parts = n.split("/")
        if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and parts[1] in by_class \
                and n.lower().endswith(IMAGE_SUFFIXES):
            by_class[parts[1]].append(n)
    items = []
    for wnid, files in by_class.items():
        where = source.describe(f"train/{wnid}/images/")
        files.sort()
        splits = split_by_number(files, where) if split == "number" else split_by_hash(files, seed, where)
        for name, chosen in splits.items():
            items += [Item(name, wnid, n, f"{name}/{wnid}/{PurePosixPath(n).name}") for n in chosen]
    return items + plan_official_val(source, wnids)


def dataset_identity(meta: dict) -> dict:
    """What makes two prepared folders hold the same images in the same splits: the source, the
    classes and the split (folders from before the split choice were hashed)."""
    kind = meta.get("split", LEGACY_SPLIT)
    return {"source_sha256": meta.get("source_sha256"), "wnids": list(meta["wnids"]), "split": kind,
            "seed": meta.get("seed") if kind == "hash" else None}


def split_membership(splits: dict) -> dict[str, str]:
    """Which images each split holds: a digest of its file names (class folder and file, not the
    split folder, sizes or times), so that an image moved from test/ to train/ changes both."""
    return {s: hashlib.sha256("\n".join(sorted(f.split("/", 1)[-1] for f in split.files)).encode()).hexdigest()[:16]
            for s, split in splits.items()}


def identity_difference(recorded: dict, current: dict, same_source: bool = True) -> str | None:
    """How a dataset differs from the one a run or checkpoint recorded (None if it does not); fields
    the record lacks (older runs) are not compared. A resume (`same_source`) needs every split to hold
    the images it held. Evaluation (`same_source=False`) allows another source with the same classes,
    split and training images (the same images cut from the full archive), and other val, test or
    official-val images: with the training images the same, none of them was trained on."""
    if recorded.get("wnids") is not None and list(recorded["wnids"]) != list(current["wnids"]):
        return "other classes"
    if "split" in recorded and (recorded["split"], recorded.get("seed")) != (current["split"], current["seed"]):
        return (f"split {split_description(current)}, where the run used split {split_description(recorded)}; "
                f"its val and test images would include images it trained on")
    members = current.get("members") or {}
    for split, digest in (recorded.get("members") or {}).items():
        if (same_source or split == "train") and members.get(split) != digest:
            return (f"its {split} split holds other images than the run's (images added, removed or moved "
                    f"between splits since)")
    if same_source and recorded.get("source_sha256") and recorded["source_sha256"] != current["source_sha256"]:
        return "another source archive"
    return None


def split_description(meta: dict) -> str:
    """How a prepared folder was split, in words ("number", "hash, seed 0"); folders from before the
    choice were hashed."""
    kind = meta.get("split", LEGACY_SPLIT)
    return kind if kind == "number" else f"hash, seed {meta.get('seed')}"


def plan_official_val(source: Source, wnids: list[str]) -> list[Item]:
    if not source.has("val/val_annotations.txt"):
        return []
    chosen = set(wnids)
    items = []
    for line in source.read_text("val/val_annotations.txt").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in chosen:
            rel = f"val/images/{parts[0]}"
            if not source.has(rel):
                raise UserError(f"{source.describe(rel)}: listed in val_annotations.txt but missing")
            items.append(Item(OFFICIAL_VAL, parts[1], rel, f"{OFFICIAL_VAL}/{parts[1]}/{parts[0]}"))
    return sorted(items, key=lambda i: (wnids.index(i.wnid), i.target))


# ----------------------------------------------------------------------------- decoding

def eight_bit(im: Image.Image) -> Image.Image:
    """16-bit and float images scaled to 8 bits ("L"): `convert("RGB")` would clip them (a 16-bit
    gradient comes out nearly white). 16-bit modes scale by 65535; 32-bit integers ("I") by 65535 when
    any value is above 255, else they are 8-bit values; floats ("F") by 1 when they lie in [0, 1],
    else they are taken as 0-255. Other modes are returned as they are."""
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    a = np.nan_to_num(np.asarray(im, dtype=np.float64))
    top = a.max() if a.size else 0.0
    if im.mode == "F":
        scale = 1.0 if top <= 1.0 else 255.0
    else:
        scale = 65535.0 if im.mode.startswith("I;16") or top > 255 else 255.0
    return Image.fromarray(np.round(np.clip(a / scale, 0, 1) * 255).astype(np.uint8), "L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any mode -> RGB: 16-bit and float scaled (`eight_bit`), transparent pixels made white rather
    than whatever colour they hide."""
    im = eight_bit(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def centre_square(im: Image.Image, size: int = CACHE_SIZE) -> Image.Image:
    """The largest centred square, resized to size x size (bilinear)."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = im.crop((left, top, left + side, top + side))
    return square if side == size else square.resize((size, size), Image.BILINEAR)


def image_array(im: Image.Image, size: int = CACHE_SIZE) -> np.ndarray:
    """The one way any image becomes what the network sees, in `prepare` and `predict` alike: upright
    (EXIF orientation), RGB (`to_rgb`), its centred square resized to size x size -> uint8 (3, size,
    size). Tiny ImageNet's 64 x 64 images pass through unchanged but for the mode."""
    square = centre_square(to_rgb(ImageOps.exif_transpose(im)), size)
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1).copy()


def decode_image(blob: bytes, where: str, size: int = CACHE_SIZE) -> np.ndarray:
    """Image bytes -> uint8 array (3, size, size), by `image_array`."""
    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            return image_array(im, size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e)).strip()  # PIL names its buffer
        raise UserError(f"{where}: not a readable image ({reason or e.__class__.__name__})") from None


# ----------------------------------------------------------------------------- prepare

def prepare(out: Path | str = DEFAULT_DATA_DIR, source: Path | str | None = None, classes: int = 10,
            wnids: list[str] | None = None, seed: int = 0, progress: bool = True, split: str = "number") -> Path:
    """Write the prepared dataset folder; a no-op when it already holds the same inputs.
    split: "number" (the study's, by file number; `seed` unused) or "hash" (seeded)."""
    out = Path(out)
    if split not in SPLIT_KINDS:
        raise UserError(f"--split {split}: expected one of {', '.join(SPLIT_KINDS)}")
    src = Source(source)
    chosen = choose_wnids(read_wnids(src), classes, wnids, where=str(src.path))
    identity = {"format": FORMAT_VERSION, "source_sha256": src.sha256, "wnids": chosen, "split": split,
                "seed": seed if split == "hash" else None,
                "split_sizes": SPLIT_SIZES if split == "hash" else None}
    if out.exists() and any(out.iterdir()):  # an empty folder is as good as none
        existing = read_meta(out) if (out / "dataset.json").exists() else None
        if existing is not None and all(existing.get(k) == v for k, v in identity.items()):
            return out
        was = f" (split {split_description(existing)})" if existing is not None else ""
        raise UserError(f"{out}: already exists with different contents{was}: other source, classes or split; "
                        f"choose another --out or remove it")
    with folder_lock(out, "data folder"):
        return _build(out, src, chosen, identity, split, seed, progress)


def _build(out: Path, src: Source, chosen: list[str], identity: dict, split: str, seed: int, progress: bool) -> Path:
    """`prepare`'s work, once it holds the folder's lock."""
    if (out / "dataset.json").exists() and all(read_meta(out).get(k) == v for k, v in identity.items()):
        return out  # another process prepared it between prepare's first look and this lock
    # in path order, the order a rebuilt cache has: the same data whether or not the cache was rebuilt
    items = sorted(plan_split(src, chosen, split, seed), key=lambda i: PurePosixPath(i.target))
    names = class_names(src, chosen)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # a build killed half-way (no other runs: the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        images = _write_items(src, items, tmp, progress)
        counts = {s: len(images[s]) for s in SPLITS}
        meta = {**identity, "source": str(src.path), "names": names, "counts": counts}
        write_json(tmp / "dataset.json", meta)
        labels = {w: k for k, w in enumerate(chosen)}
        _save_cache(tmp, {s: (images[s], [labels[i.wnid] for i in items if i.split == s],
                              [i.target for i in items if i.split == s]) for s in SPLITS})
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def decoded_arrays(counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Each split's uint8 (N, 3, 64, 64) array, allocated once and filled in place as images decode
    (no per-image copies beside a stacked one: 1.4 GB at 200 classes, not three times that)."""
    return {s: np.empty((counts.get(s, 0), 3, CACHE_SIZE, CACHE_SIZE), np.uint8) for s in SPLITS}


def _write_items(src: Source, items: list[Item], tmp: Path, progress: bool) -> dict[str, np.ndarray]:
    """Copy every item into the folder being built; its decoded images, per split in item order."""
    images = decoded_arrays(collections.Counter(i.split for i in items))
    filled = dict.fromkeys(SPLITS, 0)
    for item in progress_bar(items, desc="prepare", unit="img", enabled=progress):
        blob = src.read(item.source)
        images[item.split][filled[item.split]] = decode_image(blob, src.describe(item.source))
        filled[item.split] += 1
        path = tmp / item.target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    return images


# ----------------------------------------------------------------------------- cache

@dataclass
class Split:
    images: torch.Tensor  # uint8 N x 3 x 64 x 64
    labels: torch.Tensor  # int64 N
    files: list[str]

    def __len__(self):
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device), self.files)


@dataclass
class Dataset:
    root: Path
    wnids: list[str]
    names: list[str]
    splits: dict[str, Split]
    meta: dict

    @property
    def num_classes(self) -> int:
        return len(self.wnids)

    @functools.cached_property
    def identity(self) -> dict:
        """What a run and its checkpoints record of the data: `dataset_identity` and which images each
        split holds (`split_membership`, computed once); resume and evaluation compare it
        (`identity_difference`)."""
        return {**dataset_identity(self.meta), "members": split_membership(self.splits)}

    def to(self, device) -> "Dataset":
        """The same dataset with every split's tensors on `device` (no copy where they already are)."""
        return Dataset(self.root, self.wnids, self.names, {k: v.to(device) for k, v in self.splits.items()}, self.meta)


def read_meta(root: Path) -> dict:
    path = Path(root) / "dataset.json"
    try:
        meta = json.loads(path.read_text())
        meta["wnids"], meta["names"]  # noqa: B018 - the keys every reader needs
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a prepared dataset description ({e.__class__.__name__}: {e})") from None
    return meta


def folder_fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        for path in sorted((root / split).rglob("*")) if (root / split).exists() else []:
            if path.is_file():
                st = path.stat()
                h.update(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _save_cache(root: Path, splits: dict) -> None:
    payload = {"fingerprint": folder_fingerprint(root), "splits": {
        s: {"images": torch.from_numpy(np.ascontiguousarray(imgs)), "labels": torch.tensor(labels, dtype=torch.int64),
            "files": files} for s, (imgs, labels, files) in splits.items()}}
    atomic_torch_save(payload, root / "decoded.pt")


def _rebuild_cache(root: Path, wnids: list[str], progress: bool) -> None:
    labels = {w: k for k, w in enumerate(wnids)}
    files = {s: sorted(p for p in (root / s).rglob("*") if p.is_file()) if (root / s).exists() else [] for s in SPLITS}
    images = decoded_arrays({s: len(f) for s, f in files.items()})
    splits = {}
    for split in SPLITS:
        for k, path in enumerate(progress_bar(files[split], desc=f"decode {split}", unit="img", enabled=progress)):
            if path.parent.name not in labels:
                raise UserError(f"{path}: class folder {path.parent.name} is not listed in {root / 'dataset.json'}")
            images[split][k] = decode_image(path.read_bytes(), str(path))
        splits[split] = (images[split], [labels[p.parent.name] for p in files[split]],
                         [p.relative_to(root).as_posix() for p in files[split]])
    _save_cache(root, splits)


def load_dataset(root: Path | str = DEFAULT_DATA_DIR, progress: bool = True) -> Dataset:
    """The prepared dataset with every split decoded; the cache is rebuilt when the folder changed."""
    root = Path(root)
    meta = read_meta(root)
    cache_path = root / "decoded.pt"
    cache = _load_cache(cache_path)
    if cache is None or cache.get("fingerprint") != folder_fingerprint(root):
        cache = None  # the stale cache is not held beside the new one
        _rebuild_cache(root, meta["wnids"], progress)
        cache = _load_cache(cache_path)
    splits = {s: Split(v["images"], v["labels"], list(v["files"])) for s, v in cache["splits"].items()}
    return Dataset(root, list(meta["wnids"]), list(meta["names"]), splits, meta)


def _load_cache(path: Path):
    """The decoded cache, memory-mapped: its pages are read as they are used and shared by every
    process on the machine that loads the same file (trials of a grid on one node hold one copy)."""
    try:
        return torch.load(path, weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile):
        return None  # missing or damaged: rebuilt from the folder


def ensure_dataset(root: Path | str | None = None, progress: bool = True, log=None) -> Dataset:
    """Load a prepared dataset. Only the default folder is prepared (from the embedded archive) on first
    use; any other folder must already hold one, so that a mistyped --data never fills a new folder.
    A folder an earlier version prepared with its hashed split is used as it is, and `log` (default:
    standard error) is told so once, with the command that re-prepares it with the study's split."""
    root = Path(root) if root is not None else DEFAULT_DATA_DIR
    default = root == DEFAULT_DATA_DIR  # also when named explicitly: it is the same folder
    if not (root / "dataset.json").exists():
        if not root.exists() and not default:
            raise UserError(f"{root}: no such dataset folder; run `alexnet-tiny prepare --out {root}` to prepare it")
        if root.exists() and (not default or any(root.iterdir())):
            raise UserError(f"{root}: not a prepared dataset (no dataset.json); run `alexnet-tiny prepare --out {root}`")
        prepare(root, progress=progress)
    dataset = load_dataset(root, progress=progress)
    if "split" not in dataset.meta and root.resolve() not in _told_legacy:
        _told_legacy.add(root.resolve())
        (log or _to_stderr)(f"{root}: prepared by an earlier version with a hashed split, not the study's split "
                            f"by file number; used as it is (to re-prepare: rm -r {root} && alexnet-tiny prepare "
                            f"--out {root})")
    return dataset


_told_legacy: set[Path] = set()  # data folders whose hashed split this process has mentioned


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
