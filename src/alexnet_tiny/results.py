"""A grid's results, in one place for the grid, the Ray backend, the CLI and the report: the best
trial (by validation accuracy alone, never test), results.csv / results.md, and how values print.

Hyperparameters print exactly (`repr`: 1e-05, 5e-05, 0.0123456789, as the trial names write them
up to six significant digits); metrics print with four decimals and seconds with one.
"""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from . import runlog
from .config import HYPERPARAMETERS, TrainConfig, describe, inert_fields
from .files import atomic_path

RESULTS_CSV, RESULTS_MD = "results.csv", "results.md"
# A trial's results as its config.json records them (runfolder.py decides the best epoch, once: the
# first epoch reaching the highest validation accuracy, whose weights are the ones in best.pt).
RUN_METRICS = ["epochs_done", "best_val_accuracy", "best_epoch", "test_accuracy_at_best", "final_train_loss",
               "status", "seconds", "reason"]
RESULT_COLUMNS = ["trial", *HYPERPARAMETERS, *RUN_METRICS]
FOUR_DIGITS = ("best_val_accuracy", "test_accuracy_at_best", "final_train_loss")


def format_value(v, key: str | None = None) -> str:
    """A table cell: metrics (FOUR_DIGITS) to four decimals, seconds to one, everything else exactly."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if key in FOUR_DIGITS else f"{v:.1f}" if key == "seconds" else repr(v)
    return str(v)


def collect_results(out: Path, trials: list[TrainConfig], runs: dict[str, Path] | None = None) -> list[dict]:
    """One row per trial of a grid folder, from each run folder's config.json (`runs`: the grid's
    runlog.run_folders, when the caller has it)."""
    runs = runs or runlog.run_folders(out, trials)
    rows = []
    for t in trials:
        run = runs[t.name()]
        rows.append({"trial": run.name, **t.to_dict(), **run_metrics(runlog.read_config(run))})
    return rows


def run_metrics(record: dict | None, status: str = "pending") -> dict:
    """The RUN_METRICS of a run folder's config.json record (`status` when there is none)."""
    record = record or {}
    return {**{key: record.get(key) for key in RUN_METRICS}, "status": record.get("status", status)}


def best_row(rows: list[dict], finished_only: bool = True) -> dict | None:
    """Best trial by validation accuracy alone (never test); ties go to the earlier trial. Only
    finished trials (status done, or stopped early by the scheduler) count unless `finished_only`
    is False. When a configuration was run more than once (seeds, seed_groups), the choice is made
    on configurations, by their mean validation accuracy, and the best run of that one is returned."""
    scored = [r for r in rows if r.get("best_val_accuracy") is not None
              and (r["status"] in runlog.SCORED or not finished_only)]
    best = max(scored, key=lambda r: r["best_val_accuracy"], default=None)
    groups = seed_groups(scored) if finished_only else []
    if best is not None and any(len(g["runs"]) > 1 for g in groups):
        top = {run["trial"] for run in max(groups, key=lambda g: g["best_val_accuracy"]["mean"])["runs"]}
        best = max((r for r in scored if r["trial"] in top), key=lambda r: r["best_val_accuracy"])
    return best


def summary(rows: list[dict]) -> str:
    """"4 trials (3 done, 1 diverged)"-style counts; a trial whose record still says running, once its
    grid has returned, is unfinished (--resume continues it)."""
    said = [r["status"] if r["status"] != runlog.STATUS_RUNNING else "unfinished" for r in rows]
    counts = {s: said.count(s) for s in dict.fromkeys(said)}
    return f"{len(rows)} trial{'s' * (len(rows) != 1)} ({', '.join(f'{n} {s}' for s, n in counts.items())})"


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


GROUP_METRICS = ("best_val_accuracy", "test_accuracy_at_best", "minutes")


def seed_groups(rows: list[dict]) -> list[dict]:
    """The done trials that differ only in their seed (and in fields their schedule never reads,
    config.inert_fields: replicates too), as one configuration each (in the order they first appear):
    its label (config.describe), its runs ({seed, trial, and GROUP_METRICS}: best validation accuracy,
    test accuracy at that epoch, and minutes, the epochs' training and evaluation seconds), the mean
    and sample standard deviation (None for one seed) of each metric, and `inert`: the fields in which
    its runs differ with no effect, each with the reason."""
    groups: dict[tuple, dict] = {}
    members: dict[tuple, dict] = {}  # each group's first row
    for r in rows:
        if r.get("status") != runlog.STATUS_DONE or r.get("test_accuracy_at_best") is None or r.get("seconds") is None:
            continue
        inert = inert_fields(r)
        config = {h: r.get(h) for h in HYPERPARAMETERS if h != "seed" and h not in inert}
        key = tuple(map(repr, config.values()))
        group = groups.setdefault(key, {"label": describe(config), "config": config, "runs": [], "inert": {}})
        first = members.setdefault(key, r)
        group["inert"].update({h: reason for h, reason in inert.items() if r.get(h) != first.get(h)})
        group["runs"].append({"seed": r.get("seed"), "trial": r["trial"], "best_val_accuracy": r["best_val_accuracy"],
                              "test_accuracy_at_best": r["test_accuracy_at_best"], "minutes": r["seconds"] / 60})
    for g in groups.values():
        for key in GROUP_METRICS:
            values = [run[key] for run in g["runs"]]
            g[key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None}
    return list(groups.values())


def compares_configurations(groups: list[dict]) -> bool:
    """Worth a configurations table and figure: more than one configuration, or one over seeds."""
    return len(groups) > 1 or any(len(g["runs"]) > 1 for g in groups)


def format_spread(stat: dict, percent: bool = True) -> str:
    """"61.3 ± 2.1%" (or "61.3%" for one seed); minutes as "13.9 ± 0.2"."""
    scale, unit = (100, "%") if percent else (1, "")
    mean, sd = scale * stat["mean"], None if stat["sd"] is None else scale * stat["sd"]
    return f"{mean:.1f}{unit}" if sd is None else f"{mean:.1f} ± {sd:.1f}{unit}"


def grid_map(rows: list[dict]) -> dict | None:
    """The grid as a picture's data: best validation accuracy (the highest among finished trials,
    whatever else differs) over the two hyperparameters with the most distinct values (seed aside;
    ties in HYPERPARAMETERS order), one panel per value of a third when there is one. None when
    fewer than two hyperparameters vary, or when the trials fill under half of the map's cells."""
    finished = [r for r in rows if r.get("status") in runlog.SCORED]
    known = [r for r in rows if r.get("lr") is not None]
    values = {h: sorted({r[h] for r in known}, key=lambda v: (str(type(v)), v)) for h in HYPERPARAMETERS if h != "seed"}
    varying = sorted((h for h in values if len(values[h]) > 1), key=lambda h: -len(values[h]))
    if len(varying) < 2:
        return None
    x, y, *rest = varying
    panel_key = rest[0] if rest else None
    cells = len(values[x]) * len(values[y]) * (len(values[panel_key]) if panel_key else 1)
    if cells > 2 * len(known):  # not a grid (a random search's draws): a map of mostly empty cells says nothing
        return None
    panels = []
    for p in (values[panel_key] if panel_key else [None]):
        cells = [[max((r["best_val_accuracy"] for r in finished if r[x] == xv and r[y] == yv
                       and (panel_key is None or r[panel_key] == p) and r.get("best_val_accuracy") is not None),
                      default=None) for xv in values[x]] for yv in values[y]]
        panels.append({"title": f"{panel_key} = {format_value(p)}" if panel_key else "", "x": values[x],
                       "y": values[y], "values": cells})
    return {"x": x, "y": y, "panel": panel_key, "panels": panels}
