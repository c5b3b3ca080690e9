"""The study's report, from what training wrote: TensorBoard scalars, config.json and best.pt.

    <out>/index.html              the page: summary, table, hyperparameters, every figure (relative links)
    <out>/results.md, .csv        one row per trial, the best (by validation accuracy) marked
    <out>/results_table.png       the same table as an image
    <out>/learning_curves.png     train/val loss and accuracy per epoch, every trial, best highlighted
    <out>/per_class_accuracy.png  the best trial's test accuracy per class, sorted
    <out>/confusion_matrix.png    the best trial's test confusion matrix
    <out>/sample_predictions.png  test images captioned "predicted / true", green right, red wrong
    <out>/conv1_kernels.png       the best trial's 64 first-layer kernels, beside the worst trial's or the initial ones
    <out>/top5.png                8 test images (right and wrong) with their top-5 probabilities
    <out>/nearest_neighbours.png  6 test images and the training images nearest them in FC2's feature space
    <out>/grad_cam.png            class-activation maps (Grad-CAM, last conv layer) over 8 test images
    <out>/grid_map.png            best validation accuracy over the two hyperparameters that vary most
    <out>/accuracy_vs_minutes.png configurations over seeds: mean test accuracy against minutes (when
                                  trials repeat a configuration with other seeds, or configurations differ)
    <out>/published.md            for trials of the seed preset: the original study's published table
                                  beside ours (published.py)
    <out>/report.json             all of the above as data, and what was missing

The table's results come from each run's config.json, as the grid's results.csv has them (the best
epoch is the one whose weights best.pt holds); the curves from the event files (tags from
runlog.TAGS), so they show what TensorBoard shows. The best trial's checkpoint is evaluated again on
the test split (for per-class accuracy, confusion and samples) and on official-val, which no trial ever saw, each also
with test-time flip averaging, reported beside the plain accuracy. Several folders (grids, runs) can
be reported on together, to compare presets or ablations: trials that differ only in their seed are
then summarised as one configuration (results.seed_groups).
"""
from __future__ import annotations

import datetime
import html
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import explain, figures, published, runlog
from .checkpoint import load_checkpoint
from .config import HYPERPARAMETERS, TrainConfig
from .data import OFFICIAL_VAL, Split, atomic_path, load_dataset, write_json
from .device import resolve_device
from .errors import UserError
from .evaluate import SavedModel, evaluation, output_names, per_class_rows
from .results import (RESULT_COLUMNS, RUN_METRICS, best_row, format_spread, format_value, grid_map, run_metrics,
                      seed_groups, write_results)


DEFAULTS = TrainConfig().to_dict()
REPORT_DIR = "report"
REPORT_JSON = "report.json"
PUBLISHED_MD = "published.md"
FIGURES = {"table": "results_table.png", "curves": "learning_curves.png", "per_class": "per_class_accuracy.png",
           "confusion": "confusion_matrix.png", "samples": "sample_predictions.png",
           "kernels": "conv1_kernels.png", "top5": "top5.png", "neighbours": "nearest_neighbours.png",
           "cam": "grad_cam.png", "grid_map": "grid_map.png", "accuracy_vs_minutes": "accuracy_vs_minutes.png"}
ARRAYS = ("sample_images", "pictures")  # evaluation entries for the figures only, not for report.json
METRIC_COLUMNS = [c for c in RUN_METRICS if c != "reason"]  # the table's columns; results.csv has them all
COLUMNS = ["best", *RESULT_COLUMNS]
HEADINGS = {"best_val_accuracy": "best val acc", "best_epoch": "best epoch", "test_accuracy_at_best": "test acc at best",
            "final_train_loss": "final train loss", "epochs_done": "epochs done"}


@dataclass
class Trial:
    name: str
    path: Path
    planned: dict | None = None  # its hyperparameters in grid.json, for a trial not started yet
    record: dict | None = None  # config.json
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metrics key -> [(epoch, value)]

    @property
    def hyperparameters(self) -> dict:
        """Its configuration; fields a run recorded before they existed take their defaults, which
        is what it ran with (dropout 0.5, init torch, ...)."""
        config = (self.record or {}).get("config") or self.planned or {}
        return {**DEFAULTS, **config} if config else {}


# ----------------------------------------------------------------------------- reading runs

def find_all_trials(runs_dirs: list[Path]) -> list[Trial]:
    """The trials of every folder, in order; a trial name that repeats is prefixed with its folder's
    name, and numbered when that still repeats (the same folder twice, two grids of one name)."""
    trials = [t for d in runs_dirs for t in find_trials(d)]
    names = [t.name for t in trials]
    for t in trials:
        if names.count(t.name) > 1:
            t.name = f"{t.path.parent.name}/{t.name}"
    seen: dict[str, int] = {}
    for t in trials:
        seen[t.name] = seen.get(t.name, 0) + 1
        if seen[t.name] > 1:
            t.name = f"{t.name} ({seen[t.name]})"
    return trials


def find_trials(runs_dir: Path) -> list[Trial]:
    """The trials of a grid (in grid.json order when there is one), or the folder itself when it is
    a single run."""
    if (runs_dir / runlog.CONFIG_FILE).exists() or _event_files(runs_dir):
        return [Trial(runs_dir.name, runs_dir)]
    grid_file = runs_dir / runlog.GRID_FILE
    if grid_file.exists():
        try:
            return [Trial(t["name"], runs_dir / t["name"], planned=t.get("config"))
                    for t in json.loads(grid_file.read_text())["trials"]]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{grid_file}: not a grid description ({e.__class__.__name__}: {e})") from None
    return [Trial(p.name, p) for p in sorted(runs_dir.iterdir())
            if p.is_dir() and ((p / runlog.CONFIG_FILE).exists() or _event_files(p))]


def _event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*"))


def load_trial(trial: Trial, missing: list[str]) -> Trial:
    """Fill in the trial's config.json and TensorBoard scalars; note what is missing."""
    path = trial.path
    if not path.is_dir():
        missing.append(f"trial {path.name}: not started (no run folder)")
        return trial
    try:
        trial.record = runlog.read_config(path)
        if trial.record is None:
            missing.append(f"trial {path.name}: no {runlog.CONFIG_FILE} (hyperparameters and results unknown)")
    except UserError as e:
        missing.append(f"trial {path.name}: {e}")
    if not _event_files(path):
        missing.append(f"trial {path.name}: no TensorBoard event file (no metrics or curves)")
        return trial
    by_tag = runlog.read_scalars(path)
    # keep the last value logged for each epoch
    trial.scalars = {key: sorted(dict(by_tag[tag]).items()) for key, tag in runlog.TAGS.items() if tag in by_tag}
    if not trial.scalars:
        missing.append(f"trial {path.name}: its event files hold no scalars")
    return trial


def trial_row(trial: Trial) -> dict:
    """One table row, as the grid's results.csv has it: hyperparameters and results from config.json
    (the best epoch is the one whose weights best.pt holds; the scalars draw the curves)."""
    return {"best": "", "trial": trial.name, **{h: trial.hyperparameters.get(h) for h in HYPERPARAMETERS},
            **run_metrics(trial.record, "pending" if not trial.path.is_dir() else "unknown")}


def choose_best(rows: list[dict], missing: list[str]) -> dict | None:
    """The best trial by validation accuracy alone (never test), as grid.best_row chooses it; when no
    trial has finished, the best unfinished one, said so."""
    best = best_row(rows)
    if best is None:
        best = best_row(rows, finished_only=False)
        if best is not None:
            missing.append(f"no trial finished: showing the best unfinished trial, {best['trial']} ({best['status']})")
    return best


def varying_hyperparameters(configs: list[dict]) -> list[str]:
    """The hyperparameters that differ between the trials whose configuration is known."""
    known = [c for c in configs if c]
    return [h for h in HYPERPARAMETERS if len({repr(c.get(h)) for c in known}) > 1]


def trial_labels(trials: list[Trial]) -> dict[str, str]:
    """Short labels from the hyperparameters that differ between trials ("lr=0.01, momentum=0.9")."""
    varying = varying_hyperparameters([t.hyperparameters for t in trials])
    labels = {}
    for t in trials:
        parts = [f"{h}={format_value(t.hyperparameters.get(h))}" for h in varying]
        labels[t.name] = ", ".join(parts) if parts and t.hyperparameters else t.name
    repeated = [label for label in labels.values() if list(labels.values()).count(label) > 1]
    for name, label in labels.items():  # the same configuration in two folders: one curve each, told apart
        if label in repeated:
            labels[name] = f"{label} [{name}]"
    return labels


# ----------------------------------------------------------------------------- the published study

def trial_dataset(trial: Trial, data) -> Path:
    return Path(data) if data is not None else Path((trial.record or {}).get("dataset", {}).get("root", ""))


def open_checkpoint(path: Path, root: Path, device: str, progress: bool, missing: list[str]):
    """(SavedModel, Dataset) of a trial's checkpoint and the dataset it was trained on, or None with
    the reason added to `missing` (another split or other classes are refused, as everywhere)."""
    try:
        saved = SavedModel(path, resolve_device(device))
        dataset = load_dataset(root, progress=progress)
        saved.check_classes(dataset)
    except UserError as e:
        missing.append(str(e))
        return None
    return saved, dataset


def final_train_accuracy(trial: Trial, data, device: str, progress: bool, missing: list[str]) -> float | None:
    """The last checkpoint's accuracy on the training images in evaluation mode, each image flipped
    with probability 1/2 (seeded): the study's "train" column, measured as its notebook measured it."""
    path = trial.path / runlog.LAST_CKPT
    root = trial_dataset(trial, data)
    if not path.exists() or not (root / "dataset.json").exists():
        missing.append(f"trial {trial.name}: no {runlog.LAST_CKPT} or dataset {root}: no final train accuracy")
        return None
    opened = open_checkpoint(path, root, device, progress, missing)
    if opened is None:
        return None
    saved, dataset = opened
    train = dataset.splits["train"]
    flips = torch.rand(len(train), generator=torch.Generator().manual_seed(0)) < 0.5
    images = torch.where(flips.view(-1, 1, 1, 1), train.images.flip(3), train.images)
    return saved.evaluate(Split(images, train.labels, train.files), dataset.num_classes).accuracy


def compare_published(trials: list[Trial], rows: list[dict], data, device: str, progress: bool, log,
                      missing: list[str]) -> dict | None:
    """The published table beside our trials of the seed preset (None when there are none)."""
    ours = []
    for t, row in zip(trials, rows):
        if not published.is_seed_trial(t.hyperparameters) or not row.get("epochs_done"):
            continue
        log(f"report: final train accuracy of {t.name} (evaluation mode, as the study measured it)")
        final = {s: (t.scalars.get(f"{s}_accuracy") or [(None, None)])[-1][1] for s in ("val", "test")}
        final["train"] = final_train_accuracy(t, data, device, progress, missing)
        ours.append({"trial": t.name, "config": t.hyperparameters, "epochs_done": row["epochs_done"], "final": final,
                     "best": {"epoch": row["best_epoch"], "val": row["best_val_accuracy"],
                              "test": row["test_accuracy_at_best"]}})
    return published.compare(ours) if ours else None


# ----------------------------------------------------------------------------- the best checkpoint

def evaluate_best(trial: Trial, data, samples: int, seed: int, device: str, progress: bool,
                  missing: list[str]) -> dict | None:
    """Test and official-val evaluation of the trial's best.pt, and a seeded sample of test images,
    with the checkpoint's own preprocessing and in the precision it was trained and selected in."""
    path = trial.path / runlog.BEST_CKPT
    if not path.exists():
        missing.append(f"trial {trial.name}: no {runlog.BEST_CKPT} (no per-class accuracy, confusion matrix, "
                       f"samples or official-val accuracy)")
        return None
    root = trial_dataset(trial, data)
    if not (root / "dataset.json").exists():
        missing.append(f"dataset {root}: not found (recorded in {trial.path / runlog.CONFIG_FILE}); "
                       f"pass --data to evaluate the best checkpoint")
        return None
    opened = open_checkpoint(path, root, device, progress, missing)
    if opened is None:
        return None
    saved, dataset = opened
    test_split = dataset.splits["test"]
    test_logits, test_flipped = saved.logits_with_flip(test_split.images)  # each image and its mirror once
    test = evaluation(test_logits, test_split.labels, dataset.num_classes)
    result = {"checkpoint": str(path), "epoch": saved.ckpt.get("epoch"), "precision": saved.precision,
              "dataset": str(root), "names": dataset.names,
              "output_names": output_names(dataset.names, test_logits.shape[1]),
              "test": {"images": len(test_split), "loss": test.loss, "accuracy": test.accuracy,
                       "flip_accuracy": evaluation(test_flipped, test_split.labels, dataset.num_classes).accuracy,
                       "per_class": per_class_rows(dataset, test), "confusion": test.confusion.tolist()},
              "official_val": None, "samples": [], "classes": dataset.num_classes}
    official = dataset.splits[OFFICIAL_VAL]
    if len(official):
        logits, flipped = saved.logits_with_flip(official.images)
        ev = evaluation(logits, official.labels, dataset.num_classes)
        result["official_val"] = {"images": len(official), "loss": ev.loss, "accuracy": ev.accuracy,
                                  "flip_accuracy": evaluation(flipped, official.labels, dataset.num_classes).accuracy}
    else:
        missing.append(f"dataset {root}: no {OFFICIAL_VAL} images (the source had no val/val_annotations.txt)")
    chosen = torch.randperm(len(test_split), generator=torch.Generator().manual_seed(seed))[:samples]
    if len(chosen):
        predicted = test_logits[chosen.to(test_logits.device)].argmax(1).cpu()
        result["samples"] = [{"file": test_split.files[i], "true": int(test_split.labels[i]), "predicted": int(p)}
                             for i, p in zip(chosen.tolist(), predicted.tolist())]
        result["sample_images"] = test_split.images[chosen].numpy()
    if len(test_split):
        result.update(explain.learned(saved, dataset, test_logits, seed))
    return result


def kernel_panels(best: dict, rows: list[dict], trials: list[Trial], missing: list[str]) -> tuple[list, dict]:
    """The best trial's conv1 kernels beside those of the worst finished trial (lowest best validation
    accuracy), or of its own initial weights when it is the only one, and then what training changed
    in it (learned minus initial: in a short run on 4,000 images conv1 moves little from its random
    start, so the learned kernels look like their start and the change shows what was learned)."""
    by_name = {t.name: t for t in trials}

    def kernels(row: dict):
        ckpt = load_checkpoint(by_name[row["trial"]].path / runlog.BEST_CKPT, mmap=True)
        return ckpt, ckpt["model"]["features.0.weight"]

    try:
        ckpt, best_kernels = kernels(best)
    except (UserError, KeyError) as e:
        missing.append(f"trial {best['trial']}: no conv1 kernels ({e})")
        return [], {}
    panels = [(f"best trial (val {best['best_val_accuracy']:.1%})", explain.conv1_kernels(best_kernels))]
    info = {"best": best["trial"], "compared_with": None, "change": False}
    others = [r for r in rows if r is not best and r["status"] in runlog.SCORED
              and r.get("best_val_accuracy") is not None and (by_name[r["trial"]].path / runlog.BEST_CKPT).exists()]
    if others:
        worst = min(others, key=lambda r: r["best_val_accuracy"])
        try:
            panels.append((f"worst finished trial (val {worst['best_val_accuracy']:.1%})",
                           explain.conv1_kernels(kernels(worst)[1])))
            info["compared_with"] = worst["trial"]
        except (UserError, KeyError) as e:
            missing.append(f"trial {worst['trial']}: no conv1 kernels ({e}); showing the initial weights instead")
    config = ckpt["config"]
    try:
        with torch.random.fork_rng():  # the global generator is the caller's
            initial = explain.initial_model(ckpt).features[0].weight.detach()
    except (KeyError, TypeError, ValueError) as e:
        missing.append(f"trial {best['trial']}: its initial weights cannot be redone ({e!r} in its config)")
        return panels, info
    if info["compared_with"] is None:
        panels.append((f"its initial weights (seed {config['seed']}, init {config.get('init', 'torch')})",
                       explain.conv1_kernels(initial)))
        info["compared_with"] = "initial weights"
    panels.append(("what training changed in the best trial (learned minus initial)",
                   explain.conv1_kernels(best_kernels - initial)))
    info["change"] = True
    return panels, info


# ----------------------------------------------------------------------------- writing

def table_view(rows: list[dict], trials: list[Trial]) -> tuple[list[str], list[list[str]], dict]:
    """(header, cells, fixed hyperparameters) for the PNG and HTML tables: hyperparameters that vary
    get a column, those shared by all trials are listed once instead."""
    configs = [t.hyperparameters for t in trials]
    varying = varying_hyperparameters(configs)
    known = next((c for c in configs if c), {})
    fixed = {h: known[h] for h in HYPERPARAMETERS if h not in varying and h in known}
    columns = ["best", *varying, *METRIC_COLUMNS] if varying else ["best", "trial", *METRIC_COLUMNS]
    header = [HEADINGS.get(c, c) if c != "best" else "" for c in columns]
    cells = [[("★" if r["best"] else "") if c == "best" else format_value(r[c], c) for c in columns] for r in rows]
    return header, cells, fixed


def draw_figures(out: Path, trials: list[Trial], rows: list[dict], best: dict | None, evaluation: dict | None,
                 runs_name: str, groups: list[dict], kernels: list, gridmap: dict | None) -> dict[str, str]:
    """Every figure that the data allows; returns {figure key: file name}. Stale ones are removed."""
    for name in FIGURES.values():
        (out / name).unlink(missing_ok=True)
    made = {}
    header, cells, fixed = table_view(rows, trials)
    best_index = next((i for i, r in enumerate(rows) if r["best"]), None)
    fixed_text = ", ".join(f"{k}={format_value(v)}" for k, v in fixed.items())
    subtitle = textwrap.fill(f"all trials: {fixed_text}", 120) if fixed_text else ""
    made["table"] = figures.results_table(header, cells, best_index, f"Results: {runs_name}", subtitle,
                                          out / FIGURES["table"]).name
    labels = trial_labels(trials)
    curves = {labels[t.name]: t.scalars for t in trials if t.scalars}
    if curves:
        stopped = {labels[t.name]: t.record["epochs_done"] for t in trials
                   if t.scalars and (t.record or {}).get("status") == runlog.STATUS_STOPPED}
        made["curves"] = figures.learning_curves(curves, labels[best["trial"]] if best else None,
                                                 out / FIGURES["curves"], stopped).name
    if evaluation is not None:
        label = labels[best["trial"]]
        test = evaluation["test"]
        made["per_class"] = figures.per_class_accuracy(
            [c["name"] for c in test["per_class"]], [c["accuracy"] for c in test["per_class"]],
            [c["images"] for c in test["per_class"]], test["accuracy"],
            f"Per-class test accuracy, best trial\n{textwrap.fill(label, 80)}", out / FIGURES["per_class"]).name
        made["confusion"] = figures.confusion_matrix(
            test["confusion"], evaluation["names"], f"Test confusion matrix, best trial\n{textwrap.fill(label, 70)}",
            out / FIGURES["confusion"]).name
        if evaluation["samples"]:
            names = evaluation["output_names"]
            made["samples"] = figures.sample_predictions(
                evaluation["sample_images"], [names[s["predicted"]] for s in evaluation["samples"]],
                [names[s["true"]] for s in evaluation["samples"]],
                [s["predicted"] == s["true"] for s in evaluation["samples"]], "Sample test images, best trial",
                out / FIGURES["samples"]).name
    if kernels:
        made["kernels"] = figures.conv1_kernels(kernels, "First-layer (conv1) kernels: 64 of 11 x 11 x 3, each scaled "
                                                "to its own range", out / FIGURES["kernels"]).name
    if evaluation is not None and "pictures" in evaluation:
        pictures, names = evaluation["pictures"], evaluation["names"]
        made["top5"] = figures.top5_bars(pictures["top5"], evaluation["top5"], "Top-5 predictions, best trial",
                                         out / FIGURES["top5"]).name
        made["neighbours"] = figures.nearest_neighbours(
            pictures["queries"], [q["true"] for q in evaluation["neighbours"]], pictures["neighbours"],
            [[n["class"] for n in q["neighbours"]] for q in evaluation["neighbours"]],
            [[n["distance"] for n in q["neighbours"]] for q in evaluation["neighbours"]],
            [[n["same_class"] for n in q["neighbours"]] for q in evaluation["neighbours"]],
            "Nearest training images in FC2's feature space", out / FIGURES["neighbours"]).name
        made["cam"] = figures.class_activation_maps(
            pictures["cam_images"], pictures["cams"], [f"{c['predicted']} / {c['true']}" for c in evaluation["cam"]],
            [c["right"] for c in evaluation["cam"]],
            "Class-activation maps, best trial (Grad-CAM for the predicted class; caption: predicted / true)",
            out / FIGURES["cam"]).name
    if gridmap is not None:
        made["grid_map"] = figures.grid_heatmap(gridmap["panels"], gridmap["x"], gridmap["y"],
                                                f"Best validation accuracy over {gridmap['x']} and {gridmap['y']}",
                                                out / FIGURES["grid_map"]).name
    if compares_configurations(groups):
        made["accuracy_vs_minutes"] = figures.accuracy_vs_minutes(
            groups, f"Test accuracy against minutes: {runs_name}\n(mean and standard deviation over seeds)",
            out / FIGURES["accuracy_vs_minutes"]).name
    return made


def compares_configurations(groups: list[dict]) -> bool:
    """Worth a configurations table and figure: more than one configuration, or one over seeds."""
    return len(groups) > 1 or any(len(g["runs"]) > 1 for g in groups)


PAGE_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:24px;
color:#1f2328;line-height:1.45}
h1{margin-bottom:4px}h2{margin-top:36px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.sub{color:#57606a;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #d0d7de;border-radius:8px;padding:10px 16px;min-width:150px}
.card b{display:block;font-size:1.6em}
.missing{background:#fff8c5;border:1px solid #d4a72c;border-radius:8px;padding:8px 16px}
table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right}
th{background:#f6f8fa}td.l,th.l{text-align:left}tr.best td{background:#fff1c2;font-weight:bold}
td.diag{background:#dff3e3;font-weight:bold}
.scroll{overflow-x:auto}img{max-width:100%;height:auto;border:1px solid #eaeef2;margin:8px 0}
code{background:#f6f8fa;padding:1px 4px;border-radius:4px}
"""


def _table_html(header: list[str], cells: list[list[str]], best_index: int | None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr{' class=best' if i == best_index else ''}>" +
                   "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for i, row in enumerate(cells))
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _hyperparameter_table(trials: list[Trial], best: dict | None) -> str:
    """One row per hyperparameter: the best trial's value, and the values across all trials."""
    configs = [t.hyperparameters for t in trials if t.hyperparameters]
    if not configs:
        return "<p><i>No trial's hyperparameters are known.</i></p>"
    chosen = next((t for t in trials if best and t.name == best["trial"]), None)
    rows = []
    for h in HYPERPARAMETERS:
        values = list(dict.fromkeys(format_value(c.get(h)) for c in configs))
        across = "same in every trial" if len(values) == 1 else ", ".join(values)
        mine = format_value(chosen.hyperparameters.get(h)) if chosen else ""
        rows.append(f'<tr><th class="l">{html.escape(h)}</th><td>{html.escape(mine)}</td>'
                    f'<td class="l">{html.escape(across)}</td></tr>')
    record = (chosen.record if chosen else None) or {}
    where = (f'<p class="sub">Best trial trained on {html.escape(str(record.get("device")))} with the dataset '
             f'<code>{html.escape(str(record.get("dataset", {}).get("root")))}</code>.</p>' if record else "")
    return ("<table><tr><th class=l>hyperparameter</th><th>best trial</th><th class=l>all trials</th></tr>"
            + "".join(rows) + "</table>" + where)


def _figure(made: dict, key: str, alt: str, caption: str) -> str:
    if key not in made:
        return f"<p><i>{html.escape(alt)}: not available (see “Missing” above).</i></p>"
    return f'<img src="{html.escape(made[key])}" alt="{html.escape(alt)}"><p class="sub">{html.escape(caption)}</p>'


def _configurations_html(groups: list[dict], made: dict) -> str:
    """The configurations over seeds as a table (numbers as text) and the accuracy-minutes figure."""
    e = html.escape
    head = "".join(f"<th{' class=l' if i == 0 else ''}>{h}</th>" for i, h in enumerate(
        ["configuration", "seeds", "best val accuracy", "test accuracy at best", "minutes per run"]))
    body = "".join(
        f'<tr><td class="l">{e(g["label"])}</td><td>{e(", ".join(str(r["seed"]) for r in g["runs"]))}</td>'
        f'<td>{e(format_spread(g["best_val_accuracy"]))}</td><td>{e(format_spread(g["test_accuracy_at_best"]))}</td>'
        f'<td>{e(format_spread(g["minutes"], percent=False))}</td></tr>' for g in groups)
    return (f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
            '<p class=sub>Trials that differ only in their seed, as one configuration: mean ± sample standard '
            'deviation over the seeds. Minutes: the epochs\' training and evaluation time.</p>'
            + _figure(made, "accuracy_vs_minutes", "test accuracy against minutes per run, one point per "
                      "configuration with its spread over seeds", "Pick a configuration by what its time buys."))


def _per_class_html(ev: dict | None) -> str:
    """Every class's test accuracy; for many classes sorted from worst to best, with its rank."""
    if not ev:
        return ""
    classes = ev["test"]["per_class"]
    many = len(classes) > figures.MANY_CLASSES
    order = sorted(range(len(classes)), key=lambda i: (classes[i]["accuracy"], i)) if many else range(len(classes))
    rows = "".join(f'<tr>{f"<td>{rank}</td>" if many else ""}<td class="l">{html.escape(classes[i]["name"])}</td>'
                   f'<td class="l">{html.escape(classes[i]["wnid"])}</td><td>{classes[i]["accuracy"]:.1%}</td>'
                   f'<td>{classes[i]["images"]}</td></tr>' for rank, i in enumerate(order, 1))
    sorted_note = "<p class=sub>Sorted from the worst class to the best.</p>" if many else ""
    return (f'{sorted_note}<div class="scroll"><table id="per-class"><tr>{"<th>rank</th>" if many else ""}'
            '<th class="l">class</th><th class="l">wnid</th><th>test accuracy</th>'
            f'<th>images</th></tr>{rows}</table></div>')


def _confusion_html(ev: dict | None) -> str:
    """The confusion matrix as a table; for many classes, its most confused pairs instead."""
    if not ev:
        return ""
    names = ev["names"]
    if len(names) > figures.MANY_CLASSES:
        rows = "".join(f'<tr><td class="l">{html.escape(names[t])}</td><td class="l">{html.escape(names[p])}</td>'
                       f"<td>{count}</td></tr>" for t, p, count in figures.most_confused(ev["test"]["confusion"], 50))
        return ('<table id="confused-pairs"><tr><th class="l">true class</th><th class="l">predicted as</th>'
                f"<th>test images</th></tr>{rows}</table>")
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(f'<tr><th class="l">{html.escape(names[t])}</th>' + "".join(
        f"<td{' class=diag' if t == p else ''}>{count}</td>" for p, count in enumerate(row)) + "</tr>"
        for t, row in enumerate(ev["test"]["confusion"]))
    return (f'<div class="scroll"><table id="confusion"><tr><th class="l">true \\ predicted</th>{head}</tr>{body}'
            '</table></div>')


def _learned_html(report: dict, made: dict) -> list[str]:
    """The AlexNet paper's figures 3 and 4 and Grad-CAM, each with its numbers in words."""
    ev, kernels = report["evaluation"], report.get("kernels") or {}
    change = kernels.get("change")
    parts = ["<h2>What the network learned</h2>", "<h3>First-layer kernels</h3>",
             _figure(made, "kernels", f"the 64 conv1 kernels of the best trial beside those of "
                     f"{kernels.get('compared_with') or 'no other trial'}"
                     + (", and what training changed in them" if change else ""),
                     "Each 11 x 11 x 3 kernel scaled to its own range (the AlexNet paper's figure 3)."
                     + (" From a random start conv1 can move little in a short run; the learned-minus-initial "
                        "panel shows what it learned." if change else ""))]
    if ev and "top5" in ev:
        right = sum(t["indices"][0] == t["true_index"] for t in ev["top5"])
        k = len(ev["top5"][0]["classes"]) if ev["top5"] else 0
        parts += ["<h3>Top-5 predictions</h3>",
                  _figure(made, "top5", f"{len(ev['top5'])} test images ({right} right, {len(ev['top5']) - right} "
                          f"wrong) with bars of their {k} most probable classes",
                          "The paper's figure 4, left: the true class's bar green, a wrong first guess red.")]
        same = sum(n["same_class"] for q in ev["neighbours"] for n in q["neighbours"])
        total = sum(len(q["neighbours"]) for q in ev["neighbours"])
        parts += ["<h3>Nearest neighbours in feature space</h3>",
                  _figure(made, "neighbours", f"{len(ev['neighbours'])} test images, each beside its nearest training "
                          f"images by FC2 features; {same} of {total} neighbours share the test image's class",
                          "The paper's figure 4, right: Euclidean distance between the outputs of the second fully "
                          "connected layer (4,096 in AlexNet), after its ReLU."),
                  "<h3>Class-activation maps</h3>",
                  _figure(made, "cam", f"Grad-CAM heat maps over {len(ev['cam'])} test images, right and wrong",
                          "Grad-CAM on the last conv layer for the predicted class: red where the evidence for it "
                          "lies. Also for your own photo: alexnet-tiny predict CHECKPOINT IMAGE --cam OUT.png.")]
    return parts


def _grid_map_html(gridmap: dict | None, made: dict) -> list[str]:
    if not gridmap:
        return []
    return ["<h3>The grid as a picture</h3>",
            _figure(made, "grid_map", f"heat map of the best validation accuracy over {gridmap['x']} and "
                    f"{gridmap['y']}" + (f", one panel per {gridmap['panel']}" if gridmap["panel"] else ""),
                    "Each cell: the best validation accuracy among the finished trials with those values "
                    "(report.json: grid_map).")]


def _published_html(comparison: dict | None) -> list[str]:
    """The published table beside ours, with what the original runs did that a reader must know."""
    if not comparison:
        return []
    e = html.escape
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    head = ("<tr><th>lr</th><th>momentum</th><th>gamma</th><th>published train</th><th>val</th><th>test</th>"
            "<th>ours, final: train</th><th>val</th><th>test</th><th>epoch</th><th>test: ours − published</th>"
            "<th>2 SE</th><th>ours at best val: val</th><th>test</th><th>epoch</th></tr>")
    body = []
    for r in comparison["rows"]:
        cells = [r["lr"], r["momentum"], r["gamma"], *(pct(r["published"][s]) for s in ("train", "val", "test"))]
        if r["trial"] is None:
            cells += ["not run"] + [""] * 8
        else:
            d = r["difference"].get("test")
            cells += [*(pct(r["final"].get(s)) for s in ("train", "val", "test")), r["epochs_done"],
                      f"{100 * d['ours_minus_published']:+.1f}" + ("" if d["within_two_se"] else " (outside)") if d else "–",
                      f"±{200 * d['standard_error']:.1f}" if d else "–",
                      pct(r["best"]["val"]), pct(r["best"]["test"]), r["best"]["epoch"]]
        body.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    pairs = "; ".join(
        f"lr {p['lr']}, momentum {p['momentum']}: published {' and '.join(pct(v) for v in p['published_test'])}"
        + (f", ours {' and '.join(pct(v) for v in p['our_test'])}" if p["our_test"] else "")
        for p in comparison["pairs"])
    return ["<h2>The published study beside ours</h2>",
            f'<div class="scroll"><table id="published">{head}{"".join(body)}</table></div>',
            f"<p class=sub>Published: {e(comparison['source'])}; {e(comparison['measured'])}. Ours, final: the model "
            "after its last epoch, train accuracy in evaluation mode on the training images with random flips, as "
            "theirs. The difference is within what 500 test images allow when it is inside two standard errors (2 SE: "
            "two accuracies on 500 images each). Also as published.md.</p>",
            "<p><b>Gamma had no effect in the original runs.</b> Their StepLR(30, gamma) was stepped with the loss as "
            "its epoch, so the learning rate never moved: the two gammas of each lr and momentum are the same "
            "configuration trained twice from other random weights (ours: seeds 0 and 1). Their spread is the "
            f"run-to-run spread, in test accuracy: {e(pairs)}.</p>",
            f"<p><b>The original chose its best trial by test accuracy</b> ({e(comparison['selection'])}); this tool "
            "chooses by validation accuracy and reports test accuracy at that choice.</p>"]


def public_tiny_imagenet(evaluation: dict | None) -> dict | None:
    """At 200 classes: the best checkpoint's official-val and test accuracy beside public results."""
    if not evaluation:
        return None
    return published.tiny_imagenet_200(evaluation["classes"], (evaluation["official_val"] or {}).get("accuracy"),
                                       evaluation["test"]["accuracy"])


def _public_tiny_imagenet_html(public: dict | None) -> list[str]:
    if not public:
        return []
    e, pct = html.escape, lambda v: "–" if v is None else f"{v:.1%}"  # noqa: E731
    ours, (low, high) = public["ours"], public["range"]
    mine = ours["official_val"] if ours["official_val"] is not None else ours["test"]
    where = ("below" if mine < low else "above" if mine > high else "within") if mine is not None else None
    body = "".join(f"<tr><td>{e(r['source'])}</td><td>{e(r['model'])}</td><td>{e(r['split'])}</td>"
                   f"<td>{pct(r['top1'])}</td></tr>" for r in public["rows"])
    return ["<h2>Beside public results on Tiny ImageNet-200</h2>",
            f"<p>The best checkpoint: <b>{pct(ours['official_val'])}</b> top-1 on the official validation images, "
            f"{pct(ours['test'])} on the test split"
            + (f"; {where} the range of the public AlexNet-from-scratch results below ({pct(low)} to {pct(high)})"
               if where else "") +
            ". Their training (epochs, input size, augmentation) and evaluation splits differ from this run's and "
            "from each other's: a range to place the run in, not a target.</p>",
            '<div class="scroll"><table id="public-tiny-imagenet"><tr><th>source</th><th>model</th>'
            f"<th>evaluated on</th><th>top-1</th></tr>{body}</table></div>"]


def render_html(report: dict, rows: list[dict], trials: list[Trial], made: dict) -> str:
    e = html.escape
    best, ev = report["best"], report["evaluation"]
    header, cells, _ = table_view(rows, trials)
    best_index = next((i for i, r in enumerate(rows) if r["best"]), None)
    pct = lambda v: "–" if v is None else f"{v:.1%}"  # noqa: E731
    cards = [("trials", str(len(rows)))]
    if best:
        cards += [("best val accuracy", f"{pct(best['best_val_accuracy'])} (epoch {best['best_epoch']})"),
                  ("test accuracy at best", pct(best["test_accuracy_at_best"]))]
    if ev:
        cards.append((f"{OFFICIAL_VAL} accuracy", pct((ev["official_val"] or {}).get("accuracy"))))
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>alexnet-tiny report: {e(report['name'])}"
             f"</title><style>{PAGE_STYLE}</style></head><body>",
             f"<h1>alexnet-tiny report: {e(report['name'])}</h1>",
             f"<p class=sub>{e(report['runs_dir'])} · generated {e(report['generated'])}</p>"]
    if report["missing"]:
        parts.append("<div class=missing><b>Missing</b><ul>" +
                     "".join(f"<li>{e(m)}</li>" for m in report["missing"]) + "</ul></div>")
    parts.append("<div class=cards>" + "".join(f"<div class=card>{e(k)}<b>{e(v)}</b></div>" for k, v in cards) + "</div>")
    if best:
        parts.append(f"<p>Best trial, chosen by validation accuracy only: <code>{e(best['trial'])}</code>.</p>")
    if ev:
        parts.append(f"<p>The best checkpoint is evaluated in <b>{e(ev['precision'])}</b>, the precision its trial "
                     f"was trained and selected in{' (bf16 autocast)' if ev['precision'] == 'bf16' else ''}.</p>")
    if ev and ev["official_val"]:
        parts.append(f"<p>The best checkpoint (epoch {ev['epoch']}) scores <b>{pct(ev['official_val']['accuracy'])}</b> "
                     f"on the {ev['official_val']['images']} <code>{OFFICIAL_VAL}</code> images, which no trial "
                     f"used for training or selection; {pct(ev['test']['accuracy'])} on the "
                     f"{ev['test']['images']} test images; with test-time flip averaging (each image and its "
                     f"mirror image) {pct(ev['official_val']['flip_accuracy'])} on {OFFICIAL_VAL}.</p>")
    if ev:
        parts.append(f"<p>Test accuracy with test-time flip averaging: {pct(ev['test']['flip_accuracy'])} (plain: "
                     f"{pct(ev['test']['accuracy'])}); the table and the selection use plain accuracy.</p>")
    parts += ["<h2>Results</h2>", _table_html(header, cells, best_index),
              '<p class=sub>Also as <a href="results.csv">results.csv</a>, <a href="results.md">results.md</a> and '
              '<a href="results_table.png">results_table.png</a>; results from each trial&rsquo;s config.json, '
              'curves from its TensorBoard files.</p>',
              *_published_html(report.get("published")),
              *_public_tiny_imagenet_html(report.get("public_tiny_imagenet")),
              *_grid_map_html(report.get("grid_map"), made),
              *(["<h2>Configurations over seeds</h2>", _configurations_html(report["configurations"], made)]
                if compares_configurations(report["configurations"]) else []),
              "<h2>Learning curves</h2>",
              _figure(made, "curves", "learning curves", "Loss and accuracy per epoch for every trial; the best in red."),
              "<h2>Per-class test accuracy</h2>",
              _figure(made, "per_class", "per-class test accuracy of the best trial, as bars sorted from best to "
                      "worst (the same numbers as the table below)", "The best trial's checkpoint on the test split, "
                      "sorted; the dashed line is the overall accuracy."),
              _per_class_html(ev),
              "<h2>Confusion matrix</h2>",
              _figure(made, "confusion", "confusion matrix of the best trial on the test split (the same counts as "
                      "the table below)", "Rows: true class, columns: predicted class (test split)."),
              _confusion_html(ev),
              "<h2>Sample predictions</h2>",
              _figure(made, "samples", "sample test images captioned with predicted and true class",
                      f"{len(ev['samples']) if ev else 0} test images chosen with seed {report['seed']}; caption "
                      f"“predicted / true”, green when right, red when wrong."),
              *_learned_html(report, made),
              "<h2>Hyperparameters</h2>", _hyperparameter_table(trials, best)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(runs_dir: Path | str | list, out: Path | str | None = None, progress: bool = True, log=print,
                 data: Path | str | None = None, samples: int = 24, seed: int = 0, device: str = "auto") -> Path:
    """Write the report of a grid folder or a single run folder (or of several, together) into `out`
    (default RUNS_DIR/report; required for several); missing pieces are listed on the page and
    logged, not fatal. Returns `out`."""
    runs_dirs = [Path(d) for d in (runs_dir if isinstance(runs_dir, (list, tuple)) else [runs_dir])]
    for d in runs_dirs:
        if not d.is_dir():
            raise UserError(f"{d}: runs folder does not exist (expected a grid folder or a run folder)")
    if samples < 0:
        raise UserError(f"--samples {samples}: expected 0 or more")
    if out is None and len(runs_dirs) > 1:
        raise UserError(f"{len(runs_dirs)} runs folders: pass --out for their joint report")
    out = Path(out) if out is not None else runs_dirs[0] / REPORT_DIR
    if any(out.resolve() == d.resolve() for d in runs_dirs):
        raise UserError(f"--out {out}: is a runs folder of the report (its results.csv would be overwritten); "
                        f"choose a folder of its own (default RUNS_DIR/{REPORT_DIR})")
    out.mkdir(parents=True, exist_ok=True)
    missing: list[str] = []
    trials = find_all_trials(runs_dirs)
    where = ", ".join(map(str, runs_dirs))
    if not trials:
        missing.append(f"{where}: no trials found (no run folders with {runlog.CONFIG_FILE} or event files)")
    log(f"report: reading {len(trials)} trial(s) from {where}")
    trials = [load_trial(t, missing) for t in trials]
    rows = [trial_row(t) for t in trials]
    best = choose_best(rows, missing)
    if best is not None:
        best["best"] = "yes"
    evaluation = None
    if best is not None:
        trial = next(t for t in trials if t.name == best["trial"])
        log(f"report: evaluating {trial.path / runlog.BEST_CKPT} on test and {OFFICIAL_VAL}")
        evaluation = evaluate_best(trial, data, samples, seed, device, progress, missing)
    elif trials:
        missing.append("no trial has validation accuracy: no best trial, per-class accuracy or samples")
    for m in missing:
        log(f"report: missing: {m}")

    write_results(out, rows, columns=COLUMNS, best=best)
    comparison = compare_published(trials, rows, data, device, progress, log, missing)
    if comparison is not None:
        with atomic_path(out / PUBLISHED_MD) as tmp:
            tmp.write_text(published.format_markdown(comparison))
    groups = seed_groups(rows)
    gridmap = grid_map(rows)
    kernels, kernel_info = kernel_panels(best, rows, trials, missing) if evaluation is not None else ([], {})
    name = " + ".join(d.resolve().name for d in runs_dirs)
    made = draw_figures(out, trials, rows, best, evaluation, name, groups, kernels, gridmap)
    report = {"name": name, "runs_dir": where,
              "generated": datetime.datetime.now().isoformat(timespec="seconds"), "seed": seed,
              "trials": rows, "best": best, "configurations": groups, "grid_map": gridmap, "kernels": kernel_info,
              "figures": made, "missing": missing, "published": comparison,
              "public_tiny_imagenet": public_tiny_imagenet(evaluation),
              "evaluation": {k: v for k, v in evaluation.items() if k not in ARRAYS} if evaluation else None}
    write_json(out / REPORT_JSON, report)
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(render_html(report, rows, trials, made))
    return out


def summary_line(out: Path | str) -> str:
    """One line from a written report.json: where, how many trials, the best and its accuracies."""
    report = json.loads((Path(out) / REPORT_JSON).read_text())
    best, ev = report["best"], report["evaluation"]
    line = f"report {Path(out) / 'index.html'}: {len(report['trials'])} trial(s)"
    if best:
        line += f"; best {best['trial']}: val {best['best_val_accuracy']:.3f}"
        if ev:
            line += f", test {ev['test']['accuracy']:.3f}"
            if ev["official_val"]:
                line += f", {OFFICIAL_VAL} {ev['official_val']['accuracy']:.3f}"
    if report["missing"]:
        line += f"; {len(report['missing'])} missing piece(s), listed on the page"
    return line
