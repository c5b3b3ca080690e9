"""bench/speed.py runs end to end (real subprocess, real data, both pipelines) and ends with the
speedup line; what it measures is not checked here (timing never lives in the tests)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SPEED = Path(__file__).resolve().parents[1] / "bench" / "speed.py"


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
