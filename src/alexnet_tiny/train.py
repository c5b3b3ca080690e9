"""One training run: a trial (trial.py) driven on a plain AlexNet, train/val/test metrics every epoch.

Randomness is reseeded at every epoch from (seed, epoch): shuffling, crops, flips and dropout of
epoch e are the same whether or not the run was interrupted before it, so a resumed run on the CPU
reproduces an uninterrupted one exactly and checkpoints need no RNG state.

`train` is the entry point for one trial (the stacked engine's on a GPU, this loop on the CPU);
`run_trials` runs the trials of one stack, or one trial, for the grid and the Ray workers,
recording a crash as a failed trial.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .allocator import retained_heap
from . import runlog
from .config import TrainConfig, head_size
from .data import Dataset, Split, ensure_dataset
from .files import folder_lock
from .device import autocast, prepare_device, resolve_device, resolve_precision
from .engine import resolve_engine, run_stack
from .errors import UserError, exception_line
from .evaluate import evaluate
from .runlog import run_folder
from .runfolder import Run, RunFolder, check_keep, epoch_line, record_failure, release_checkpoints
from .start import starting_model
from .transforms import Preprocessing
from .trial import (UNLIMITED, Budget, RunOptions, TrialLosses, epoch_batches, epochs_to_run, load_momenta, lr_at,
                    optimizer_state, sgd_step, train_step)


# The layout the CPU trains in: oneDNN's convs are faster on NHWC weights (~12% of a 224 px step).
# Tests set it to contiguous_format to measure what another convolution algorithm's rounding does.
CPU_TRAINING_LAYOUT = torch.channels_last


class TrialState:
    """One trial's model and momenta. On the CPU the weights are in CPU_TRAINING_LAYOUT while
    training and contiguous for evaluation and checkpoints; the momenta, which the fused kernel walks
    as flat memory beside the weights, take the training layout once and keep it."""

    def __init__(self, config: TrainConfig, num_classes: int, device, train: Split | None = None):
        self.config = config  # `train`: the training split, which init whiten reads (start.starting_model)
        self.model = starting_model(config, head_size(config, num_classes), train).to(device)
        self.names = [n for n, _ in self.model.named_parameters()]
        self.momenta = [torch.zeros_like(p) for p in self.model.parameters()]
        self.set_epoch(0)

    def load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        load_momenta(self.momenta, ckpt["optimizer"], self.names)

    def layout(self, memory_format: torch.memory_format) -> None:
        self.model.to(memory_format=memory_format)
        self.momenta = [m if m.stride() == p.stride() else torch.empty_like(p).copy_(m)
                        for p, m in zip(self.model.parameters(), self.momenta)]

    def set_epoch(self, epoch_index: int) -> None:
        """The learning rate of the steps that follow: that of epoch `epoch_index` (0-based)."""
        self.lr = lr_at(self.config, epoch_index)

    def step(self, lr: float | None = None) -> None:
        """One SGD step at `lr`, by default the rate `set_epoch` chose."""
        params = list(self.model.parameters())
        sgd_step(self.names, params, [p.grad for p in params], self.momenta, self.config,
                 self.lr if lr is None else lr)

    def zero_grad(self) -> None:
        for p in self.model.parameters():
            p.grad = None  # backward then hands over fresh gradients instead of adding into zeroed ones

    def optimizer_state(self, epochs_done: int) -> dict:
        return optimizer_state(self.names, self.momenta, self.config, lr_at(self.config, epochs_done))


@retained_heap()  # CPU: the fresh gradients of every step reuse freed memory instead of faulting
def train_one_epoch(state: TrialState, split: Split, device, epoch: int, progress: bool = True) -> dict:
    config, model = state.config, state.model
    model.train()
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu:
        state.layout(CPU_TRAINING_LAYOUT)
    state.set_epoch(epoch - 1)
    loss_fn = TrialLosses([config.label_smoothing])
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    start = time.perf_counter()
    for x, y, lam in epoch_batches(split, config, device, epoch, progress):
        out, losses = train_step(model, state, loss_fn, x, y, lam)
        loss_sum += losses[0].detach() * len(y)
        correct += (out.argmax(1) == y).sum()
    if on_cpu:  # evaluation and checkpoints see the usual layout (the momenta are not used there)
        model.to(memory_format=torch.contiguous_format)
    n = len(split)
    loss_value = loss_sum.item() / n  # one device sync per epoch
    seconds = time.perf_counter() - start
    return {"loss": loss_value, "accuracy": correct.item() / n, "seconds": seconds, "images_per_second": n / seconds}


def train(config: TrainConfig, data: Dataset | Path | str | None = None, out: Path | str | None = None,
          device: str = "auto", resume: bool = False, progress: bool = True, log=print, callback=None,
          engine: str = "auto", precision: str = "fp32", until: int | None = None, budget: Budget = UNLIMITED,
          keep: str = "best") -> Run:
    """Train one configuration into the run folder `out`; returns the Run: the record saved as
    config.json (a dict), with the folder, configuration, per-epoch history and best model at hand.
    `callback(row)` is called with each finished epoch's metrics (the Ray backend reports them).
    engine: "auto" (the stacked engine on a GPU, this loop on the CPU), "stacked" or "single".
    precision: "fp32", "bf16" (autocast) or "auto" (bf16 where the device runs it natively; the record
    says which ran). A grid's scheduler ends the call early, resumable, after
    epoch `until` or when `budget` allows no more epochs; the record then says "running".
    keep: "best" removes last.pt once the run has ended (runfolder.release_checkpoints), "all" keeps it."""
    config.validate()
    check_keep(keep)
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    dataset = data if isinstance(data, Dataset) else ensure_dataset(data, progress=progress, log=log)
    dataset = dataset.to(dev)  # resident on the device for the whole run (a no-op on the CPU)
    out = Path(out) if out is not None else run_folder("runs", config)
    options = RunOptions(progress, log, callback, precision, until, budget)
    with folder_lock(out, "run folder"):
        ended_before = (runlog.read_config(out) or {}).get("status") in runlog.FINISHED
        if resolve_engine(engine, dev, log) == "stacked":
            record = run_stack([config], dataset, [out], dev, resume, options)[0]
        else:
            record = train_single(config, dataset, out, dev, resume, options)
        if not ended_before:  # a call on a run that had ended changes nothing
            release_checkpoints(out, keep)
    return Run(out, record)


def train_single(config: TrainConfig, dataset: Dataset, out: Path, dev, resume: bool, options: RunOptions) -> dict:
    """`train` on the single-trial loop, once it holds the run folder's lock."""
    prepare_device(dev)
    progress, precision, callback = options.progress, options.precision, options.callback
    run = RunFolder(config, dataset, out, dev, resume, options.log, "single", precision)
    if run.finished:
        return run.previous
    state = TrialState(config, dataset.num_classes, dev, dataset.splits["train"])
    ckpt = run.resume_checkpoint()
    if ckpt is not None:
        state.load(ckpt)
        del ckpt
    run.open()
    try:
        for epoch in epochs_to_run(run.start_epoch, config, options.until, options.budget):
            t0 = time.perf_counter()
            with autocast(dev, precision):
                tr = train_one_epoch(state, dataset.splits["train"], dev, epoch, progress)
            if not math.isfinite(tr["loss"]):
                return run.diverge(epoch, tr["loss"], time.perf_counter() - t0)
            val, test = (evaluate(state.model, dataset.splits[s], Preprocessing.for_config(config), dev,
                                  dataset.num_classes, precision) for s in ("val", "test"))
            seconds = time.perf_counter() - t0
            options.budget.spent(seconds)
            if run.end_epoch(epoch, tr, val, test, lr_at(config, epoch - 1), seconds):
                run.save_best(state.model.state_dict())
            run.save_last(state.model.state_dict(), state.optimizer_state(run.epochs_done))
            options.log(epoch_line(epoch, config, tr, val, test, seconds))
            if callback is not None:
                callback(run.row)
        return run.conclude()
    finally:
        run.close()


def run_trials(configs: list[TrainConfig], dataset: Dataset, outs: list[Path], device, engine: str,
               options: RunOptions) -> list[dict]:
    """The trials of one stack (engine "stacked") or one trial alone, resumed where they are, up to
    epoch `options.until` within `options.budget`; a crash marks them failed instead of stopping the grid."""
    try:
        if engine == "stacked":
            return run_stack(configs, dataset.to(device), outs, torch.device(device), True, options)
        o = options
        return [train(configs[0], dataset, outs[0], str(device), resume=True, progress=o.progress, log=o.log,
                      callback=o.callback, engine="single", precision=o.precision, until=o.until, budget=o.budget,
                      keep="all")]  # the grid releases its trials' checkpoints at its end
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as e:  # noqa: BLE001 - any bug or device error in one trial must not lose the grid
        reason = exception_line(e)
        options.log(f"trial {', '.join(c.name() for c in configs)} failed: {reason}")
        return [record_failure(c, out, reason) for c, out in zip(configs, outs)]
