"""kill -9 at seeded random moments of real `prepare`, `train`, `grid` (the stacked engine) and `report`
processes, then the same command again (`--resume` for train and grid): it completes, and the result
equals an uninterrupted run, as the design says (every epoch's randomness comes from (seed, epoch);
files are renamed into place). A disk that refuses a checkpoint half-way (the file size limit of the
process, a real failed write) leaves the previous checkpoint usable. The single-trial grid's SIGKILL
test is in test_grid.py. A longer hunt: ALEXNET_TINY_FAULT_KILLS=20."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from alexnet_tiny import runlog
from alexnet_tiny.checkpoint import load_checkpoint
from alexnet_tiny.config import PRESETS
from alexnet_tiny.data import load_dataset
from alexnet_tiny.files import lock_path
from alexnet_tiny.train import train
from conftest import NARROW_ENV, quiet, run_cli, without_timing

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
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp-" in p.name]


def timed_cli(*args, env=None) -> float:
    """Run the CLI to its end (checked); its duration in seconds."""
    started = time.perf_counter()
    run_cli(*args, env=env, check=True)
    return time.perf_counter() - started


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


STACKED_GRID = 'preset = "quick"\nlr = [0.004, 0.002]\nmomentum = [0.9]\nepochs = 2\nbatch_size = 32\nimage_size = 64\n'


def grid_state(out: Path) -> dict:
    return {p.name: (runlog.read_config(p)["status"], without_timing(runlog.read_metrics(p)))
            for p in sorted(out.iterdir()) if p.is_dir()}


@pytest.mark.slow
def test_stacked_grid_killed_at_random_moments_resumes_to_the_same_trials(small_data, tmp_path):
    toml = tmp_path / "g.toml"
    toml.write_text(STACKED_GRID)
    flags = ["--config", toml, "--data", small_data, "--device", "cpu", "--engine", "stacked", "--no-report", "-q"]
    reference = tmp_path / "reference"
    duration = timed_cli("grid", *flags, "--out", reference, env=NARROW_ENV)
    rng = random.Random(SEED + 2)
    for k in range(KILLS):
        out = tmp_path / f"killed{k}"
        killed_after(rng.uniform(0.3, 0.9) * duration, "grid", *flags, "--out", out, env=NARROW_ENV)
        run_cli("grid", *flags, "--out", out, "--resume", env=NARROW_ENV, check=True)
        assert grid_state(out) == grid_state(reference)
        assert no_temporaries(out) == [] and not lock_path(out).exists()


@pytest.fixture(scope="module")
def reported(small_data, tmp_path_factory) -> SimpleNamespace:
    """A one-epoch stacked grid and its report, written once for the report tests below."""
    tmp = tmp_path_factory.mktemp("reported")
    runs, toml, reference = tmp / "runs", tmp / "g.toml", tmp / "reference"
    toml.write_text(STACKED_GRID.replace("epochs = 2", "epochs = 1"))
    run_cli("grid", "--config", toml, "--data", small_data, "--device", "cpu", "--out", runs, "--no-report", "-q",
            env=NARROW_ENV, check=True)
    duration = timed_cli("report", runs, "--out", reference, "--device", "cpu", "-q", env=NARROW_ENV)
    return SimpleNamespace(runs=runs, reference=reference, duration=duration)


@pytest.mark.slow
def test_report_killed_at_random_moments_writes_the_same_report(reported, tmp_path):
    runs, reference, duration = reported.runs, reported.reference, reported.duration

    def written(out: Path) -> dict:
        report = json.loads((out / "report.json").read_text())
        return {k: v for k, v in report.items() if k != "generated"}

    rng = random.Random(SEED + 3)
    for k in range(KILLS):
        out = tmp_path / f"killed{k}"
        killed_after(rng.uniform(0.2, 0.9) * duration, "report", runs, "--out", out, "--device", "cpu", "-q",
                     env=NARROW_ENV)
        run_cli("report", runs, "--out", out, "--device", "cpu", "-q", env=NARROW_ENV, check=True)
        assert written(out) == written(reference)
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
        assert no_temporaries(out) == []


# The CLI in a process whose files may not grow past LIMIT bytes: a write past it fails (EFBIG) as a full
# disk's does (ENOSPC), part-way through the file.
LIMITED = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           "limit = int(sys.argv.pop(1)); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
           "from alexnet_tiny.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.usefixtures("narrow_alexnet")
def test_a_disk_that_fails_mid_checkpoint_leaves_the_previous_one_usable(small_data, tmp_path):
    config = PRESETS["quick"].replace(epochs=2, image_size=64)
    dataset = load_dataset(small_data, progress=False)
    reference, out = tmp_path / "reference", tmp_path / "run"
    train(config, dataset, reference, device="cpu", progress=False, log=quiet)
    train(config, dataset, out, device="cpu", progress=False, log=quiet, until=1)
    before = {name: (out / name).read_bytes() for name in (runlog.LAST_CKPT, runlog.BEST_CKPT)}
    limit = len(before[runlog.LAST_CKPT]) // 2  # logs fit; a checkpoint stops half-way
    proc = subprocess.run([sys.executable, "-c", LIMITED, str(limit), "train", *TRAIN_FLAGS, "--data", str(small_data),
                           "--out", str(out), "--resume"], env={**os.environ, **NARROW_ENV}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line in {f"alexnet-tiny train: error: {out / name}: could not be written (is the disk full?)"
                         for name in before}, last_line
    assert {name: (out / name).read_bytes() for name in before} == before  # untouched, and still load
    assert load_checkpoint(out / runlog.LAST_CKPT)["epoch"] == 1 and runlog.epochs_done(out) == 1
    assert no_temporaries(out) == [] and not lock_path(out).exists()
    run_cli("train", *TRAIN_FLAGS, "--data", small_data, "--out", out, "--resume", env=NARROW_ENV, check=True)
    assert without_timing(runlog.read_metrics(out)) == without_timing(runlog.read_metrics(reference))


def test_a_report_that_fails_leaves_the_previous_report_whole(reported, tmp_path):
    runs, out = reported.runs, Path(shutil.copytree(reported.reference, tmp_path / "report"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    limit = len(before["results.csv"]) * 4  # the tables fit; the first figure stops part-way
    assert limit < min(len(before[f]) for f in ("results_table.png", "report.json", "index.html"))
    proc = subprocess.run([sys.executable, "-c", LIMITED, str(limit), "report", str(runs), "--out", str(out),
                           "--device", "cpu", "-q"], env={**os.environ, **NARROW_ENV}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"alexnet-tiny report: error: {out / 'results_table.png'}: File too large"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing removed, nothing half-written
    run_cli("report", runs, "--out", out, "--device", "cpu", "-q", env=NARROW_ENV, check=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(before)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
