"""grid.py: presets and TOML grids expanded to trials, results files, diverged trials, and resume
after real SIGINT / SIGKILL of a real `python -m alexnet_tiny grid` process (local backend)."""
from __future__ import annotations

import csv
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from alexnet_tiny import cli, runlog
from alexnet_tiny.config import HYPERPARAMETERS, PRESETS, TrainConfig
from alexnet_tiny.errors import UserError
from alexnet_tiny.data import load_dataset
from alexnet_tiny.estimate import estimate_seconds, measure_throughput, rate_key
from alexnet_tiny.grid import expand, grid_scheduler, grid_trials, load_grid_toml, run_grid
from alexnet_tiny.progress import format_duration
from alexnet_tiny.results import RESULT_COLUMNS, best_row, collect_results, write_results
from conftest import NARROW_ENV, run_cli

REPO = Path(__file__).resolve().parent.parent

# Two FAST-like trials (64 px, batch 32, 2 epochs): the first diverges, the grid goes on.
SMALL_GRID = """
preset = "quick"
lr = [1e6, 0.005]
momentum = [0.9]
gamma = [0.5]
step_size = [1]
batch_size = [32]
epochs = [2]
image_size = [64]
"""
SMALL_NAMES = ["quick_lr1e+06_g0.5_s1_b32_e2", "quick_g0.5_s1_b32_e2"]
LEGACY_NAMES = ["lr1e+06_m0.9_g0.5_s1_b32_e2_i64_wd0.0005_seed0_nesterov_cosine_ls0.1_rrc_cs0.35_whiten_do0",  # earlier
                "lr0.005_m0.9_g0.5_s1_b32_e2_i64_wd0.0005_seed0_nesterov_cosine_ls0.1_rrc_cs0.35_whiten_do0"]  # versions'
DIVERGING, TRAINED = SMALL_NAMES


def write_toml(tmp_path: Path, text: str, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- expansion

def test_seed_preset_is_the_original_twelve_trials():
    name, trials = grid_trials("seed")
    assert name == "seed" and len(trials) == 12
    as_run = dict(step_size=30, batch_size=12, epochs=35, image_size=150, schedule="constant", input="pad", outputs=200)
    expected = [TrainConfig(lr=lr, momentum=m, gamma=g, seed=seed, **as_run)
                for g, seed in ((0.1, 0), (0.01, 1)) for lr in (0.0001, 0.001, 0.005) for m in (0.9, 0.5)]
    assert trials == expected
    assert {t.weight_decay for t in trials} == {0.0}


def test_seed_grid_names_are_stable():
    """Folder names are what a resume finds its trials by: written out here, so that a change shows.
    A name is the nearest preset and what differs from it."""
    names = [t.name() for t in grid_trials("seed")[1]]
    assert names[:4] == ["seed_lr0.0001", "seed_lr0.0001_m0.5", "seed", "seed_m0.5"]
    assert names[-1] == "seed_lr0.005_m0.5_g0.01_seed1"
    assert len(set(names)) == 12
    assert [t.name() for t in grid_trials("quick")[1]] == ["quick", "quick_lr0.01", "quick_lr0.02"]
    assert PRESETS["readme"].replace(lr=0.005).name() == "readme_lr0.005"
    assert PRESETS["quick"].replace(nesterov=False, init="torch").name() == "quick_nesterov0_torch"


def test_legacy_names_are_those_of_earlier_versions():
    tail = "_s30_b12_e35_i150_wd0_seed{}_constant_pad_out200"
    assert [t.legacy_name() for t in grid_trials("seed")[1]][:2] == ["lr0.0001_m0.9_g0.1" + tail.format(0),
                                                                     "lr0.0001_m0.5_g0.1" + tail.format(0)]
    assert PRESETS["readme"].replace(lr=0.005).legacy_name() == "lr0.005_m0.9_g0.1_s7_b12_e35_i224_wd0_seed0"


def test_names_differ_in_every_hyperparameter():
    """Any one field changed from any preset gives a name of its own."""
    changed = {"lr": 0.0123, "momentum": 0.25, "gamma": 0.3, "step_size": 3, "batch_size": 16, "epochs": 2,
               "image_size": 96, "weight_decay": 1e-4, "seed": 7, "nesterov": None, "schedule": None,
               "warmup_epochs": 1, "label_smoothing": 0.05, "augment": None, "crop_scale": 0.5, "mixup": 0.3,
               "init": None, "dropout": 0.3, "input": None, "outputs": 100}
    assert set(changed) == set(HYPERPARAMETERS)
    flipped = {"nesterov": lambda v: not v, "schedule": lambda v: "cosine" if v != "cosine" else "step",
               "augment": lambda v: "rrc" if v == "crop" else "crop", "init": lambda v: "kaiming" if v == "torch" else "torch",
               "input": lambda v: "pad" if v == "resize" else "resize"}
    configs = {p.replace(**{k: flipped[k](getattr(p, k)) if k in flipped else v}) for p in PRESETS.values()
               for k, v in changed.items()} | set(PRESETS.values())
    assert len({c.name() for c in configs}) == len(configs)
    assert len({c.legacy_name() for c in configs}) == len(configs)


def test_repository_seed_toml_is_the_seed_preset():
    name, trials = grid_trials(config=REPO / "grids" / "seed.toml")
    assert name == "seed" and trials == grid_trials("seed")[1]


def test_repository_recipe_cpu_seeds_toml():
    name, trials = grid_trials(config=REPO / "grids" / "recipe-cpu-seeds.toml")
    assert name == "recipe-cpu-seeds" and [t.seed for t in trials] == [0, 1, 2]
    assert {t.replace(seed=0) for t in trials} == {PRESETS["recipe-cpu"]}


def test_repository_recipe_cpu_ablation_toml():
    """The preset over seeds 0-2 and each variant over at least two seeds, among them 128 px at the
    preset's minutes (16 epochs instead of 26)."""
    name, trials = grid_trials(config=REPO / "grids" / "recipe-cpu-ablation.toml")
    recipe = PRESETS["recipe-cpu"]
    assert name == "recipe-cpu-ablation" and len({t.name() for t in trials}) == len(trials)
    changes: dict[tuple, list[int]] = {}
    for t in trials:
        changed = tuple((k, v) for k, v in t.to_dict().items() if k != "seed" and v != getattr(recipe, k))
        changes.setdefault(changed, []).append(t.seed)
    assert changes.pop(()) == [0, 1, 2]
    assert changes and all(len(seeds) >= 2 and seeds == sorted(seeds) for seeds in changes.values())
    assert changes[(("epochs", 16), ("image_size", 128))] == [0, 1, 2]


def test_quick_preset_keeps_the_shape():
    name, trials = grid_trials(None)  # the default
    assert name == "quick" and trials == grid_trials("quick")[1]
    assert len({t.lr for t in trials}) == len(trials) >= 3
    # the train preset `quick` first, then other learning rates of it, with ASHA on by default
    assert trials[0] == PRESETS["quick"]
    assert all(t.replace(lr=PRESETS["quick"].lr) == PRESETS["quick"] for t in trials)
    assert grid_scheduler("quick") == {"scheduler": "asha", "grace_period": 1, "reduction_factor": 3.0}
    assert grid_scheduler("seed") is None


def test_toml_product_and_order(tmp_path):
    path = write_toml(tmp_path, 'seed = [1, 2]\nmomentum = [0.9, 0.5]\nlr = [0.1, 0.01]\nepochs = 3\n', "mine.toml")
    name, trials = grid_trials(config=path)
    assert name == "mine" and len(trials) == 8
    # the product in hyperparameter order (lr outermost, seed innermost), whatever the order in the file
    assert [(t.lr, t.momentum, t.seed) for t in trials] == [
        (lr, m, s) for lr in (0.1, 0.01) for m in (0.9, 0.5) for s in (1, 2)]
    assert all(t.epochs == 3 for t in trials)  # a single value is a one-value list
    # keys left out come from the preset (default: seed, the study as its code ran)
    assert all((t.gamma, t.step_size, t.batch_size, t.image_size, t.input) == (0.1, 30, 12, 150, "pad") for t in trials)


def test_toml_on_another_preset(tmp_path):
    _, trials = grid_trials(config=write_toml(tmp_path, 'preset = "quick"\nlr = [1, 0.5]\n'))
    assert trials == [PRESETS["quick"].replace(lr=1.0), PRESETS["quick"].replace(lr=0.5)]
    assert isinstance(trials[0].lr, float)  # an integer in TOML is still a learning rate


def test_config_overrides_preset_on_the_cli(tmp_path):
    args = cli.build_parser().parse_args(["grid", "--preset", "seed", "--config", str(tmp_path / "g.toml")])
    (tmp_path / "g.toml").write_text("lr = [0.3]\n")
    assert grid_trials(args.preset, args.config)[1] == [PRESETS["seed"].replace(lr=0.3)]


BAD_TOML = [
    ("learning_rate = [0.1]\n", "unknown key 'learning_rate'"),
    ("lr = []\n", "lr is an empty list"),
    ('epochs = ["two"]\n', "epochs = 'two': expected an integer"),
    ("epochs = [2.5]\n", "epochs = 2.5: expected an integer"),
    ('lr = ["0.1"]\n', "lr = '0.1': expected a number"),
    ("momentum = [true]\n", "momentum = True: expected a number"),
    ("lr = [[0.1, 0.2]]\n", "lr = [0.1, 0.2]: expected a number"),
    ("[lr]\nx = 1\n", "lr = {x = 1}: expected one of {uniform = [low, high]}"),
    ("samples = 3\nlr = {normal = [0, 1]}\n", "lr = {normal = [0, 1]}: expected one of {uniform"),
    ("samples = 3\nlr = {loguniform = [0, 0.1]}\n", "lr = {loguniform = [0, 0.1]}: expected loguniform = [low, high], 0 < low"),
    ("samples = 3\nlr = {uniform = [0.1, 0.01]}\n", "with low < high"),
    ("samples = 3\nepochs = {uniform = [1, 3]}\n", "an integer field draws with randint"),
    ("samples = 3\ninit = {choice = []}\n", "init = {choice = []}: expected a non-empty list of values"),
    ('samples = 3\ninit = {choice = ["torch", "lsuv"]}\n', "init = lsuv: expected one of torch, kaiming, whiten"),
    ("lr = {loguniform = [1e-4, 0.1]}\n", "lr is a distribution: add samples = N"),
    ("samples = 3\nlr = [0.1]\n", "samples = 3: only with a distribution"),
    ("samples = 0\nlr = {loguniform = [1e-4, 0.1]}\n", "samples = 0: expected an integer from 1 to 10,000"),
    ("samples = 3\nsample_seed = -1\nlr = {loguniform = [1e-4, 0.1]}\n", "sample_seed = -1: expected an integer >= 0"),
    ('samples = 3\ninit = {choice = ["torch", "whiten"]}\n', "the distributions give only 2 different trials"),
    ("samples = 10000\nseed = [0, 1]\nlr = {loguniform = [1e-4, 0.1]}\n", "20,000 trials (the product of its lists and samples)"),
    ("lr = [0.1\n", "not valid TOML"),
    ("lr = 0.1\nlr = 0.2\n", "not valid TOML"),
    ('preset = "fast"\n', "preset = 'fast': expected one of seed, readme, quick"),
    ('preset = ["quick"]\n', "preset = ['quick']: expected one of seed, readme, quick"),
    ("lr = [-0.1]\n", "lr = -0.1: expected a number > 0"),
    ("momentum = [0.9, 1.0]\n", "momentum = 1.0: expected a number in [0, 1)"),
    ("lr = [0.1, 0.1]\n", "appears twice"),
]


@pytest.mark.parametrize("text,message", BAD_TOML)
def test_bad_toml_is_refused_with_one_line(text, message, tmp_path, capsys):
    path = write_toml(tmp_path, text)
    with pytest.raises(UserError) as e:
        grid_trials(config=path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)
    assert cli.main(["grid", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alexnet-tiny grid: error: {path}: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_bad_toml_in_a_real_subprocess(tmp_path):
    path = write_toml(tmp_path, "learning_rate = [0.1]\n")
    proc = run_cli("grid", "--config", path, "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "unknown key 'learning_rate'" in proc.stderr


def test_missing_toml_and_unknown_preset(tmp_path):
    with pytest.raises(UserError, match="grid file not found"):
        load_grid_toml(tmp_path / "none.toml")
    with pytest.raises(UserError, match="--preset nope: unknown \\(expected a grid preset, seed, quick, recipe, or a train preset"):
        grid_trials("nope")
    with pytest.raises(UserError, match="unknown key 'nope'"):
        expand({"nope": [1]})


def test_format_duration():
    assert [format_duration(s) for s in (5, 89, 90, 226, 299, 600, 5399, 5400, 12 * 3600)] == [
        "5 s", "89 s", "1 min 30 s", "3 min 50 s", "5 min", "10 min", "90 min", "1.5 h", "12.0 h"]


def test_best_row_uses_validation_accuracy_only():
    def row(trial, val, test, status="done"):
        return {"trial": trial, "best_val_accuracy": val, "test_accuracy_at_best": test, "status": status}
    rows = [row("a", 0.5, 0.9), row("b", 0.7, 0.1), row("c", 0.7, 0.8), row("d", 0.9, 0.9, "diverged"),
            row("e", None, None, "failed"), row("f", None, None, "pending")]
    assert best_row(rows)["trial"] == "b"  # highest val; the tie goes to the earlier trial; test plays no part
    assert best_row(rows[3:]) is None


def test_results_print_hyperparameters_exactly(tmp_path):
    """results.md prints lr 1e-5 and 5e-5 as the trial names do, not rounded to four decimals;
    metrics keep four decimals."""
    trials = [PRESETS["quick"].replace(lr=lr) for lr in (1e-5, 5e-5, 0.0123456789)]
    rows = collect_results(tmp_path, trials)
    for r, val in zip(rows, (0.123456, 0.5, 0.25)):
        r.update(status="done", best_val_accuracy=val)
    write_results(tmp_path, rows)
    body = (tmp_path / "results.md").read_text().splitlines()[2:]
    lr_cells = [line.split(" | ")[1] for line in body]
    assert lr_cells == ["1e-05", "5e-05", "0.0123456789"] and trials[0].name() == "quick_lr1e-05"
    assert "| 0.1235 |" in body[0] and "0.0000" not in "".join(body)


# ----------------------------------------------------------------------------- the estimate

ESTIMATED = [TrainConfig(lr=lr, momentum=0.9, batch_size=32, epochs=3, image_size=64) for lr in (0.01, 0.02)]


class OpLog(TorchDispatchMode):
    """Every aten op a block of code runs, with its arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, args))
        return func(*args, **(kwargs or {}))

    def args_of(self, op):
        return [args for func, args in self.calls if func == op]


@pytest.mark.usefixtures("narrow_alexnet")
@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_throughput_probe_times_the_runs_own_steps(small_data, precision, dtype):
    """The probe trains on the trial's shuffled stream (batches across classes: one class alone makes
    denormal gradients that slow the CPU) under the run's precision."""
    dataset = load_dataset(small_data, progress=False)
    with OpLog() as ops:
        rate = measure_throughput(ESTIMATED[0], dataset, "cpu", steps=2, precision=precision)
    assert rate > 0
    targets = [args[1] for args in ops.args_of(torch.ops.aten.nll_loss_forward.default)]
    assert len(targets) == 3  # one warm-up step and two timed ones
    assert all(len(t.unique()) > 1 for t in targets)
    assert {args[0].dtype for args in ops.args_of(torch.ops.aten.convolution.default)} == {dtype}


def test_the_estimate_counts_the_epochs_left(small_data, tmp_path):
    dataset = load_dataset(small_data, progress=False)
    stacks = [[c] for c in ESTIMATED]
    rates = {}
    runs = runlog.run_folders(tmp_path, ESTIMATED)
    fresh = estimate_seconds(stacks, dataset, "cpu", runs, rates=rates)
    assert len(rates) == 1  # both trials have one shape: measured once
    runlog.write_config(tmp_path / ESTIMATED[0].name(), {"epochs_done": 2, "status": runlog.STATUS_RUNNING})
    assert estimate_seconds(stacks, dataset, "cpu", runs, rates=rates) == pytest.approx(fresh * 4 / 6)
    planned = {ESTIMATED[1].name(): 1}  # ASHA's plan stops the second trial after epoch 1
    assert estimate_seconds(stacks, dataset, "cpu", runs, planned, rates) == pytest.approx(fresh * 2 / 6)


def test_the_estimate_charges_each_driver_its_own_checkpoints(small_data):
    """The single driver writes a trial's checkpoints every epoch; the stacked engine every
    CHECKPOINT_SECONDS and at the end. With training itself free, checkpoints are all that is left."""
    dataset = load_dataset(small_data, progress=False)
    free = {rate_key(ESTIMATED[0], k, "fp32"): float("inf") for k in (1, 2)}  # training itself free
    single = estimate_seconds([[c] for c in ESTIMATED], dataset, "cpu", rates=free, engine="single")
    stacked = estimate_seconds([ESTIMATED], dataset, "cpu", rates=free, engine="stacked")
    assert single > 0
    assert stacked == pytest.approx(single * 2 / 6)  # 2 trials x 3 epochs against 2 trials once


# ----------------------------------------------------------------------------- a real grid

@pytest.fixture(scope="module")
def small_grid(tmp_path_factory) -> Path:
    return write_toml(tmp_path_factory.mktemp("grid"), SMALL_GRID, "small.toml")


@pytest.fixture(scope="module")
def reference(narrow_alexnet, small_grid, small_data, tmp_path_factory):
    """The uninterrupted grid, run in this process, on the narrow network, as the interrupted grids'
    subprocesses run it (NARROW_ENV)."""
    out = tmp_path_factory.mktemp("grid") / "reference"
    _, trials = grid_trials(config=small_grid)
    logged = []
    rows = run_grid(trials, out, data=small_data, device="cpu", progress=False, log=logged.append)
    yield SimpleNamespace(out=out, trials=trials, rows=rows, logged=logged)
    shutil.rmtree(out)  # checkpoints, needed no more


def read_csv(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_small_grid_trials(small_grid):
    assert [t.name() for t in grid_trials(config=small_grid)[1]] == SMALL_NAMES


@pytest.mark.slow
def test_grid_runs_every_trial_into_a_run_folder(reference):
    assert reference.logged[0].startswith("grid: 2 trials (0 already finished), estimated ")
    assert sorted(p.name for p in reference.out.iterdir()) == sorted(
        [*SMALL_NAMES, "grid.json", "results.csv", "results.md"])
    for t in reference.trials:
        rec = runlog.read_config(reference.out / t.name())
        assert rec["config"] == t.to_dict() and rec["name"] == t.name()
    run = reference.out / TRAINED
    files = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.jsonl", "best.pt"} <= files and "last.pt" not in files  # released at the end
    assert [r["epoch"] for r in runlog.read_metrics(run)] == [1, 2]
    scalars = runlog.read_scalars(run)
    assert all([s for s, _ in scalars[tag]] == [1, 2] for tag in runlog.TAGS.values())
    assert not (reference.out / DIVERGING / runlog.LAST_CKPT).exists()


@pytest.mark.slow
def test_results_csv_matches_the_runs(reference):
    rows = read_csv(reference.out)
    assert list(rows[0]) == RESULT_COLUMNS
    assert [r["trial"] for r in rows] == SMALL_NAMES
    assert [r["status"] for r in rows] == ["diverged", "done"]
    for row, trial in zip(rows, reference.trials):
        for key, value in trial.to_dict().items():
            assert row[key] == str(value), key
        assert float(row["seconds"]) > 0
    diverged, row = rows
    metrics = runlog.read_metrics(reference.out / TRAINED)
    best = max(metrics, key=lambda m: m["val_accuracy"])  # the first epoch reaching the maximum
    assert float(row["best_val_accuracy"]) == best["val_accuracy"]
    assert int(row["best_epoch"]) == best["epoch"]
    assert float(row["test_accuracy_at_best"]) == best["test_accuracy"]
    assert float(row["final_train_loss"]) == metrics[-1]["train_loss"]
    assert row["reason"] == ""
    assert diverged["reason"].startswith("train loss became") and "epoch 1" in diverged["reason"]
    assert diverged["best_val_accuracy"] == diverged["best_epoch"] == diverged["test_accuracy_at_best"] == ""
    assert diverged["final_train_loss"] == ""
    assert runlog.read_metrics(reference.out / DIVERGING)[-1]["status"] == "diverged"
    assert without_seconds(rows) == without_seconds([{k: "" if v is None else str(v) for k, v in r.items()}
                                                     for r in reference.rows])


@pytest.mark.slow
def test_results_md_and_best_trial(reference):
    rows = read_csv(reference.out)
    done = [r for r in rows if r["status"] == "done"]
    best = max(done, key=lambda r: float(r["best_val_accuracy"]))
    assert best_row(reference.rows)["trial"] == best["trial"]
    lines = (reference.out / "results.md").read_text().splitlines()
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    assert columns == ["best", *RESULT_COLUMNS[1:]] and len(lines) == 2 + len(rows)
    for row, line in zip(rows, lines[2:]):
        cells = dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
        assert cells["best"] == ("**best**" if row["trial"] == best["trial"] else "")
        assert float(cells["lr"]) == float(row["lr"]) and cells["status"] == row["status"]
        if row["status"] == "done":
            assert cells["best_val_accuracy"] == f"{float(row['best_val_accuracy']):.4f}"


@pytest.mark.slow
def test_a_grid_of_an_earlier_version_resumes_in_its_folders(reference, small_data, tmp_path):
    """Folders named as earlier versions named them (every core hyperparameter) are found: the
    finished one is skipped, the unfinished one continues in its own folder, results name them."""
    out = tmp_path / "old"
    for name, legacy in zip(SMALL_NAMES, LEGACY_NAMES):
        shutil.copytree(reference.out / name, out / legacy)
    grid = json.loads((reference.out / "grid.json").read_text())
    for t, legacy in zip(grid["trials"], LEGACY_NAMES):
        t["name"] = legacy
    (out / "grid.json").write_text(json.dumps(grid))
    config = runlog.read_config(out / LEGACY_NAMES[1])
    runlog.write_config(out / LEGACY_NAMES[1], {**config, "status": runlog.STATUS_RUNNING})  # as if cut short
    logged = []
    rows = run_grid(reference.trials, out, data=small_data, device="cpu", resume=True, progress=False,
                    log=logged.append)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(LEGACY_NAMES)
    assert [r["trial"] for r in rows] == LEGACY_NAMES and [r["status"] for r in rows] == ["diverged", "done"]
    assert logged[0].startswith("grid: 2 trials (1 already finished)")


@pytest.mark.slow
def test_resume_of_a_finished_grid_does_nothing(reference, small_data):
    before = {p: p.stat().st_mtime_ns for p in reference.out.rglob("*") if p.parent != reference.out}
    logged = []
    rows = run_grid(reference.trials, reference.out, data=small_data, device="cpu", resume=True, progress=False,
                    log=logged.append)
    assert logged[0] == "grid: 2 trials (2 already finished)"
    assert without_seconds(rows) == without_seconds(reference.rows)
    assert {p: p.stat().st_mtime_ns for p in reference.out.rglob("*") if p.parent != reference.out} == before


@pytest.mark.slow
def test_grid_folder_checks(reference, small_data, tmp_path):
    with pytest.raises(UserError, match="grid folder already exists; add --resume"):
        run_grid(reference.trials, reference.out, data=small_data, device="cpu", progress=False)
    with pytest.raises(UserError, match="holds a different grid"):
        run_grid(reference.trials[:1], reference.out, data=small_data, device="cpu", resume=True, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not a grid folder"):
        run_grid(reference.trials, other, data=small_data, device="cpu", progress=False)


# ----------------------------------------------------------------------------- interruptions

def start_grid(small_grid: Path, data: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alexnet_tiny", "grid", "--config", str(small_grid), "--data",
                             str(data), "--out", str(out), "--device", "cpu", "--no-report", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **NARROW_ENV})


def wait_for(condition, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"grid ended (exit {proc.returncode}) before the signal:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            raise AssertionError("timed out waiting for the first trial's first epoch")
        time.sleep(0.05)


def resume_and_compare(small_grid, small_data, out, reference) -> subprocess.CompletedProcess:
    proc = run_cli("grid", "--config", small_grid, "--data", small_data, "--out", out, "--device", "cpu",
                   "--no-report", "-q", "--resume", check=True, env=NARROW_ENV)
    # the diverged trial is finished and skipped; the interrupted one continues
    assert proc.stderr.splitlines()[0].startswith("grid: 2 trials (1 already finished), estimated ")
    assert without_seconds(read_csv(out)) == without_seconds(read_csv(reference.out))
    scalars = runlog.read_scalars(out / TRAINED)
    for tag in runlog.TAGS.values():
        assert [s for s, _ in scalars[tag]] == [1, 2], tag  # no step twice after the resume
    assert [r["epoch"] for r in runlog.read_metrics(out / TRAINED)] == [1, 2]
    best = best_row(reference.rows)
    summary = proc.stdout.strip()
    assert summary.startswith(f"grid {out}: 2 trials (1 diverged, 1 done) in ")
    assert summary.endswith(f"best {best['trial']}: val {best['best_val_accuracy']:.3f} (epoch {best['best_epoch']}), "
                            f"test {best['test_accuracy_at_best']:.3f}; no report (--no-report)")
    assert " MB on disk; " in summary
    return proc


@pytest.mark.slow
def test_resume_after_sigint(small_grid, small_data, reference, tmp_path):
    out = tmp_path / "grid"
    trained = out / TRAINED
    proc = start_grid(small_grid, small_data, out)
    wait_for(lambda: (trained / runlog.LAST_CKPT).exists(), proc)  # epoch 1 of the trained trial saved
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    lines = stderr.splitlines()
    assert lines[0].startswith("grid: 2 trials (0 already finished), estimated ")  # printed before any training
    assert proc.returncode == 130 and lines[-1].startswith("alexnet-tiny grid: interrupted")
    assert "Traceback" not in stderr and stdout == ""
    assert runlog.read_config(out / DIVERGING)["status"] == runlog.STATUS_DIVERGED
    assert runlog.read_config(trained)["status"] == runlog.STATUS_RUNNING
    proc = resume_and_compare(small_grid, small_data, out, reference)
    assert f"continuing {trained} at epoch 2/2 from its last checkpoint" in proc.stderr


@pytest.mark.slow
def test_resume_after_sigkill(small_grid, small_data, reference, tmp_path):
    out = tmp_path / "grid"
    metrics = out / TRAINED / runlog.METRICS_FILE
    proc = start_grid(small_grid, small_data, out)
    # the moment epoch 1 of the trained trial is logged, before or while its checkpoint is written
    wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    resume_and_compare(small_grid, small_data, out, reference)


# ----------------------------------------------------------------------------- random search

RANDOM_GRID = """
preset = "quick"
samples = 5
lr = {loguniform = [1e-3, 0.1]}
dropout = {uniform = [0.0, 0.5]}
batch_size = {randint = [16, 48]}
init = {choice = ["kaiming", "whiten"]}
seed = [0, 1]
"""


def test_a_random_search_draws_from_its_distributions_the_same_trials_every_time(tmp_path):
    path = write_toml(tmp_path, RANDOM_GRID)
    trials = grid_trials(config=path)[1]
    assert len(trials) == 10 and grid_trials(config=path)[1] == trials  # 2 seeds x 5 draws, drawn again alike
    assert [t.seed for t in trials] == [0] * 5 + [1] * 5 and trials[:5] == [t.replace(seed=0) for t in trials[5:]]
    draws = trials[:5]
    assert all(1e-3 <= t.lr <= 0.1 and 0 <= t.dropout <= 0.5 and 16 <= t.batch_size <= 48 and
               t.init in ("kaiming", "whiten") for t in draws)
    assert all(float(f"{t.lr:.3g}") == t.lr and float(f"{t.dropout:.3g}") == t.dropout for t in draws)
    assert len({(t.lr, t.dropout, t.batch_size, t.init) for t in draws}) == 5
    names = [t.name() for t in trials]
    assert len(set(names)) == 10 and max(map(len, names)) < 60, names  # readable folder names
    other = grid_trials(config=write_toml(tmp_path, RANDOM_GRID + "sample_seed = 1\n", "other.toml"))[1]
    assert {t.lr for t in other}.isdisjoint({t.lr for t in trials})


def test_loguniform_draws_spread_evenly_over_the_decades():
    """200 draws over three decades: about a third in each (a uniform draw would put 90% in the last)."""
    trials = expand({"preset": "quick", "samples": 200, "lr": {"loguniform": [1e-4, 0.1]}})
    decades = [sum(lo <= t.lr < lo * 10 for t in trials) for lo in (1e-4, 1e-3, 1e-2)]
    assert all(45 <= n <= 90 for n in decades), decades


RANDOM_RUN = """
preset = "quick"
samples = 5
lr = {loguniform = [1e-3, 1e-2]}
epochs = 1
batch_size = 32
image_size = 64
"""


@pytest.mark.slow
def test_a_random_search_runs_resumes_after_a_kill_and_reports_its_draws(small_data, tmp_path):
    toml = write_toml(tmp_path, RANDOM_RUN)
    trials = grid_trials(config=toml)[1]
    reference, out = tmp_path / "reference", tmp_path / "grid"
    run_cli("grid", "--config", toml, "--data", small_data, "--out", reference, "--device", "cpu", "--no-report", "-q",
            env=NARROW_ENV, check=True)
    proc = subprocess.Popen([sys.executable, "-m", "alexnet_tiny", "grid", "--config", str(toml), "--data",
                             str(small_data), "--out", str(out), "--device", "cpu", "--no-report", "-q"],
                            env={**os.environ, **NARROW_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / trials[0].name() / runlog.METRICS_FILE
    wait_for(lambda: first.exists() and first.read_text().count("\n") >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    resumed = run_cli("grid", "--config", toml, "--data", small_data, "--out", out, "--device", "cpu", "--resume",
                      "-q", env=NARROW_ENV, check=True)
    assert without_seconds(read_csv(out)) == without_seconds(read_csv(reference))
    assert [r["lr"] for r in read_csv(out)] == [repr(t.lr) for t in trials]
    report = json.loads((out / "report" / "report.json").read_text())
    lr = next(e for e in report["findings"]["effects"] if e["hyperparameter"] == "lr")
    assert lr["continuous"] and [b["value"] for b in lr["values"]] == sorted(t.lr for t in trials)
    assert lr["rho"] is not None and any(c.startswith("lr, at 5 values from ") for c in report["findings"]["conclusions"])
    page = (out / "report" / "index.html").read_text()
    assert all(t.name() in page for t in trials) and report["grid_map"] is None
    assert f"report {out / 'report' / 'index.html'}" in resumed.stdout


def test_the_random_search_docs_show_draws_as_written(tmp_path):
    """docs/cli.md's random-search example is a grid file that expands to what its comments say."""
    import re
    text = (REPO / "docs" / "cli.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    trials = grid_trials(config=write_toml(tmp_path, "\n".join(line.strip() for line in block.splitlines())))[1]
    assert len(trials) == 16 and len({(t.lr, t.dropout, t.batch_size, t.init) for t in trials}) == 8


def test_the_shipped_grids_are_found_outside_a_clone(tmp_path, monkeypatch):
    """The repository's grids/ is the package's own: `--config grids/seed.toml` (or `seed`) works
    from any folder; a name that is neither a file nor a shipped grid says which grids there are."""
    monkeypatch.chdir(tmp_path)
    assert grid_trials(config="grids/seed.toml")[1] == grid_trials(preset="seed")[1] == grid_trials(config="seed")[1]
    with pytest.raises(UserError, match=r"grids/nope\.toml: grid file not found \(the package's own grids, by name: "
                                        r"recipe-cpu-ablation\.toml, recipe-cpu-seeds\.toml, seed\.toml\)"):
        grid_trials(config="grids/nope.toml")
