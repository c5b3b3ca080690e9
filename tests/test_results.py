"""results.py: the best trial is chosen on validation alone, counts read as a person says them, and
the tables are written whole."""
from __future__ import annotations

import csv

from alexnet_tiny import runlog
from alexnet_tiny.config import PRESETS
from alexnet_tiny.results import RESULTS_CSV, RESULTS_MD, best_row, collect_results, summary, write_results


def row(trial: str, val, test, status="done") -> dict:
    return {"trial": trial, "best_val_accuracy": val, "test_accuracy_at_best": test, "status": status}


def test_the_best_trial_is_chosen_on_validation_never_test():
    rows = [row("a", 0.50, 0.90), row("b", 0.60, 0.10), row("c", 0.60, 0.95), row("d", 0.99, 0.99, "running")]
    assert best_row(rows)["trial"] == "b"  # highest val; the tie goes to the earlier trial; c's test does not count
    assert best_row(rows, finished_only=False)["trial"] == "d"
    assert best_row(rows + [row("e", 0.70, 0.5, "stopped")])["trial"] == "e"  # stopped by ASHA: finished, scored
    assert best_row([row("x", None, None, "pending")]) is None


def test_results_of_a_grid_folder(tmp_path):
    trials = [PRESETS["quick"].replace(lr=lr) for lr in (0.004, 0.001, 0.016)]
    runlog.write_config(tmp_path / trials[0].name(), {"status": "done", "best_val_accuracy": 0.4, "best_epoch": 5,
                                                      "test_accuracy_at_best": 0.38, "epochs_done": 5})
    runlog.write_config(tmp_path / trials[2].name(), {"status": "stopped", "best_val_accuracy": 0.1, "best_epoch": 1,
                                                      "test_accuracy_at_best": 0.1, "epochs_done": 1})
    rows = collect_results(tmp_path, trials)
    assert [r["status"] for r in rows] == ["done", "pending", "stopped"]
    assert summary(rows) == "3 trials (1 done, 1 pending, 1 stopped)"
    write_results(tmp_path, rows)
    with open(tmp_path / RESULTS_CSV, newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["trial"] for r in written] == [t.name() for t in trials] and written[0]["best_val_accuracy"] == "0.4"
    md = (tmp_path / RESULTS_MD).read_text().splitlines()
    assert md[2].startswith("| **best** |") and not md[3].startswith("| **best**")
    assert not list(tmp_path.glob(".*.tmp-*"))
