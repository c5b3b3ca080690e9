"""A grid's results, in one place for the grid, the Ray backend, the CLI and the report: the best
trial (by validation accuracy alone, never test), results.csv / results.md, and how values print.

Hyperparameters print exactly (`repr`: 1e-05, 5e-05, 0.0123456789, as the trial names write them
up to six significant digits); metrics print with four decimals and seconds with one.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from . import runlog
from .config import HYPERPARAMETERS, TrainConfig
from .data import atomic_path

RESULTS_CSV, RESULTS_MD = "results.csv", "results.md"
RESULT_COLUMNS = ["trial", *HYPERPARAMETERS, "best_val_accuracy", "best_epoch", "test_accuracy_at_best",
                  "final_train_loss", "status", "seconds", "reason"]
FOUR_DIGITS = ("best_val_accuracy", "test_accuracy_at_best", "final_train_loss")


def format_value(v, key: str | None = None) -> str:
    """A table cell: metrics (FOUR_DIGITS) to four decimals, seconds to one, everything else exactly."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if key in FOUR_DIGITS else f"{v:.1f}" if key == "seconds" else repr(v)
    return str(v)


def collect_results(out: Path, trials: list[TrainConfig]) -> list[dict]:
    """One row per trial of a grid folder, from each run folder's config.json."""
    rows = []
    for t in trials:
        rec = runlog.read_config(out / t.name()) or {"status": "pending"}
        row = {"trial": t.name(), **t.to_dict()}
        for key in RESULT_COLUMNS[len(row):]:
            row[key] = rec.get(key)
        row["status"] = rec.get("status", "pending")
        rows.append(row)
    return rows


def best_row(rows: list[dict], finished_only: bool = True) -> dict | None:
    """Best trial by validation accuracy alone (never test); ties go to the earlier trial. Only
    finished trials (status done, or stopped early by the scheduler) count unless `finished_only`
    is False."""
    scored = [r for r in rows if r.get("best_val_accuracy") is not None
              and (r["status"] in (runlog.STATUS_DONE, runlog.STATUS_STOPPED) or not finished_only)]
    return max(scored, key=lambda r: r["best_val_accuracy"], default=None)


def summary(rows: list[dict]) -> str:
    """"4 trials (3 done, 1 diverged)"-style counts."""
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    return f"{len(rows)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())})"


def write_results(out: Path, rows: list[dict], columns: list[str] = RESULT_COLUMNS, best: dict | None = None) -> None:
    """results.csv and results.md (best trial marked); the report writes its own table through here too."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    with atomic_path(out / RESULTS_CSV) as tmp:
        tmp.write_text(buf.getvalue())
    best = best or best_row(rows)
    cols = [c for c in columns if c not in ("trial", "best")]
    lines = ["| best | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        mark = "**best**" if best is not None and r["trial"] == best["trial"] else ""
        lines.append(f"| {mark} | " + " | ".join(format_value(r[c], c) for c in cols) + " |")
    with atomic_path(out / RESULTS_MD) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
