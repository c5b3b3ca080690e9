"""Early stopping (asha.py, grid --scheduler asha) and the grid's time budget: ASHA's rule against Ray
Tune's own, stopped trials in the run folders and results, resume after Ctrl-C equal to an
uninterrupted grid, and a budget that ends a grid resumable."""
from __future__ import annotations

import dataclasses
import json
import random
import time

import numpy as np
import pytest

from alexnet_tiny import runlog
from alexnet_tiny.asha import Asha
from alexnet_tiny.errors import UserError
from alexnet_tiny.grid import expand, grid_scheduler, run_grid
from alexnet_tiny.results import collect_results
from alexnet_tiny.trial import UNLIMITED, Budget
from conftest import LEARNS_AT_ONCE, LEARNS_AT_ONCE_TOML, quiet, run_cli, stop_after, without_timing

pytestmark = pytest.mark.usefixtures("narrow_alexnet")

# Four trials of 3 epochs (rungs at 1 and 2); the two at a learning rate too small to move stay where
# they started.
GRID = {"preset": "quick", "lr": [0.004, 1e-7, 0.002, 2e-7], "momentum": [0.9], "gamma": [0.5], "step_size": [1],
        "batch_size": [32], "epochs": [3], "image_size": [64], **{k: [v] for k, v in LEARNS_AT_ONCE.items()}}
TRIALS = expand(GRID)
ASHA = {"scheduler": "asha", "grace_period": 1, "reduction_factor": 2.0}


def statuses(out) -> dict[str, str]:
    return {r["trial"]: r["status"] for r in collect_results(out, TRIALS)}


def vals(out, name) -> dict[int, float]:
    return {r["epoch"]: r["val_accuracy"] for r in runlog.epoch_rows(runlog.read_metrics(out / name))}


# ----------------------------------------------------------------------------- the rule

@pytest.mark.parametrize("grace, rf, max_t, rungs", [(1, 2, 8, [1, 2, 4]), (1, 3, 10, [1, 3, 9]), (2, 2, 9, [2, 4, 8]),
                                                     (1, 2.5, 10, [1, 3, 7]), (3, 2, 3, [])])
def test_rungs(grace, rf, max_t, rungs):
    assert Asha(max_t, grace, rf).rungs == rungs


def test_the_first_trial_at_a_rung_goes_on_and_the_cutoff_is_a_quantile():
    asha = Asha(8, 1, 2)
    assert asha.judge("a", 1, 0.3) is None  # nobody before it
    assert asha.judge("b", 1, 0.2) is not None  # below a's 0.3
    assert asha.judge("c", 1, 0.25) is None  # the median of 0.3 and 0.2 is 0.25: not below it
    reason = asha.judge("d", 1, 0.2)
    assert reason.startswith("stopped by ASHA at epoch 1: val 0.200 below the cutoff 0.250")
    with pytest.raises(ValueError):
        asha.judge("a", 1, 0.5)


def test_the_planned_share_goes_on_in_grid_order():
    # 9 trials, rungs at 1 and 3 (reduction factor 3): 3 go past epoch 1, 1 past epoch 3
    assert Asha(9, 1, 3).planned_epochs([9] * 9) == [9, 3, 3, 1, 1, 1, 1, 1, 1]
    assert Asha(9, 1, 3).planned_epochs([1, 9, 9, 9]) == [1, 9, 1, 1]  # a trial ending at a rung takes no place past it


def test_a_resumed_grid_plans_from_what_its_trials_did():
    asha = Asha(9, 1, 3)
    # trial 5 went past both rungs (4 epochs done): it takes the only place past epoch 3 and goes on to 9
    assert asha.planned_epochs([9] * 9, done=[3, 3, 1, 1, 1, 4, 1, 1, 1]) == [3, 3, 1, 1, 1, 9, 1, 1, 1]
    # trial 0 was stopped at epoch 1: the places go to the next ones in grid order
    stopped = [True] + [False] * 8
    assert asha.planned_epochs([9] * 9, done=[1] + [0] * 8, stopped=stopped) == [1, 9, 3, 3, 1, 1, 1, 1, 1]


@pytest.mark.ray
def test_the_rule_is_ray_tunes():
    """The same results in the same order get the same decisions from Ray Tune's own bracket."""
    from ray.tune.schedulers import async_hyperband
    rng = random.Random(0)
    for rf, grace, max_t in [(2, 1, 8), (3, 1, 12), (4, 2, 16), (2.5, 1, 10)]:
        ours = Asha(max_t, grace, rf)
        theirs = async_hyperband._Bracket(grace, max_t, rf, 0)
        for trial in range(30):
            trial_id = type("T", (), {"trial_id": str(trial)})()
            for epoch in range(1, max_t):
                value = round(rng.random(), 2)
                stop_ray = theirs.on_result(trial_id, epoch, value) == "STOP"
                stop_ours = epoch in ours.rungs and ours.judge(str(trial), epoch, value) is not None
                assert stop_ours == stop_ray, (rf, grace, trial, epoch)
                if stop_ours:
                    break


def test_scheduler_settings():
    assert grid_scheduler(None) is None
    assert grid_scheduler(None, "asha") == ASHA
    assert grid_scheduler("seed", "asha", 2, 3) == {"scheduler": "asha", "grace_period": 2, "reduction_factor": 3.0}
    assert grid_scheduler("quick", "none") is None
    with pytest.raises(UserError, match="--grace-period and --reduction-factor need --scheduler asha"):
        grid_scheduler("seed", None, 2)
    with pytest.raises(UserError, match="--reduction-factor 1: expected a number > 1"):
        Asha(4, 1, 1.0)
    with pytest.raises(UserError, match="--grace-period 5: expected at most the grid's longest trial"):
        Asha(4, 5, 2.0)


# ----------------------------------------------------------------------------- a grid with ASHA

@pytest.fixture(scope="module")
def asha_grid(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("asha") / "grid"
    lines = []
    run_grid(TRIALS, out, data=small_data, device="cpu", progress=False, log=lines.append, scheduler=ASHA,
             estimate=False)
    return {"out": out, "log": lines}


def test_asha_stops_the_trials_its_rule_stops(asha_grid):
    out = asha_grid["out"]
    asha, expected = Asha(3, 1, 2), {}
    for rung in asha.rungs:  # the rule applied by hand to the recorded validation accuracies, in grid order
        for t in TRIALS:
            v = vals(out, t.name())
            if rung in v and t.name() not in expected:
                cutoff = (np.percentile(list(asha.recorded[rung].values()), 50) if asha.recorded[rung] else None)
                asha.recorded[rung][t.name()] = v[rung]
                if cutoff is not None and v[rung] < cutoff:
                    expected[t.name()] = rung
    got = {t.name(): runlog.read_config(out / t.name()) for t in TRIALS}
    assert {n: r["epochs_done"] for n, r in got.items() if r["status"] == "stopped"} == expected
    assert expected, "this grid is built so that ASHA stops at least one trial"
    for n, rec in got.items():
        if n in expected:
            assert rec["reason"].startswith(f"stopped by ASHA at epoch {expected[n]}")
            assert max(vals(out, n)) == expected[n]  # no epoch after the rung
            assert runlog.read_metrics(out / n)[-1]["status"] == "stopped"
            assert (out / n / runlog.BEST_CKPT).exists() and not (out / n / runlog.LAST_CKPT).exists()  # ended
            assert any(f"{n}: stopped by ASHA at epoch {expected[n]}" in line for line in asha_grid["log"])
        else:
            assert rec["status"] == "done" and rec["epochs_done"] == 3
    results = (out / "results.csv").read_text()
    assert results.count(",stopped,") == len(expected)


def test_a_resumed_asha_grid_equals_an_uninterrupted_one(asha_grid, small_data, tmp_path):
    """Ctrl-C after the third trial's first epoch (before it is judged), then --resume: every trial
    ends as in the uninterrupted grid, with the same epochs."""
    out = tmp_path / "grid"
    third = TRIALS[2]
    import alexnet_tiny.grid as grid_module

    original = grid_module.run_trials

    def interrupt_third(group, dataset, outs, device, engine, options):
        if third in group:
            options = dataclasses.replace(options, callback=stop_after(1))
        return original(group, dataset, outs, device, engine, options)

    grid_module.run_trials = interrupt_third
    try:
        with pytest.raises(KeyboardInterrupt):
            run_grid(TRIALS, out, data=small_data, device="cpu", progress=False, log=quiet, scheduler=ASHA,
                     estimate=False)
    finally:
        grid_module.run_trials = original
    assert statuses(out)[third.name()] == "running"
    run_grid(TRIALS, out, data=small_data, device="cpu", resume=True, progress=False, log=quiet, scheduler=ASHA,
             estimate=False)
    reference = asha_grid["out"]
    assert statuses(out) == statuses(reference)
    for t in TRIALS:
        assert (without_timing(runlog.read_metrics(out / t.name()))
                == without_timing(runlog.read_metrics(reference / t.name())))


def test_resume_with_other_scheduler_settings_is_refused(asha_grid, small_data):
    with pytest.raises(UserError, match="resume it with the same --scheduler"):
        run_grid(TRIALS, asha_grid["out"], data=small_data, device="cpu", resume=True, progress=False, log=quiet,
                 scheduler={**ASHA, "reduction_factor": 3.0}, estimate=False)


def test_a_budget_lets_an_epoch_start_only_if_the_last_one_says_it_fits(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    budget = Budget(60)
    assert budget.allows_epoch()  # no epoch measured yet: the first one starts
    now[0] += 25
    budget.spent(25)
    assert budget.allows_epoch()  # 25 s used, 25 more fit in the 60
    now[0] += 25
    budget.spent(25)
    assert not budget.allows_epoch() and budget.reached  # 50 s used: another 25 would end at 75
    now[0] -= 50
    assert not budget.allows_epoch()  # once reached, it stays reached
    assert UNLIMITED.allows_epoch() and not UNLIMITED.reached


def test_time_budget_ends_the_grid_resumable(asha_grid, small_data, tmp_path):
    """A budget already spent before the first epoch: nothing trains, the grid ends saying so;
    --resume without a budget then finishes it as the uninterrupted grid."""
    out = tmp_path / "grid"
    lines = []
    run_grid(TRIALS, out, data=small_data, device="cpu", progress=False, log=lines.append, scheduler=ASHA,
             estimate=False, time_budget=1e-6)
    assert [r["status"] for r in collect_results(out, TRIALS)] == ["running", "pending", "pending", "pending"]
    assert runlog.read_config(out / TRIALS[0].name())["epochs_done"] == 0
    assert any("time budget of 0 s reached; 4 trial(s) unfinished, continue with --resume" in line for line in lines)
    run_grid(TRIALS, out, data=small_data, device="cpu", resume=True, progress=False, log=quiet, scheduler=ASHA,
             estimate=False)
    assert statuses(out) == statuses(asha_grid["out"])


def test_cli_grid_with_asha_and_a_budget(small_data, tmp_path):
    """The flags through the real CLI; a budget spent before the first epoch keeps it short."""
    toml = tmp_path / "g.toml"
    toml.write_text("preset = 'quick'\nlr = [0.004, 1e-7]\nepochs = [4]\nbatch_size = [32]\n" + LEARNS_AT_ONCE_TOML)
    out = tmp_path / "grid"
    proc = run_cli("grid", "--config", toml, "--data", small_data, "--out", out, "--no-report", "-q",
                   "--scheduler", "asha", "--time-budget", "0.001s", check=True)
    assert "ASHA judges trials at epochs 1, 2 (reduction factor 2)" in proc.stderr
    assert "time budget of 0 s reached; 2 trial(s) unfinished, continue with --resume" in proc.stderr
    assert proc.stdout.startswith(f"grid {out}: 2 trials (1 unfinished, 1 pending)")
    assert json.loads((out / runlog.GRID_FILE).read_text())["scheduler"] == {
        "scheduler": "asha", "grace_period": 1, "reduction_factor": 2.0, "max_t": 4}
    bad = run_cli("grid", "--config", toml, "--data", small_data, "--out", tmp_path / "g2", "--time-budget", "soon")
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("alexnet-tiny grid: error: --time-budget soon: expected a duration > 0 such as "
                                  "300, 300s, 5m or 1.5h")
