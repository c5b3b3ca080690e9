"""Files that several processes and a kill -9 can meet: one process at a time on a folder (a lock file
beside it) and files written atomically (a temporary file beside the target, renamed into place), with
what a killed writer leaves behind removed at the next run."""
from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import UserError

# ----------------------------------------------------------------------------- one process at a time

_held: dict[Path, int] = {}  # lock file -> depth, for the locks this process holds


def lock_path(folder: Path | str) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def folder_lock(folder: Path | str, what: str = "folder"):
    """One process at a time on `folder` (a data, run or grid folder, which need not exist yet): the
    lock file `.<name>.lock` beside it, created exclusively, holds the pid. Another process's live lock
    is a one-line error naming it; a lock whose process is gone is stale and taken over. The same
    process may take a lock it holds again (a grid's trial run by `train`)."""
    path = lock_path(folder).absolute()
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None:
                raise UserError(f"{folder}: this {what} is in use by process {holder} (lock {path}); wait for it "
                                f"to end, or remove the lock if that process is not alexnet-tiny") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        path.unlink(missing_ok=True)


def _lock_holder(path: Path) -> int | None:
    """The pid of a live process holding the lock file, or None when it is stale."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None  # unreadable or half-written: a process killed while taking it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, another user's
    return pid


# ----------------------------------------------------------------------------- atomic files

@contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.
    (No fsync: this guards against killed processes, not against power loss.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.filename not in (None, str(tmp), tmp):
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None  # the file the user knows
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path | str, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


TORCH_WRITE_FAILED = ("inline_container", "file write failed", "iostream error")


def atomic_torch_save(obj, path: Path | str) -> None:
    """torch.save, renamed into place. torch's zip writer reports a failed write (a full disk) as a
    RuntimeError without the system's error (which of its messages depends on where the write
    failed: in a record, or closing the archive); it is raised as an OSError naming the file."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            if not any(sign in str(e) for sign in TORCH_WRITE_FAILED):
                raise
            raise OSError(errno.EIO, "could not be written (is the disk full?)", str(path)) from None


@contextmanager
def staged_folder(folder: Path | str, replaces=()):
    """Yield an empty temporary folder beside `folder` to write a whole set of files into; on success
    they are renamed into `folder` one by one (each rename atomic, the last file last), and the names
    in `replaces` that the stage did not produce are removed from it. A failure before then leaves
    `folder` as it was. Stages that killed writers left are removed first: hold the folder's lock."""
    folder = Path(folder)
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    stage = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    stage.mkdir(parents=True)
    try:
        try:
            yield stage
        except OSError as e:
            if e.filename is None or Path(e.filename).parent != stage:
                raise
            raise OSError(e.errno, e.strerror, str(folder / Path(e.filename).name)) from None
        folder.mkdir(parents=True, exist_ok=True)
        for name in set(replaces) - {p.name for p in stage.iterdir()}:
            (folder / name).unlink(missing_ok=True)
        for path in sorted(stage.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name)):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_stale_temporaries(folder: Path | str) -> None:
    """Delete the temporary files that writers killed inside `atomic_path` left in `folder`. Call it
    while holding the folder's lock: no other process is writing there then."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(".*.tmp-*"):
            if stale.is_file():
                stale.unlink(missing_ok=True)


def folder_bytes(folder: Path | str) -> int:
    """The bytes of every file under `folder` (what a run or grid left on disk)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink())
