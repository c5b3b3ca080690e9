"""bench/speed.py runs end to end (real subprocess, real data, both pipelines) and ends with the
speedup line; bench/scale.py builds a 200-class archive in the official layout and runs every command
on it (at a reduced size); what they measure is not checked here (timing never lives in the tests)."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import NARROW_ENV

BENCH = Path(__file__).resolve().parents[1] / "bench"
SPEED, SCALE = BENCH / "speed.py", BENCH / "scale.py"


def run_speed(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SPEED), *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_side_by_side_table_and_speedup_line(small_data):
    proc = run_speed("--device", "cpu", "--data", small_data, "--image-size", 64, "--batch-size", 16,
                     "--trials", 2, "--epochs", 2, "--steps", 2, "--warmup", 1, "--eval-images", 8)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup: \d+\.\d\dx", lines[-1]), lines[-1]
    rows = {line.split()[0]: line.split() for line in lines if line.split()[:1] in (["baseline"], ["engine"])}
    assert set(rows) == {"baseline", "engine"}
    pairs = [line for line in lines if line.startswith("  trial")]
    assert len(pairs) == 2 * 2  # trials x epochs, one adjacent pair each
    assert all("baseline" in line and "engine" in line for line in pairs)


@pytest.mark.slow
def test_stacked_engine_in_the_bench(small_data):
    proc = run_speed("--device", "cpu", "--data", small_data, "--image-size", 64, "--batch-size", 16,
                     "--trials", 1, "--epochs", 1, "--steps", 2, "--warmup", 1, "--eval-images", 8, "--stack", 3)
    assert proc.returncode == 0, proc.stderr
    assert "3 trials stacked, grouped convs" in proc.stdout.splitlines()[0]
    assert re.fullmatch(r"speedup: \d+\.\d\dx", proc.stdout.strip().splitlines()[-1])


def test_too_many_steps_are_refused(small_data):
    proc = run_speed("--data", small_data, "--steps", 1000)
    assert proc.returncode != 0
    assert "more than the 192 training images" in proc.stderr


def test_bad_flags_are_refused():
    proc = run_speed("--steps", 0)
    assert proc.returncode == 2 and "--steps 0" in proc.stderr


def decoded(z: zipfile.ZipFile, name: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(z.read(name))).convert("RGB")).astype(int)


def run_scale(work: Path, *args) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """bench/scale.py at the full Tiny ImageNet's class count, at a reduced size (4 images a class:
    one val, one test, two train; one official-val); its rows."""
    proc = subprocess.run([sys.executable, str(SCALE), "--classes", "200", "--train-images", "2", "--held-out", "1",
                           "--val-images", "1", "--work", str(work), "--json", str(work / "rows.json"), *args],
                          capture_output=True, text=True, timeout=1500,
                          env={**os.environ, **NARROW_ENV, "RAY_ADDRESS": "", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((work / "rows.json").read_text())
    assert all(r["rc"] == 0 and r["seconds"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    return proc, rows


@pytest.mark.slow
def test_every_command_at_200_classes(tmp_path):
    """An archive in the official layout whose 200 classes differ, then prepare, train, a local grid,
    evaluate, report and predict, each a real process (the Ray grid: the next test)."""
    work = tmp_path / "scale"
    commands = ["prepare", "train", "grid-local", "evaluate", "report", "predict"]
    proc, rows = run_scale(work, "--commands", ",".join(commands))
    assert re.fullmatch(r"scale: 6 commands, 0 failed, highest peak \d+ MB", proc.stdout.strip().splitlines()[-1])
    assert [r["command"] for r in rows] == commands

    with zipfile.ZipFile(work / "tiny-imagenet-200-4.zip") as z:
        wnids = z.read("tiny-imagenet-200/wnids.txt").decode().split()
        assert len(wnids) == len(set(wnids)) == 200
        first, eleventh = wnids[0], wnids[10]  # the same base class, the next transform
        assert {n.rsplit("/", 1)[1] for n in z.namelist() if f"train/{first}/images/" in n} == {
            f"{first}_{n}.JPEG" for n in (0, 50, 100, 101)}
        a, b = (decoded(z, f"tiny-imagenet-200/train/{w}/images/{w}_100.JPEG") for w in (first, eleventh))
        assert np.abs(a - b).mean() > 10  # a class of its own, not a copy
        assert len(z.read("tiny-imagenet-200/val/val_annotations.txt").decode().split("\n")) == 201

    meta = json.loads((work / "data-200" / "dataset.json").read_text())
    assert len(meta["wnids"]) == 200
    report = json.loads((work / "runs-200" / "report" / "report.json").read_text())
    assert report["evaluation"]["classes"] == 200 and len(report["evaluation"]["test"]["per_class"]) == 200
    public = report["public_tiny_imagenet"]
    assert public["ours"]["test"] == report["evaluation"]["test"]["accuracy"] and len(public["rows"]) >= 3
    assert 'id="public-tiny-imagenet"' in (work / "runs-200" / "report" / "index.html").read_text()
    found = report["findings"]  # what the grid taught, at 200 classes
    assert found["images"]["test"] == report["evaluation"]["test"]["images"] >= 200 and found["conclusions"]
    assert '<ul id="conclusions">' in (work / "runs-200" / "report" / "index.html").read_text()
    for png in (work / "runs-200" / "report").glob("*.png"):
        assert max(Image.open(png).size) <= 4200, png.name  # figures a person can read at 200 classes
    assert (work / "runs-200" / "cam.png").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_the_ray_grid_at_200_classes(tmp_path):
    work = tmp_path / "scale"
    proc, rows = run_scale(work, "--commands", "prepare,grid-ray")
    assert re.fullmatch(r"scale: 2 commands, 0 failed, highest peak \d+ MB", proc.stdout.strip().splitlines()[-1])
    assert [r["command"] for r in rows] == ["prepare", "grid-ray"] and rows[1]["peak_tree_pss_mb"] > 0
    assert len((work / "runs-200" / "grid-ray" / "results.csv").read_text().splitlines()) == 1 + 2


def test_the_ray_grid_is_skipped_without_ray(tmp_path):
    """Without Ray (hidden from the import system), grid-ray is skipped and said so, not failed."""
    code = (f"import runpy, sys; sys.modules['ray'] = None; sys.argv = [{str(SCALE)!r}, '--classes', '2', "
            f"'--commands', 'grid-ray', '--train-images', '2', '--held-out', '1', "
            f"'--val-images', '1', '--work', {str(tmp_path)!r}]; runpy.run_path({str(SCALE)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "scale: grid-ray skipped: Ray is not installed (pip install 'alexnet-tiny[ray]')" in lines
    assert lines[-1] == "scale: 0 commands, 0 failed, 1 skipped, highest peak 0 MB"


@pytest.mark.slow
def test_speedrun_runs_the_main_job_once_per_seed(small_data, tmp_path):
    """bench/speedrun.py: one grid per seed, each from an empty folder, as a real process; a line per
    seed with the report's figures, their mean +- sd, and the seeds reach the trials (grid --seed)."""
    grid = tmp_path / "two.toml"
    grid.write_text('preset = "quick"\nepochs = 1\nlr = [0.004, 0.001]\n')
    work, summary = tmp_path / "work", tmp_path / "speedrun.json"
    done = subprocess.run([sys.executable, str(BENCH / "speedrun.py"), "--seeds", "2", "--work", str(work),
                           "--json", str(summary), "--", "--config", str(grid), "--data", str(small_data)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, **NARROW_ENV})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[1:3]] == ["seed 0", "seed 1"]
    assert lines[-2].startswith("mean +- sd: seconds ") and lines[-1].startswith("speedrun: 2 seed(s): ")
    runs = json.loads(summary.read_text())["runs"]
    for seed, run in enumerate(runs):
        report = json.loads(next(work.glob(f"seed{seed}/runs/*/report/report.json")).read_text())
        assert run["test"] == report["evaluation"]["test"]["accuracy"] and run["trial"] == report["best"]["trial"]
        seeds = {json.loads(p.read_text())["config"]["seed"] for p in work.glob(f"seed{seed}/runs/*/*/config.json")}
        assert seeds == {seed}
    assert runs[1]["trial"].endswith("_seed1")


def test_fold_bench_times_both_paths():
    """bench/fold.py times the folded FC1 and the pooled path, alternating, and says the ratio."""
    done = subprocess.run([sys.executable, str(BENCH / "fold.py"), "--sizes", "64", "--steps", "1", "-b", "4"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[1:3]] == ["64 px train", "64 px eval"]
    assert re.fullmatch(r"fold: training at 64 px \d+\.\d\dx faster with FC1 on the repeated cells", lines[-1])
