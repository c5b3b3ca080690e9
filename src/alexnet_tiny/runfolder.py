"""One trial's run folder through its run, and the checkpoint format: used by both drivers.

What a run folder holds is listed in runlog.py. The rules kept here:
- logs first, then checkpoints: a kill between them only makes a resume redo that epoch;
- config.json names only a best epoch whose weights are in best.pt (`best_on_disk`), and only the
  epochs that last.pt holds (`last_on_disk`): it is rewritten right after each of them is replaced.
  The engine keeps a better epoch on the device until its next checkpoint, and a trial that
  diverges first has it written then. (Between the rename of best.pt and that of config.json a kill
  leaves config.json one best behind; a resume reads its best from best.pt itself.)
- a resume starts from last.pt (its epoch, elapsed time, momenta) and takes the best from best.pt.
"""
from __future__ import annotations

from pathlib import Path

from . import runlog
from .checkpoint import load_checkpoint
from .config import TrainConfig, is_seed_trial
from .data import LEGACY_SPLIT, Dataset, identity_difference
from .device import LEGACY_PRECISION
from .files import atomic_torch_save, remove_stale_temporaries
from .errors import UserError
from .evaluate import Evaluation, SavedModel
from .transforms import Preprocessing

NO_BEST = {"val_accuracy": -1.0, "epoch": 0, "test_accuracy": None}


def checkpoint_dict(state_dict: dict, epoch: int, config: TrainConfig, dataset: Dataset, best: dict,
                    elapsed: float, precision: str, optimizer: dict | None = None) -> dict:
    """The checkpoint format (checkpoint.py reads it): best.pt leaves out the optimizer."""
    ckpt = {
        "model": state_dict, "epoch": epoch, "config": config.to_dict(), "best": dict(best),
        "classes": {"wnids": dataset.wnids, "names": dataset.names}, "dataset": dataset.identity,
        "preprocessing": Preprocessing.for_config(config).to_dict(),
        "precision": precision, "elapsed_seconds": elapsed,
    }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer
    return ckpt


def run_record(config: TrainConfig, dataset: Dataset, device, status: str, best: dict, epochs_done: int,
               final_train_loss, seconds: float, reason: str | None = None, engine: str = "single",
               precision: str = "fp32") -> dict:
    record = {
        "config": config.to_dict(), "name": config.name(), "device": str(device), "engine": engine,
        "precision": precision, "status": status,
        "dataset": {"root": str(dataset.root), "names": dataset.names, **dataset.identity},
        "epochs_done": epochs_done,  # the best values are None until an epoch finished
        "best_val_accuracy": best["val_accuracy"] if best["epoch"] else None, "best_epoch": best["epoch"] or None,
        "test_accuracy_at_best": best["test_accuracy"], "final_train_loss": final_train_loss,
        "seconds": round(seconds, 2),
    }
    if reason:
        record["reason"] = reason
    return record


def record_failure(config: TrainConfig, run: Path, reason: str) -> dict:
    """Mark a trial's run folder failed (a crash, or a Ray worker that died)."""
    rec = runlog.read_config(run) or {"config": config.to_dict(), "name": config.name()}
    rec.update(status=runlog.STATUS_FAILED, reason=reason[:300])
    runlog.write_config(run, rec)
    return rec


def stop_at_rung(run: Path, epoch: int, reason: str, log=None) -> dict | None:
    """Mark a trial stopped early by the grid's scheduler if it is still running at `epoch` (its last
    checkpointed epoch); returns its record then, else None (it went on, ended, or was stopped before).
    Its epochs, checkpoints and logs stay as they are, so it is read like any finished trial."""
    rec = runlog.read_config(run) or {}
    if rec.get("status") != runlog.STATUS_RUNNING or rec.get("epochs_done") != epoch:
        return None
    rec.update(status=runlog.STATUS_STOPPED, reason=reason)
    runlog.append_metrics(run, {"epoch": epoch, "status": runlog.STATUS_STOPPED, "reason": reason})
    runlog.write_config(run, rec)
    if log is not None:
        log(f"{Path(run).name}: {reason}")
    return rec


KEEP_CHOICES = ("best", "all")  # which checkpoints a finished trial keeps (--keep)


def check_keep(keep: str) -> None:
    if keep not in KEEP_CHOICES:
        raise UserError(f"--keep {keep}: expected one of {', '.join(KEEP_CHOICES)}")


def release_checkpoints(run: Path, keep: str = "best") -> int:
    """--keep best: a trial that will not train again (done, stopped at a rung, diverged) keeps best.pt
    and gives up last.pt (two thirds of its disk: weights and momenta), unless it is one of the
    study's trials, whose final model is what the study published (the report measures its train
    accuracy). --keep all keeps both (to extend or fine-tune a run later). Returns the bytes freed."""
    check_keep(keep)
    last = Path(run) / runlog.LAST_CKPT
    rec = runlog.read_config(run) or {}
    if keep == "all" or rec.get("status") not in runlog.FINISHED or is_seed_trial(rec.get("config")) \
            or not last.exists():
        return 0
    size = last.stat().st_size
    last.unlink()
    return size


def _check_resumable(out: Path, config: TrainConfig, dataset: Dataset, resume: bool, precision: str) -> dict | None:
    previous = runlog.read_config(out)
    if previous is None:
        return None
    if not resume:
        raise UserError(f"{out}: run folder already exists; add --resume to continue it or choose another --out")
    if TrainConfig.from_dict(previous["config"], str(out / runlog.CONFIG_FILE)) != config:
        raise UserError(f"{out}: holds a run with other hyperparameters ({previous['name']}); "
                        f"resume it with the same flags or choose another --out")
    trained_in = previous.get("precision", LEGACY_PRECISION)
    if trained_in != precision:
        raise UserError(f"{out}: its epochs were trained in {trained_in}; resume it with "
                        f"--precision {trained_in} (not {precision}), or choose another --out")
    recorded = previous.get("dataset") or {}
    if "split" not in recorded and "seed" in recorded:  # records from before the split choice
        recorded = {**recorded, "split": LEGACY_SPLIT}
    difference = identity_difference(recorded, dataset.identity)
    if difference:
        raise UserError(f"{out}: cannot resume on {dataset.root}: {difference}; resume it with the "
                        f"dataset it started on (--data {recorded.get('root', '?')})")
    return previous


def epoch_line(epoch: int, config: TrainConfig, tr: dict, val: Evaluation, test: Evaluation, seconds: float) -> str:
    return (f"epoch {epoch}/{config.epochs}  train loss {tr['loss']:.4f} acc {tr['accuracy']:.3f}  "
            f"val {val.accuracy:.3f}  test {test.accuracy:.3f}  {seconds:.1f}s ({tr['images_per_second']:.0f} img/s)")


class RunFolder:
    """One trial's run folder through its run: what a resume starts from, the per-epoch logs
    (metrics.jsonl, TensorBoard, config.json), checkpoints and the final record. `train` drives one;
    the multi-trial engine drives one per trial it advances."""

    def __init__(self, config: TrainConfig, dataset: Dataset, out: Path, device, resume: bool, log=print,
                 engine: str = "single", precision: str = "fp32"):
        if not len(dataset.splits["train"]):
            raise UserError(f"{dataset.root}: its train split has no images to train on")
        self.config, self.dataset, self.out, self.device, self.log = config, dataset, Path(out), device, log
        self.engine, self.precision = engine, precision
        self.previous = _check_resumable(self.out, config, dataset, resume, precision)
        self.finished = self.previous is not None and self.previous["status"] in runlog.FINISHED
        if self.finished:
            log(f"{self.out}: already finished ({self.previous['status']}), nothing to do")
        self.best = self.best_on_disk = dict(NO_BEST)
        self.start_epoch, self.elapsed, self.final_train_loss = 1, 0.0, None
        self.last_on_disk = 0  # the epoch last.pt holds
        self.writer = None
        self.row: dict | None = None
        self.best_predictions: dict | None = None  # the best epoch's val and test predictions (with labels)

    @property
    def epochs_done(self) -> int:
        return self.start_epoch - 1

    def resume_checkpoint(self) -> dict | None:
        """last.pt of the run being resumed (None for a fresh start), mapped from disk on the CPU (the
        caller copies what it needs to the device); logs past it are dropped."""
        ckpt = None
        last, best = self.out / runlog.LAST_CKPT, self.out / runlog.BEST_CKPT
        if self.previous is not None and last.exists():
            ckpt = load_checkpoint(last, mmap=True)
            self.elapsed, self.start_epoch = ckpt["elapsed_seconds"], ckpt["epoch"] + 1
            self.last_on_disk = ckpt["epoch"]
            if best.exists():  # the best whose weights are on disk (it may be newer than last.pt)
                self.best = self.best_on_disk = dict(load_checkpoint(best, mmap=True)["best"])
        kept = runlog.truncate_metrics(self.out, self.epochs_done) if self.previous is not None else []
        if kept:
            self.final_train_loss = kept[-1]["train_loss"]
        if self.start_epoch > 1:
            self.log(f"continuing {self.out} at epoch {self.start_epoch}/{self.config.epochs} from its last checkpoint")
        return ckpt

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out)  # a checkpoint half-written when a previous run was killed
        runlog.write_config(self.out, self.record(runlog.STATUS_RUNNING))
        # purge_step drops any scalars an interrupted run wrote past its last checkpoint (even if it has none)
        self.writer = SummaryWriter(str(self.out), purge_step=self.start_epoch if self.previous is not None else None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def record(self, status: str, reason: str | None = None) -> dict:
        """config.json: while running, the epochs a resume keeps (last.pt's); at the end, all of them."""
        epochs = self.last_on_disk if status == runlog.STATUS_RUNNING else self.epochs_done
        return run_record(self.config, self.dataset, self.device, status, self.best_on_disk, epochs,
                          self.final_train_loss, self.elapsed, reason, self.engine, self.precision)

    def end_epoch(self, epoch: int, tr: dict, val: Evaluation, test: Evaluation, lr: float, seconds: float) -> bool:
        """Log a finished epoch; True when it is the best so far on validation."""
        self.elapsed += seconds
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
               "val_loss": val.loss, "val_accuracy": val.accuracy, "test_loss": test.loss,
               "test_accuracy": test.accuracy, "lr": lr, "epoch_seconds": seconds,
               "images_per_second": tr["images_per_second"]}
        runlog.append_metrics(self.out, row)
        for key, tag in runlog.TAGS.items():
            self.writer.add_scalar(tag, row[key], epoch)
        self.writer.flush()
        self.final_train_loss = tr["loss"]
        self.start_epoch = epoch + 1
        self.row = row
        improved = val.accuracy > self.best["val_accuracy"]
        if improved:
            self.best = {"val_accuracy": val.accuracy, "epoch": epoch, "test_accuracy": test.accuracy}
            # host arrays (evaluation copied them there): nothing here waits for a GPU
            self.best_predictions = {name: (ev.predicted.numpy(), ev.labels.numpy())
                                     for name, ev in (("val", val), ("test", test)) if ev.predicted is not None}
        return improved

    @property
    def best_unsaved(self) -> bool:
        return self.best != self.best_on_disk

    def save_best(self, state_dict: dict) -> None:
        """best.pt: the weights of the best epoch so far (labelled with that epoch, also when the
        engine writes it epochs later), then predictions.json, that epoch's predictions."""
        atomic_torch_save(checkpoint_dict(state_dict, self.best["epoch"], self.config, self.dataset, self.best,
                                          self.elapsed, self.precision), self.out / runlog.BEST_CKPT)
        self.best_on_disk = dict(self.best)
        if self.best_predictions is not None:
            runlog.write_predictions(self.out, self.best["epoch"], self.best_predictions)
        runlog.write_config(self.out, self.record(runlog.STATUS_RUNNING))

    def save_last(self, state_dict: dict, optimizer: dict) -> None:
        """last.pt: the last finished epoch's weights and momenta; then config.json counts it."""
        atomic_torch_save(checkpoint_dict(state_dict, self.epochs_done, self.config, self.dataset, self.best_on_disk,
                                          self.elapsed, self.precision, optimizer), self.out / runlog.LAST_CKPT)
        self.last_on_disk = self.epochs_done
        runlog.write_config(self.out, self.record(runlog.STATUS_RUNNING))

    def diverge(self, epoch: int, loss: float, seconds: float) -> dict:
        """End the run as diverged; the caller has written best.pt first if its best was unsaved."""
        reason = f"train loss became {loss} at epoch {epoch}"
        runlog.append_metrics(self.out, {"epoch": epoch, "status": runlog.STATUS_DIVERGED, "reason": reason})
        self.elapsed += seconds
        final = self.record(runlog.STATUS_DIVERGED, reason)
        runlog.write_config(self.out, final)
        self.log(f"diverged: {reason} ({self.out.name})")
        return final

    def conclude(self) -> dict:
        """The record at the end of a training call: done after the trial's last epoch, else still
        running (a rung, a time budget or a divergence of its stack mates ended the call)."""
        return self.finish() if self.epochs_done == self.config.epochs else self.record(runlog.STATUS_RUNNING)

    def finish(self) -> dict:
        final = self.record(runlog.STATUS_DONE)
        write_hparams(self.writer, self.config, final)
        runlog.write_config(self.out, final)
        return final


def write_hparams(writer, config: TrainConfig, final: dict) -> None:
    """TensorBoard's HParams dashboard: the hyperparameters with the final metrics."""
    from torch.utils.tensorboard.summary import hparams
    metrics = {"best_val_accuracy": final["best_val_accuracy"], "test_accuracy_at_best": final["test_accuracy_at_best"]}
    exp, ssi, sei = hparams(config.to_dict(), {runlog.HPARAM_METRICS[k]: v for k, v in metrics.items()})
    for summary in (exp, ssi, sei):
        writer.file_writer.add_summary(summary)
    for key, value in metrics.items():
        writer.add_scalar(runlog.HPARAM_METRICS[key], value, final["epochs_done"])
    writer.flush()


class Run(dict):
    """What `train` returns: the run's record (its config.json) as a dict, with the run at hand: its
    `folder`, `config` (a TrainConfig), `history` (one dict per epoch, metrics.jsonl) and `load()`,
    the best (or last) checkpoint as a SavedModel."""

    def __init__(self, folder: Path | str, record: dict | None = None):
        self.folder = Path(folder)
        record = record if record is not None else runlog.read_config(self.folder)
        if record is None:
            raise UserError(f"{self.folder}: no run there (no {runlog.CONFIG_FILE})")
        super().__init__(record)

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self["config"], str(self.folder / runlog.CONFIG_FILE))

    @property
    def history(self) -> list[dict]:
        return runlog.read_metrics(self.folder)

    def load(self, which: str = "best", device="cpu") -> SavedModel:
        """best.pt (the best epoch on validation) or, with which="last", last.pt (kept while the run may
        continue, or with keep="all")."""
        names = {"best": runlog.BEST_CKPT, "last": runlog.LAST_CKPT}
        if which not in names:
            raise UserError(f"which={which!r}: expected best or last")
        return SavedModel(self.folder / names[which], device)

    def __repr__(self) -> str:
        best = self.get("best_val_accuracy")
        score = f", best val {best:.3f} at epoch {self['best_epoch']}" if best is not None else ""
        return f"Run({str(self.folder)!r}): {self.get('status')}, {self.get('epochs_done')} epoch(s){score}"


def read_run(folder: Path | str) -> Run:
    """A run folder written by `train` or a grid, for a notebook or a script."""
    return Run(folder)
