"""What a grid taught (findings.py, stats.py): the statistics against scipy on random cases, the
findings on planted results (a hyperparameter with no effect, tied and untied trials, the study's
inert gamma), the predictions training keeps, and a grid of replicates from the command line."""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest
import scipy.stats as scipy_stats
from hypothesis import given, settings
from hypothesis import strategies as st

from alexnet_tiny import runlog
from alexnet_tiny.config import PRESETS
from alexnet_tiny.grid import grid_trials, run_grid, with_seeds
from alexnet_tiny.report import write_report
from alexnet_tiny.results import best_row, seed_groups
from alexnet_tiny.stats import mcnemar, paired, rank_correlation, wilson

from conftest import FAST, LEARNS_AT_ONCE, NARROW_ENV, run_cli

IMAGES = 500


# ----------------------------------------------------------------------------- the statistics, against scipy

@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_is_scipys(case):
    k, n = case
    expected = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson(k, n)
    assert low == pytest.approx(expected.low, abs=1e-9) and high == pytest.approx(expected.high, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 3000))
def test_exact_mcnemar_is_scipys_binomial_test(b, c):
    expected = scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    assert mcnemar(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=3, max_size=30))
def test_rank_correlation_is_scipys_spearman(points):
    x, y = [float(a) for a, _ in points], [float(b) for _, b in points]
    ours = rank_correlation(x, y)
    if len(set(x)) == 1 or len(set(y)) == 1:
        assert ours is None
    else:
        assert ours == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-9)


def test_paired_counts_only_the_images_one_model_got_right():
    first = [True] * 300 + [False] * 200
    assert paired(first, list(first)) == {"only_first": 0, "only_second": 0, "p": 1.0, "tied": True}
    second = [True] * 260 + [False] * 240  # right on 40 images fewer, wrong on none more
    result = paired(first, second)
    assert (result["only_first"], result["only_second"], result["tied"]) == (40, 0, False)
    assert result["p"] == pytest.approx(2 * 0.5 ** 40)


# ----------------------------------------------------------------------------- planted results

def plant(grid: Path, config, val_right: int, test_right: int, status: str = "done", epoch: int = 3) -> str:
    """A finished run folder as training writes it (config.json and predictions.json, no checkpoint):
    the first `val_right` of 500 val images right (label 0, predicted 0), the rest wrong."""
    run = grid / config.name()
    runlog.write_config(run, {"config": config.to_dict(), "name": config.name(), "status": status,
                              "epochs_done": epoch, "best_val_accuracy": val_right / IMAGES, "best_epoch": epoch,
                              "test_accuracy_at_best": test_right / IMAGES, "final_train_loss": 1.0, "seconds": 60.0})
    runlog.write_predictions(run, epoch, {"val": ([0] * val_right + [1] * (IMAGES - val_right), [0] * IMAGES),
                                          "test": ([0] * test_right + [1] * (IMAGES - test_right), [0] * IMAGES)})
    return config.name()


def report_of(grid: Path, tmp_path: Path) -> tuple[dict, str]:
    out = write_report(grid, out=tmp_path / "report", progress=False, log=lambda m: None, samples=0, device="cpu")
    return json.loads((out / "report.json").read_text()), (out / "index.html").read_text()


def test_planted_grid_no_effect_ties_and_an_untied_trial(tmp_path):
    """lr changes 40 images of 500; dropout changes none: every pair differing in dropout predicts
    image by image alike. The best is tied with its twin and not with a trial that is worse on 40
    images and better on none."""
    base = PRESETS["quick"]
    grid = tmp_path / "grid"
    names = {(lr, d): plant(grid, base.replace(lr=lr, dropout=d), 300 if lr == 0.005 else 260,
                            280 if lr == 0.005 else 240)
             for lr in (0.005, 0.01) for d in (0.0, 0.5)}
    rep, page = report_of(grid, tmp_path)
    found = rep["findings"]
    effects = {e["hyperparameter"]: e for e in found["effects"]}
    assert set(effects) == {"lr", "dropout"}
    assert effects["dropout"]["verdict"] == "none" and effects["dropout"]["size"] == 0
    assert effects["lr"]["verdict"] == "effect" and effects["lr"]["size"] == pytest.approx(40 / IMAGES)
    assert [e["hyperparameter"] for e in found["effects"]] == ["lr", "dropout"]  # ranked
    assert rep["best"]["trial"] == names[(0.005, 0.0)]
    for split in ("val", "test"):
        assert found["ties"][split]["tied"] == [names[(0.005, 0.5)]]
        worse = found["ties"][split]["compared"][names[(0.01, 0.0)]]
        assert (worse["best_only"], worse["trial_only"], worse["tied"]) == (40, 0, False)
    intervals = {t["trial"]: t for t in found["intervals"]}
    low, high = wilson(300, IMAGES)
    assert intervals[names[(0.005, 0.0)]]["val"] == {"accuracy": 0.6, "correct": 300, "images": IMAGES,
                                                     "low": low, "high": high}
    said = " ".join(found["conclusions"])
    assert "dropout had no effect" in said and "lr 8.0 points" in said
    assert f"Tied with it on validation (paired McNemar, p >= 0.05): {names[(0.005, 0.5)]}." in said
    assert '<ul id="conclusions">' in page and "What the grid taught" in page and 'src="effects.png"' in page
    assert page.index("What the grid taught") < page.index("<h2>Results</h2>")  # at the top
    assert (tmp_path / "report" / "effects.png").stat().st_size > 10_000


def test_trials_judged_on_other_images_are_not_paired(tmp_path):
    """Two folders prepared with other splits can have as many val images, not the same ones."""
    grid = tmp_path / "grid"
    base = PRESETS["quick"]
    plant(grid, base, 300, 280)
    other = plant(grid, base.replace(lr=0.01), 300, 280)
    path = grid / other / runlog.PREDICTIONS_FILE
    saved = json.loads(path.read_text())
    saved["splits"]["val"]["label"] = [1] * 250 + [0] * 250  # other images: other labels
    path.write_text(json.dumps(saved))
    found = report_of(grid, tmp_path)[0]["findings"]
    assert found["ties"]["val"]["unpaired"] == [other] and other in found["ties"]["test"]["compared"]


def test_trials_stopped_at_a_rung_are_left_out_of_the_effects(tmp_path):
    grid = tmp_path / "grid"
    base = PRESETS["quick"]
    plant(grid, base.replace(lr=0.005), 300, 280)
    plant(grid, base.replace(lr=0.01), 290, 280)
    stopped = plant(grid, base.replace(lr=0.02), 50, 50, status="stopped", epoch=1)
    found = report_of(grid, tmp_path)[0]["findings"]
    assert stopped not in found["effects_over"] and len(found["effects_over"]) == 2
    assert found["effects"][0]["size"] == pytest.approx(10 / IMAGES)  # not 250
    assert any("1 trial(s) stopped early at a rung" in c for c in found["conclusions"])
    assert stopped in found["ties"]["val"]["compared"]  # still compared with the best


def test_an_effect_only_stopped_trials_vary_is_measured_with_them_and_marked(tmp_path):
    """The main job's usual end: ASHA stopped every other lr, the finished trials are one lr's seeds."""
    grid = tmp_path / "grid"
    base = PRESETS["quick"]
    for seed in (0, 1):
        plant(grid, base.replace(seed=seed), 290 + seed, 270)
    plant(grid, base.replace(lr=0.02), 60, 55, status="stopped", epoch=1)
    found = report_of(grid, tmp_path)[0]["findings"]
    lr = next(e for e in found["effects"] if e["hyperparameter"] == "lr")
    assert lr["with_stopped"] and lr["verdict"] == "effect" and lr["size"] == pytest.approx((290.5 - 60) / IMAGES)
    said = " ".join(found["conclusions"])
    assert "lr* 46.1 points" in said and "effects marked * include them" in said


def test_the_seed_grids_twins_are_replicates_and_gamma_is_inert(tmp_path):
    """The study's grid: each (lr, momentum) twice, gamma 0.1 with seed 0 and 0.01 with seed 1; its
    schedule never reads gamma. Our twins count as one configuration's replicates, and the study's
    conclusions are checked against its published table."""
    grid = tmp_path / "seed"
    right = {(0.0001, 0.9): 80, (0.0001, 0.5): 55, (0.001, 0.9): 270, (0.001, 0.5): 150, (0.005, 0.9): 265,
             (0.005, 0.5): 275}
    for (lr, m), k in right.items():
        plant(grid, PRESETS["seed"].replace(lr=lr, momentum=m, gamma=0.1, seed=0), k, k - 5, epoch=35)
        plant(grid, PRESETS["seed"].replace(lr=lr, momentum=m, gamma=0.01, seed=1), k + 6, k - 1, epoch=35)
    rep, page = report_of(grid, tmp_path)
    groups = rep["configurations"]
    assert len(groups) == 6 and all(len(g["runs"]) == 2 for g in groups)
    assert all(set(g["inert"]) == {"gamma"} and "never moves" in g["inert"]["gamma"] for g in groups)
    found = rep["findings"]
    effects = {e["hyperparameter"]: e for e in found["effects"]}
    assert effects["gamma"]["verdict"] == "inert"
    assert {effects["lr"]["verdict"], effects["momentum"]["verdict"]} == {"effect"}
    # selection on the configurations' mean validation accuracy: (0.005, 0.5), its better run
    assert rep["best"]["trial"] == PRESETS["seed"].replace(lr=0.005, momentum=0.5, gamma=0.01, seed=1).name()
    steps = found["steps"]
    assert {tuple(c) for s in steps["shared_steps"] for c in s["configurations"]} == {(0.001, 0.9), (0.005, 0.5)}
    points = steps["points"]
    assert len(points) == 12 and all(p["step"] == pytest.approx(p["lr"] / (1 - p["momentum"])) for p in points)
    assert steps["rank_correlation"] == pytest.approx(
        scipy_stats.spearmanr([p["step"] for p in points], [p["val"] for p in points]).statistic)
    assert found["replicates"]["configurations"] == 6
    assert found["replicates"]["seed_sd"] == pytest.approx(statistics.stdev([0, 6 / IMAGES]))
    claims = [c["claim"] for c in found["study"]]
    assert claims[0].startswith("The best configuration is lr 0.001, momentum 0.9") and "gamma" in claims[1]
    assert "Chosen by test accuracy" in found["study"][0]["verdict"]
    assert len(found["published_intervals"]) == 12 and 'id="published-intervals"' in page
    assert 'id="study-checks"' in page


def test_replicates_choose_the_configuration_by_its_mean():
    """Configuration x: 0.50 and 0.52; y: one lucky 0.55 and 0.40. y's single best run is higher,
    x's mean is: the best run of x is chosen."""
    def row(trial, lr, seed, val):
        return {"trial": trial, **PRESETS["quick"].replace(lr=lr, seed=seed).to_dict(), "status": "done",
                "best_val_accuracy": val, "test_accuracy_at_best": val, "seconds": 60.0, "best_epoch": 1}
    rows = [row("x0", 0.005, 0, 0.50), row("x1", 0.005, 1, 0.52), row("y0", 0.01, 0, 0.55), row("y1", 0.01, 1, 0.40)]
    assert best_row(rows)["trial"] == "x1"
    assert best_row(rows[::2])["trial"] == "y0"  # one run each: the best run
    assert [len(g["runs"]) for g in seed_groups(rows)] == [2, 2]


def test_with_seeds_repeats_every_trial_once_per_seed():
    trials = [PRESETS["quick"], PRESETS["quick"].replace(lr=0.01)]
    seeded = with_seeds(trials, 3)
    assert [t.name() for t in seeded] == ["quick", "quick_seed1", "quick_seed2", "quick_lr0.01",
                                          "quick_lr0.01_seed1", "quick_lr0.01_seed2"]
    overlapping = with_seeds([PRESETS["quick"], PRESETS["quick"].replace(seed=1)], 2)
    assert [t.seed for t in overlapping] == [0, 1, 2, 3]  # each trial twice, no training twice
    _, study = grid_trials("seed")
    seeded = with_seeds(study, 2)  # gamma 0.1 from seed 0, gamma 0.01 from seed 1: gamma is inert
    assert len(seeded) == 24
    for lr, m in {(t.lr, t.momentum) for t in study}:
        runs = [t for t in seeded if (t.lr, t.momentum) == (lr, m)]
        assert sorted(t.seed for t in runs) == [0, 1, 2, 3]  # four different trainings of one configuration


# ----------------------------------------------------------------------------- what training keeps

@pytest.mark.slow
@pytest.mark.usefixtures("narrow_alexnet")
@pytest.mark.parametrize("engine", ["single", "stacked"])
def test_training_keeps_the_best_epochs_predictions(engine, small_data, tmp_path):
    """predictions.json holds the best epoch's prediction of every val and test image: its accuracy
    is the recorded one, and the report's evaluation of best.pt (a run without the file) agrees."""
    trials = [FAST.replace(epochs=2, lr=lr) for lr in (0.01, 0.02)]
    run_grid(trials, tmp_path / "g", data=small_data, device="cpu", progress=False, log=lambda m: None,
             estimate=False, engine=engine)
    first = tmp_path / "g" / trials[0].name()
    record = runlog.read_config(first)
    saved = json.loads((first / runlog.PREDICTIONS_FILE).read_text())
    assert saved["epoch"] == record["best_epoch"]
    correct = runlog.read_predictions(first, record["best_epoch"])
    assert statistics.fmean(correct["val"]) == pytest.approx(record["best_val_accuracy"], abs=1e-12)
    assert statistics.fmean(correct["test"]) == pytest.approx(record["test_accuracy_at_best"], abs=1e-12)
    assert runlog.read_predictions(first, record["best_epoch"] + 1) is None  # another epoch's: not these
    rep, _ = report_of(tmp_path / "g", tmp_path / "with")
    (first / runlog.PREDICTIONS_FILE).unlink()
    again, _ = report_of(tmp_path / "g", tmp_path / "without")
    assert again["findings"]["intervals"] == rep["findings"]["intervals"]
    assert again["findings"]["ties"] == rep["findings"]["ties"]


@pytest.mark.slow
def test_grid_seeds_from_the_command_line(small_data, tmp_path):
    out = tmp_path / "g"
    grid = tmp_path / "two.toml"
    grid.write_text('preset = "quick"\nlr = [0.005, 0.02]\nepochs = [1]\nbatch_size = [32]\n'
                    + "".join(f"{k} = {v!r}\n" if isinstance(v, str) else f"{k} = {v}\n" for k, v in LEARNS_AT_ONCE.items()))
    proc = run_cli("grid", "--config", grid, "--seeds", "2", "--data", small_data, "--out", out, "--device", "cpu",
                   "-q", env=NARROW_ENV, check=True)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "report")
    assert len(folders) == 4 and sum("_seed1_" in name for name in folders) == 2
    assert "4 trials (4 done)" in proc.stdout
    rep = json.loads((out / "report" / "report.json").read_text())
    assert [len(g["runs"]) for g in rep["configurations"]] == [2, 2]
    assert rep["findings"]["replicates"]["configurations"] == 2
    bad = run_cli("grid", "--config", grid, "--seeds", "0", "--data", small_data, "--out", tmp_path / "h")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith("expected 1 to 100 runs of each configuration")


@pytest.mark.slow
def test_a_seeds_grid_killed_mid_way_resumes_to_every_replicate(small_data, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    grid = tmp_path / "one.toml"
    grid.write_text('preset = "quick"\nepochs = [2]\nbatch_size = [32]\n'
                    + "".join(f"{k} = {v!r}\n" if isinstance(v, str) else f"{k} = {v}\n" for k, v in LEARNS_AT_ONCE.items()))
    out = tmp_path / "g"
    args = ["grid", "--config", str(grid), "--seeds", "3", "--data", str(small_data), "--out", str(out), "--device",
            "cpu", "--engine", "single", "--no-report", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "alexnet_tiny", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **NARROW_ENV})
    first = out / with_seeds([PRESETS["quick"].replace(epochs=2, batch_size=32, **LEARNS_AT_ONCE)], 3)[1].name()
    deadline = time.monotonic() + 300
    while not (first / runlog.LAST_CKPT).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the grid ended before the kill"
    resumed = run_cli(*args[:-1], "--resume", "-q", env=NARROW_ENV, check=True)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["quick_b32_e2_ls0_crop_kaiming_do0.5", "quick_b32_e2_seed1_ls0_crop_kaiming_do0.5",
                       "quick_b32_e2_seed2_ls0_crop_kaiming_do0.5"]
    assert "3 trials (3 done)" in resumed.stdout
    assert all(runlog.read_config(out / f)["status"] == "done" for f in folders)
