"""A run folder: what training writes and what the report reads back, defined once.

    <run>/config.json     hyperparameters, device, dataset, status and summary
    <run>/metrics.jsonl   one JSON object per epoch (the same values as the scalars)
    <run>/events.out.tfevents.*   TensorBoard scalars (TAGS) and hparams
    <run>/last.pt, best.pt        checkpoints (best = best validation accuracy)
    <run>/predictions.json        best.pt's prediction for every val and test image, with its epoch
                                  (the report's paired comparisons read it instead of re-evaluating)

and, in a grid folder, grid.json (its trials) and asha.jsonl (a Ray grid's ASHA decisions, in order).
"""
from __future__ import annotations

import json
from pathlib import Path

from .files import atomic_path, write_json
from .errors import UserError

CONFIG_FILE, METRICS_FILE, LAST_CKPT, BEST_CKPT = "config.json", "metrics.jsonl", "last.pt", "best.pt"
PREDICTIONS_FILE = "predictions.json"
PREDICTED_SPLITS = ("val", "test")  # the splits whose every prediction a run keeps (of its best epoch)
GRID_FILE = "grid.json"  # a grid folder's list of trials (grid.py writes it, the report reads it)
DECISIONS_FILE = "asha.jsonl"  # a Ray grid's ASHA decisions, one JSON object per line in the order taken

# metrics.jsonl key -> TensorBoard tag. The report reads the tags through this same table.
TAGS = {
    "train_loss": "train/loss", "train_accuracy": "train/accuracy",
    "val_loss": "val/loss", "val_accuracy": "val/accuracy",
    "test_loss": "test/loss", "test_accuracy": "test/accuracy",
    "lr": "lr", "epoch_seconds": "time/epoch_seconds", "images_per_second": "time/images_per_second",
}
HPARAM_METRICS = {"best_val_accuracy": "hparams/best_val_accuracy", "test_accuracy_at_best": "hparams/test_accuracy_at_best"}

STATUS_RUNNING, STATUS_DONE, STATUS_DIVERGED, STATUS_FAILED = "running", "done", "diverged", "failed"
STATUS_STOPPED = "stopped"  # ended early at a rung by the grid's scheduler (asha.py)
FINISHED = (STATUS_DONE, STATUS_DIVERGED, STATUS_STOPPED)  # a resume skips these; others continue from last.pt
SCORED = (STATUS_DONE, STATUS_STOPPED)  # finished with a validation score that counts for the best trial


def run_folder(out: Path | str, config) -> Path:
    """A trial's run folder in `out`: named by `config.name()`, or by its legacy name where an earlier
    version made the folder (it resumes there)."""
    path, legacy = Path(out) / config.name(), Path(out) / config.legacy_name()
    return legacy if legacy.is_dir() and not path.exists() else path


def run_folders(out: Path | str, configs) -> dict[str, Path]:
    """Every trial's run folder in a grid folder, by trial name: looked up once per grid."""
    return {c.name(): run_folder(out, c) for c in configs}


def unfinished(configs, runs: dict[str, Path]) -> list:
    """The trials whose run folder (in `runs`, by name) does not say done, diverged or stopped."""
    return [c for c in configs if (read_config(runs[c.name()]) or {}).get("status") not in FINISHED]


# The types of a run record's fields that the results and the report compute with (None: not yet).
RECORD_TYPES = {"status": (str, "a string"), "config": (dict, "a table of hyperparameters"),
                "epochs_done": (int, "an integer"), "best_epoch": (int, "an integer"),
                "best_val_accuracy": ((int, float), "a number"), "test_accuracy_at_best": ((int, float), "a number"),
                "final_train_loss": ((int, float), "a number"), "seconds": ((int, float), "a number")}


def read_config(run: Path) -> dict | None:
    """A run's config.json, with the fields others compute with checked (a hand-edited or damaged
    record is one line naming the field, never a crash later)."""
    path = Path(run) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: expected a JSON object (a run record), found {type(record).__name__}")
    for key, (types, expected) in RECORD_TYPES.items():
        value = record.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise UserError(f"{path}: {key} = {json.dumps(value)[:60]}: expected {expected}")
    return record


def epochs_done(run: Path) -> int:
    """The epochs a run folder's config.json counts as done (0 for a folder not started)."""
    return (read_config(run) or {}).get("epochs_done", 0)


def write_config(run: Path, record: dict) -> None:
    write_json(Path(run) / CONFIG_FILE, record)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of an appended JSON-lines file, up to a line a kill cut short (absent file: none)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a line cut by a kill: everything after it is redone on resume
    return rows


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def write_predictions(run: Path, epoch: int, splits: dict) -> None:
    """predictions.json: {"epoch", "splits": {split: {"predicted": [...], "label": [...]}}}, from
    {split: (predicted, label)} as lists or numpy arrays."""
    write_json(run / PREDICTIONS_FILE, {"epoch": epoch, "splits": {
        name: {"predicted": [int(v) for v in predicted], "label": [int(v) for v in label]}
        for name, (predicted, label) in splits.items()}})


def read_predictions(run: Path, epoch: int | None) -> dict | None:
    """Each val and test image's correctness at `epoch` (best.pt's), {split: [bool]}, with the
    labels they were judged against under "labels" ({split: [int]}); None when the run kept none for
    that epoch (a run of an earlier version, or a file that does not parse)."""
    try:
        saved = json.loads((run / PREDICTIONS_FILE).read_text())
        if saved["epoch"] != epoch:
            return None
        splits = {name: (list(map(int, split["predicted"])), list(map(int, split["label"])))
                  for name, split in saved["splits"].items()}
        correct = {name: [p == y for p, y in zip(predicted, labels, strict=True)]
                   for name, (predicted, labels) in splits.items()}
        return {**correct, "labels": {name: labels for name, (_, labels) in splits.items()}}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def read_metrics(run: Path) -> list[dict]:
    return read_jsonl(Path(run) / METRICS_FILE)


def epoch_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "epoch" in r and "status" not in r]


def truncate_metrics(run: Path, last_epoch: int) -> list[dict]:
    """Keep the epochs up to `last_epoch` (those the checkpoint holds); drop anything later."""
    kept = [r for r in epoch_rows(read_metrics(run)) if r["epoch"] <= last_epoch]
    with atomic_path(Path(run) / METRICS_FILE) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_metrics(run: Path, row: dict) -> None:
    append_jsonl(Path(run) / METRICS_FILE, row)


def val_accuracy_at(run: Path, epoch: int) -> float | None:
    """A run's validation accuracy at `epoch`, from its metrics.jsonl (None if it did not get there)."""
    return next((r["val_accuracy"] for r in epoch_rows(read_metrics(run)) if r["epoch"] == epoch), None)


def read_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a run's TensorBoard files: tag -> [(step, value)], purged steps removed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
