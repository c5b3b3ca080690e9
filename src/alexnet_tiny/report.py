"""The study's report, from what training wrote: TensorBoard scalars, config.json and best.pt.

    <out>/index.html              the page: summary, table, hyperparameters, every figure (relative links)
    <out>/results.md, .csv        one row per trial, the best (by validation accuracy) marked
    <out>/*.png                   the figures of page.FIGURES (each file and what it shows there)
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

import base64
import datetime
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import explain, figures, findings, page, published, runlog
from .checkpoint import load_checkpoint
from .config import HYPERPARAMETERS, TrainConfig
from .data import OFFICIAL_VAL, Split, load_dataset
from .files import atomic_path, folder_lock, remove_stale_temporaries, staged_folder, write_json
from .device import resolve_device
from .errors import UserError
from .evaluate import SavedModel, evaluation, output_names, per_class_rows
from .results import (RESULT_COLUMNS, RESULTS_CSV, RESULTS_MD, RUN_METRICS, best_row, compares_configurations, format_value, grid_map,
                      run_metrics, seed_groups, write_results)


DEFAULTS = TrainConfig().to_dict()
REPORT_DIR = "report"
REPORT_JSON = "report.json"
PUBLISHED_MD = "published.md"
FIGURES = {key: file for key, (file, _) in page.FIGURES.items()}  # key -> file name
REPORT_FILES = (RESULTS_CSV, RESULTS_MD, PUBLISHED_MD, *FIGURES.values(), REPORT_JSON, "index.html")
ARRAYS = ("sample_images", "pictures", "train_split")  # evaluation entries for the figures only, not for report.json
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


# ----------------------------------------------------------------------------- what the grid taught

def per_image_correctness(trials: list[Trial], rows: list[dict], data, device: str, progress: bool, log,
                          missing: list[str]) -> dict[str, dict[str, list[bool]]]:
    """Each scored trial's correctness on every val and test image at its best epoch: from the
    predictions.json that training wrote beside best.pt, else (a run of an earlier version) from
    evaluating its best.pt once here."""
    correct = {}
    for t, r in zip(trials, rows):
        if r.get("status") not in runlog.SCORED or r.get("best_epoch") is None:
            continue
        known = runlog.read_predictions(t.path, r["best_epoch"])
        if known is None:
            known = evaluate_correctness(t, r["best_epoch"], data, device, progress, log, missing)
        if known is not None:
            correct[t.name] = known
    return correct


def evaluate_correctness(trial: Trial, epoch: int, data, device: str, progress: bool, log,
                         missing: list[str]) -> dict[str, list[bool]] | None:
    path, root = trial.path / runlog.BEST_CKPT, trial_dataset(trial, data)
    if not path.exists() or not (root / "dataset.json").exists():
        missing.append(f"trial {trial.name}: no {runlog.PREDICTIONS_FILE}, and no {runlog.BEST_CKPT} or dataset to "
                       f"redo it: its accuracy gets an interval but no paired comparison")
        return None
    log(f"report: evaluating {path} on val and test (no {runlog.PREDICTIONS_FILE}: a run of an earlier version)")
    opened = open_checkpoint(path, root, device, progress, missing)
    if opened is None:
        return None
    saved, dataset = opened
    if saved.ckpt.get("epoch") != epoch:
        missing.append(f"trial {trial.name}: {runlog.BEST_CKPT} holds epoch {saved.ckpt.get('epoch')}, "
                       f"{runlog.CONFIG_FILE} says {epoch}: no paired comparison")
        return None
    splits = {name: dataset.splits[name] for name in runlog.PREDICTED_SPLITS}
    correct = {name: (saved.evaluate(split, dataset.num_classes).predicted == split.labels.cpu()).tolist()
               for name, split in splits.items()}
    return {**correct, "labels": {name: split.labels.tolist() for name, split in splits.items()}}


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
              "official_val": None, "samples": [], "classes": dataset.num_classes,
              "train_split": dataset.splits["train"]}  # the whitening of init whiten, for the kernels figure
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


def kernel_panels(best: dict, rows: list[dict], trials: list[Trial], missing: list[str],
                  train: Split | None = None) -> tuple[list, dict]:
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
            initial = explain.initial_model(ckpt, train).features[0].weight.detach()
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
                 runs_name: str, groups: list[dict], kernels: list, gridmap: dict | None, found: dict | None = None,
                 comparison: dict | None = None) -> dict[str, str]:
    """Every figure that the data allows; returns {figure key: file name}."""
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
    if found and (found["effects"] or found["steps"]):
        published_means, published_steps = {}, []
        for h in (published.MATCHED if comparison else ()):
            values = sorted({r[h] for r in comparison["rows"]})
            published_means[h] = [(v, sum(r["published"]["test"] for r in comparison["rows"] if r[h] == v) /
                                   sum(r[h] == v for r in comparison["rows"])) for v in values]
        if comparison:
            published_steps = [(r["lr"] / (1 - r["momentum"]), r["published"]["test"]) for r in comparison["rows"]]
        made["effects"] = figures.effects(found["effects"], published_means, found["interaction"], found["steps"],
                                          published_steps, f"What the grid taught: {runs_name}",
                                          out / FIGURES["effects"]).name
    if compares_configurations(groups):
        made["accuracy_vs_minutes"] = figures.accuracy_vs_minutes(
            groups, f"Test accuracy against minutes: {runs_name}\n(mean and standard deviation over seeds)",
            out / FIGURES["accuracy_vs_minutes"]).name
    return made


def public_tiny_imagenet(evaluation: dict | None) -> dict | None:
    """At 200 classes: the best checkpoint's official-val and test accuracy beside public results."""
    if not evaluation:
        return None
    return published.tiny_imagenet_200(evaluation["classes"], (evaluation["official_val"] or {}).get("accuracy"),
                                       evaluation["test"]["accuracy"])


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
    with folder_lock(out, "report folder"):
        remove_stale_temporaries(out)  # what a report of an earlier version killed inside a write left
        # The whole report is written beside `out` and renamed into it at the end: a report that fails
        # (a full disk, a figure that cannot be drawn, Ctrl-C) leaves the previous one whole.
        with staged_folder(out, replaces=REPORT_FILES) as stage:
            _write_report(runs_dirs, stage, progress, log, data, samples, seed, device)
    return out


def _write_report(runs_dirs: list[Path], out: Path, progress: bool, log, data, samples: int, seed: int,
                  device: str) -> None:
    """`write_report`'s files, into an empty folder `out`."""
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
    write_results(out, rows, columns=COLUMNS, best=best)
    comparison = compare_published(trials, rows, data, device, progress, log, missing)
    if comparison is not None:
        with atomic_path(out / PUBLISHED_MD) as tmp:
            tmp.write_text(published.format_markdown(comparison))
    groups = seed_groups(rows)
    correct = per_image_correctness(trials, rows, data, device, progress, log, missing)
    found = findings.find(rows, best, correct, groups, comparison)
    gridmap = grid_map(rows)
    kernels, kernel_info = (kernel_panels(best, rows, trials, missing, evaluation["train_split"])
                            if evaluation is not None else ([], {}))
    name = " + ".join(d.resolve().name for d in runs_dirs)
    made = draw_figures(out, trials, rows, best, evaluation, name, groups, kernels, gridmap, found, comparison)
    report = {"name": name, "runs_dir": where,
              "generated": datetime.datetime.now().isoformat(timespec="seconds"), "seed": seed,
              "findings": found, "trials": rows, "best": best, "configurations": groups, "grid_map": gridmap, "kernels": kernel_info,
              "figures": made, "missing": missing, "published": comparison,
              "public_tiny_imagenet": public_tiny_imagenet(evaluation),
              "evaluation": {k: v for k, v in evaluation.items() if k not in ARRAYS} if evaluation else None}
    for m in missing:
        log(f"report: missing: {m}")
    write_json(out / REPORT_JSON, report)
    with atomic_path(out / "index.html") as tmp:
        best_index = next((i for i, r in enumerate(rows) if r["best"]), None)
        tmp.write_text(page.render_html(report, (*table_view(rows, trials)[:2], best_index), trials, made))


class Report(dict):
    """A written report: its report.json as a dict, which displays itself in Jupyter (what the grid
    taught, with the effects figure, and the results table); `folder` holds index.html and the rest."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        path = self.folder / REPORT_JSON
        try:
            super().__init__(json.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"{path}: no report there (write one with write_report or `alexnet-tiny report`)") from None
        except ValueError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None

    @property
    def conclusions(self) -> list[str]:
        """What the grid taught, in words (empty when no trial was scored)."""
        return (self.get("findings") or {}).get("conclusions", [])

    def _repr_html_(self) -> str:
        inline = {}
        for key, name in self.get("figures", {}).items():
            if (self.folder / name).exists():
                inline[key] = "data:image/png;base64," + base64.b64encode((self.folder / name).read_bytes()).decode()
        return page.notebook_html(self, inline)

    def __repr__(self) -> str:
        return f"Report({str(self.folder)!r}): " + summary_line(self.folder)


def read_report(out: Path | str) -> Report:
    """The report written in `out` (what write_report returns), for a notebook or a script."""
    return Report(out)


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
