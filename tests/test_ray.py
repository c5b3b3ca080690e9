"""grid --backend ray on a local Ray instance, through the real CLI: a two-trial grid interrupted with
Ctrl-C (a real SIGINT) and resumed, then checked against the same grid on the local backend: the
same results, the same run folders, the same TensorBoard scalars. Two Ray starts in the whole file."""
from __future__ import annotations

import csv
import itertools
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet_tiny import runlog
from alexnet_tiny.results import RESULTS_CSV

from conftest import FAST, LEARNS_AT_ONCE_TOML, NARROW_ENV, run_cli

LRS = [0.01, 0.02]
NAMES = [FAST.replace(lr=lr).name() for lr in LRS]
TIMING_KEYS = {"seconds", "epoch_seconds", "images_per_second"}
TIMING_TAGS = {runlog.TAGS["epoch_seconds"], runlog.TAGS["images_per_second"]}
# One thread for every trial on both backends: the Ray trials run with torch threads = --cpus-per-trial,
# and equal thread counts make the two backends' CPU results bit-identical.
ENV = {"RAY_ADDRESS": "", "OMP_NUM_THREADS": "1"}
# The interrupted grid and its local twin: every process, Ray's workers included, trains the narrow
# network (conftest.NARROW_ENV), the same on both backends in a fraction of the time.
NARROW = {**ENV, **NARROW_ENV}


def grid_toml(path: Path) -> Path:
    """FAST (2 epochs) at two learning rates, as a TOML grid."""
    keys = ["momentum", "gamma", "step_size", "batch_size", "epochs", "image_size"]
    path.write_text(f'preset = "readme"\nlr = {LRS}\n' + "".join(f"{k} = [{getattr(FAST, k)}]\n" for k in keys))
    return path


def grid_args(toml: Path, data: Path, out: Path, *extra) -> list:
    return ["grid", "--config", toml, "--data", data, "--out", out, "--no-report", "-q", *extra]


def epochs_saved(out: Path) -> list[int]:
    return [(runlog.read_config(out / n) or {}).get("epochs_done", 0) for n in NAMES]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def without(d: dict, keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def folder_layout(run: Path) -> set[str]:
    return {"events.out.tfevents.*" if p.name.startswith("events.out.tfevents.") else p.name for p in run.iterdir()}


@pytest.fixture(scope="module")
def ray_grid(small_data, tmp_path_factory) -> dict:
    """Start the grid on Ray, Ctrl-C it once a trial has saved its first epoch, then --resume it."""
    tmp = tmp_path_factory.mktemp("ray")
    toml, out = grid_toml(tmp / "two.toml"), tmp / "ray-grid"
    args = grid_args(toml, small_data, out, "--backend", "ray", "--cpus-per-trial", "1")
    # its own session: the SIGINT goes to the whole process group, as Ctrl-C in a terminal does
    proc = subprocess.Popen([sys.executable, "-m", "alexnet_tiny", *map(str, args)], env={**os.environ, **NARROW},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 600
        while max(epochs_saved(out)) < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        saved = epochs_saved(out)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = {n: runlog.read_metrics(out / n) for n in NAMES}
    resumed = run_cli(*args, "--resume", env=NARROW)
    yield {"toml": toml, "out": out, "args": args, "saved": saved, "before": before,
           "interrupted": subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
           "resumed": resumed}
    shutil.rmtree(tmp)  # checkpoints, needed no more


@pytest.mark.slow
@pytest.mark.ray
def test_ctrl_c_stops_the_ray_grid_and_resume_finishes_it(ray_grid):
    interrupted, resumed, out = ray_grid["interrupted"], ray_grid["resumed"], ray_grid["out"]
    assert interrupted.returncode == 130, interrupted.stderr
    assert "interrupted" in interrupted.stderr and "--resume" in interrupted.stderr
    assert 1 in ray_grid["saved"]  # stopped mid-grid, after a trial saved its first epoch
    assert resumed.returncode == 0, resumed.stderr
    assert "ray: local instance" in resumed.stderr
    for n in NAMES:
        assert f"-- {n}: done" in resumed.stderr  # one line per finished trial
    assert "ray: 2 trials in" in resumed.stderr and ": 2 done" in resumed.stderr
    for n, saved in zip(NAMES, ray_grid["saved"]):
        rows = runlog.epoch_rows(runlog.read_metrics(out / n))
        assert [r["epoch"] for r in rows] == list(range(1, FAST.epochs + 1))
        # saved epochs were not trained again: their rows, wall-clock seconds included, are untouched
        assert rows[:saved] == runlog.epoch_rows(ray_grid["before"][n])[:saved]
    assert [r["status"] for r in read_csv(out / RESULTS_CSV)] == ["done", "done"]


@pytest.mark.slow
@pytest.mark.ray
def test_ray_grid_equals_the_local_grid(ray_grid, small_data, tmp_path):
    out = ray_grid["out"]
    local = tmp_path / "local-grid"
    run_cli(*grid_args(ray_grid["toml"], small_data, local), env=NARROW, check=True)

    ray_rows, local_rows = read_csv(out / RESULTS_CSV), read_csv(local / RESULTS_CSV)
    assert [r["trial"] for r in ray_rows] == NAMES
    assert [without(r, TIMING_KEYS) for r in ray_rows] == [without(r, TIMING_KEYS) for r in local_rows]
    for n in NAMES:
        assert folder_layout(out / n) == folder_layout(local / n) == {  # last.pt released at the grid's end
            runlog.CONFIG_FILE, runlog.METRICS_FILE, runlog.PREDICTIONS_FILE, runlog.BEST_CKPT, "events.out.tfevents.*"}
        assert ([without(r, TIMING_KEYS) for r in runlog.read_metrics(out / n)]
                == [without(r, TIMING_KEYS) for r in runlog.read_metrics(local / n)])
        ray_config, local_config = runlog.read_config(out / n), runlog.read_config(local / n)
        assert without(ray_config, TIMING_KEYS) == without(local_config, TIMING_KEYS)
        ray_scalars, local_scalars = runlog.read_scalars(out / n), runlog.read_scalars(local / n)
        assert set(ray_scalars) == set(local_scalars) >= set(runlog.TAGS.values())
        assert without(ray_scalars, TIMING_TAGS) == without(local_scalars, TIMING_TAGS)
    # Tune keeps its own records out of TensorBoard's way: no event files outside the run folders
    events = {p.parent.name for p in out.rglob("events.out.tfevents.*")}
    assert events == set(NAMES)
    assert (out / ".ray_results").is_dir()


@pytest.mark.slow
@pytest.mark.ray
def test_resume_of_a_finished_ray_grid_trains_nothing(ray_grid):
    out = ray_grid["out"]
    csv_before = (out / RESULTS_CSV).read_text()
    stamps = {p: p.stat().st_mtime_ns for n in NAMES for p in (out / n).iterdir()}
    again = run_cli(*ray_grid["args"], "--resume", env=NARROW, check=True)
    assert "2 already finished" in again.stderr
    assert "ray:" not in again.stderr  # Ray is not even started
    assert (out / RESULTS_CSV).read_text() == csv_before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_missing_ray_is_a_one_line_error_naming_the_extra(tmp_path):
    """Without Ray (hidden from the import system) --backend ray stops before any work, exit 2."""
    toml, data, out = grid_toml(tmp_path / "two.toml"), tmp_path / "data", tmp_path / "grid"
    code = ("import sys; sys.modules['ray'] = None; from alexnet_tiny.cli import main; "
            f"sys.exit(main({[str(a) for a in grid_args(toml, data, out, '--backend', 'ray')]!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("alexnet-tiny grid: error: --backend ray needs Ray Tune")
    assert line.endswith("install it with: pip install 'alexnet-tiny[ray]'")
    assert not data.exists() and not out.exists()  # nothing prepared, nothing written


ASHA_TOML = """preset = "quick"
lr = [0.004, 1e-7, 2e-7]
momentum = [0.9]
gamma = [0.5]
step_size = [1]
batch_size = [32]
epochs = [2]
image_size = [64]
""" + LEARNS_AT_ONCE_TOML


@pytest.mark.slow
@pytest.mark.ray
def test_asha_stops_the_same_trials_on_both_backends(small_data, tmp_path):
    """The same grid with --scheduler asha, one thread a trial, one trial at a time on Ray: Ray's
    scheduler and the local backend's rule stop the same trials at the same epochs, and the trials
    they keep train the same epochs with the same results."""
    toml = tmp_path / "asha.toml"
    toml.write_text(ASHA_TOML)
    outs = {backend: tmp_path / backend for backend in ("ray", "local")}
    for backend, out in outs.items():
        one_at_a_time = ["--backend", "ray", "--cpus-per-trial", "1", "--max-concurrent", "1"] if backend == "ray" else []
        run_cli(*grid_args(toml, small_data, out, "--scheduler", "asha", *one_at_a_time),
                env=ENV, check=True, timeout=1500)  # Ray starts an actor per trial: minutes on a busy 2-core CPU
    ray_rows, local_rows = read_csv(outs["ray"] / RESULTS_CSV), read_csv(outs["local"] / RESULTS_CSV)
    assert "stopped" in [r["status"] for r in local_rows], "this grid is built so that ASHA stops a trial"
    assert [without(r, TIMING_KEYS) for r in ray_rows] == [without(r, TIMING_KEYS) for r in local_rows]
    for row in local_rows:
        ray_metrics, local_metrics = (runlog.read_metrics(out / row["trial"]) for out in outs.values())
        assert [without(r, TIMING_KEYS) for r in ray_metrics] == [without(r, TIMING_KEYS) for r in local_metrics]


PARALLEL_LRS = [0.01, 1e-7, 0.02, 2e-7]  # two that learn, two that stay at chance: ASHA stops some


def epoch_spans(run: Path) -> list[tuple[float, float]]:
    """(start, end) wall times of a run's epochs, from its TensorBoard files: the train/loss event of
    each epoch is written as it ends, and time/epoch_seconds says how long it took."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    seconds = {e.step: e.value for e in acc.Scalars(runlog.TAGS["epoch_seconds"])}
    return [(e.wall_time - seconds[e.step], e.wall_time) for e in acc.Scalars(runlog.TAGS["train_loss"])]


@pytest.mark.slow
@pytest.mark.ray
def test_parallel_asha_grid_overlaps_records_its_decisions_and_resumes_after_kill(small_data, tmp_path):
    """ASHA on Ray, two trials at a time (4 trials, rungs at epochs 1 and 2): killed (SIGKILL to the
    whole process group, the local Ray instance included) once a trial has finished, then --resume.
    Trials ran side by side; every decision is in asha.jsonl once, in the order taken, and the run
    folders agree with it; nothing finished or saved before the kill is trained again."""
    toml = tmp_path / "four.toml"
    toml.write_text(f'preset = "readme"\nlr = {PARALLEL_LRS}\nmomentum = 0.9\ngamma = 0.5\nstep_size = 1\n'
                    f'batch_size = 32\nepochs = 3\nimage_size = 64\n')
    names = [FAST.replace(lr=lr, epochs=3).name() for lr in PARALLEL_LRS]
    out = tmp_path / "grid"
    args = grid_args(toml, small_data, out, "--backend", "ray", "--cpus-per-trial", "1", "--max-concurrent", "2",
                     "--scheduler", "asha", "--grace-period", "1", "--reduction-factor", "2")
    proc = subprocess.Popen([sys.executable, "-m", "alexnet_tiny", *map(str, args)], env={**os.environ, **NARROW},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 900
        while proc.poll() is None and time.time() < deadline and not any(
                (runlog.read_config(out / n) or {}).get("status") in runlog.FINISHED for n in names):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(2)  # Ray's own processes notice their driver is gone
    before = {n: (runlog.read_config(out / n), runlog.read_metrics(out / n)) for n in names}
    decisions_before = runlog.read_jsonl(out / runlog.DECISIONS_FILE)
    finished_before = [n for n in names if (before[n][0] or {}).get("status") in runlog.FINISHED]
    assert finished_before, "killed after a trial finished"

    resumed = run_cli(*args, "--resume", "--time-budget", "2h", env=NARROW, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "time budget" not in resumed.stderr  # it finished long before its budget
    decisions = runlog.read_jsonl(out / runlog.DECISIONS_FILE)
    assert decisions[:len(decisions_before)] == decisions_before  # appended to, never rewritten
    judged = [(d["trial"], d["epoch"]) for d in decisions]
    assert len(judged) == len(set(judged)), "a trial judged twice at a rung"
    rows = {r["trial"]: r for r in read_csv(out / RESULTS_CSV)}
    for n in names:
        rec = runlog.read_config(out / n)
        assert rec["status"] in ("done", "stopped"), (n, rec["status"])
        mine = {d["epoch"]: d for d in decisions if d["trial"] == n}
        # a rung the trial reached has one decision; it stopped exactly where one said stop
        assert set(mine) == {r for r in (1, 2) if r <= rec["epochs_done"]}, (n, mine, rec["epochs_done"])
        stops = [e for e, d in mine.items() if d["decision"] == "stop"]
        assert stops == ([rec["epochs_done"]] if rec["status"] == "stopped" else []), (n, mine)
        if stops:
            assert rec["reason"] == mine[stops[0]]["reason"] and rows[n]["status"] == "stopped"
        epochs = [r["epoch"] for r in runlog.epoch_rows(runlog.read_metrics(out / n))]
        assert epochs == list(range(1, rec["epochs_done"] + 1))  # no epoch lost or trained twice
        saved = (before[n][0] or {}).get("epochs_done", 0)
        assert runlog.epoch_rows(runlog.read_metrics(out / n))[:saved] == runlog.epoch_rows(before[n][1])[:saved]
    for n in finished_before:  # not run again: its record untouched, no Tune trial of it after the kill
        assert runlog.read_config(out / n) == before[n][0]
    resumed_trials = {p.name for p in max((out / ".ray_results").iterdir()).iterdir() if p.is_dir()}
    assert not resumed_trials & set(finished_before), "a finished trial was started again"
    spans = {n: epoch_spans(out / n) for n in names}
    overlapping = [(a, b) for a, b in itertools.combinations(names, 2)
                   if any(s1 < e2 and s2 < e1 for s1, e1 in spans[a] for s2, e2 in spans[b])]
    assert overlapping, f"no two trials trained at the same time: {spans}"


RAY_MD_COMMAND = "alexnet-tiny grid --config two.toml --data tiny3 --out two --backend ray --cpus-per-trial 1 --no-report"


@pytest.mark.slow
@pytest.mark.ray
def test_the_output_docs_ray_md_shows_is_the_tools_output_today(small_data, tmp_path):
    """docs/ray.md's sample of the driver's output, line by line, has the format of what the same command
    prints today (on small data, so its numbers, names and paths differ and are taken out)."""
    from test_docs import ROOT, output_block, output_shape
    toml = grid_toml(tmp_path / "two.toml")
    args = RAY_MD_COMMAND.split()[1:]
    args[args.index("two.toml")], args[args.index("tiny3")], args[args.index("two")] = toml, small_data, tmp_path / "two"
    proc = run_cli(*args, env=NARROW, check=True, timeout=1500)
    def shape(line: str) -> str:  # whether a finished trial's line says the time left depends on the race
        return output_shape(line).replace(", about DURATION left", "")
    produced = {shape(line) for line in (proc.stderr + proc.stdout).splitlines()}
    sample = [line for line in output_block(ROOT / "docs" / "ray.md", RAY_MD_COMMAND) if not line.startswith("$ ")]
    assert len(sample) >= 5
    assert [line for line in sample if shape(line) not in produced] == []


@pytest.mark.slow
@pytest.mark.ray
def test_a_random_search_draws_and_trains_the_same_trials_on_both_backends(small_data, tmp_path):
    toml = tmp_path / "random.toml"
    toml.write_text('preset = "quick"\nsamples = 2\nlr = {loguniform = [1e-3, 1e-2]}\n'
                    'dropout = {uniform = [0.0, 0.5]}\nepochs = 1\nbatch_size = 32\nimage_size = 64\n')
    ray, local = tmp_path / "ray", tmp_path / "local"
    run_cli(*grid_args(toml, small_data, ray, "--backend", "ray", "--cpus-per-trial", "1"), env=NARROW, check=True,
            timeout=900)
    run_cli(*grid_args(toml, small_data, local), env=NARROW, check=True)
    ray_rows, local_rows = read_csv(ray / RESULTS_CSV), read_csv(local / RESULTS_CSV)
    assert len(ray_rows) == 2 and len({r["lr"] for r in ray_rows}) == 2
    assert [without(r, TIMING_KEYS) for r in ray_rows] == [without(r, TIMING_KEYS) for r in local_rows]
