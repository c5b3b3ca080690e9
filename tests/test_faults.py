"""kill -9 at seeded random moments of real `prepare` and `train` processes, then the same command
again (`--resume` for train): it completes, and the result equals an uninterrupted run, as the design
says (every epoch's randomness comes from (seed, epoch); files are renamed into place). The grid's
SIGKILL test is in test_grid.py. A longer hunt: ALEXNET_TINY_FAULT_KILLS=20."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet_tiny import runlog
from alexnet_tiny.data import load_dataset, lock_path
from conftest import NARROW_ENV, run_cli, without_timing

KILLS = int(os.environ.get("ALEXNET_TINY_FAULT_KILLS", "2"))
SEED = 20261203
TRAIN_FLAGS = ["--preset", "quick", "--epochs", "2", "--image-size", "64", "--device", "cpu", "-q"]


def killed_after(seconds: float, *args, env=None) -> int:
    """Start `python -m alexnet_tiny ARGS`, SIGKILL it after `seconds` (if it is still running);
    returns its exit status."""
    proc = subprocess.Popen([sys.executable, "-m", "alexnet_tiny", *map(str, args)], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


def no_temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_prepare_killed_at_random_moments_completes_the_same(tiny_source, tmp_path):
    reference = tmp_path / "reference"
    run_cli("prepare", "--source", tiny_source, "--classes", 3, "--out", reference, "-q", check=True)
    expected = load_dataset(reference, progress=False)
    rng = random.Random(SEED)
    for k in range(KILLS):
        out = tmp_path / f"killed{k}"
        killed_after(rng.uniform(1.0, 6.0), "prepare", "--source", tiny_source, "--classes", 3, "--out", out, "-q")
        run_cli("prepare", "--source", tiny_source, "--classes", 3, "--out", out, "-q", check=True)  # stale lock too
        got = load_dataset(out, progress=False)
        for split, s in expected.splits.items():
            assert got.splits[split].files == s.files and (got.splits[split].images == s.images).all()
        assert not lock_path(out).exists()
    assert no_temporaries(tmp_path) == []


@pytest.mark.slow
def test_train_killed_at_random_moments_resumes_to_the_same_run(small_data, tmp_path):
    reference = tmp_path / "reference"
    started = time.perf_counter()
    run_cli("train", *TRAIN_FLAGS, "--data", small_data, "--out", reference, env=NARROW_ENV, check=True)
    duration = time.perf_counter() - started
    rng = random.Random(SEED + 1)
    for k in range(KILLS):
        out = tmp_path / f"killed{k}"
        killed_after(rng.uniform(0.3, 0.9) * duration, "train", *TRAIN_FLAGS, "--data", small_data, "--out", out,
                     env=NARROW_ENV)
        proc = run_cli("train", *TRAIN_FLAGS, "--data", small_data, "--out", out, "--resume", env=NARROW_ENV)
        assert proc.returncode == 0, proc.stderr
        assert without_timing(runlog.read_metrics(out)) == without_timing(runlog.read_metrics(reference))
        assert runlog.read_config(out)["status"] == "done" and no_temporaries(out) == []
        assert not lock_path(out).exists()
