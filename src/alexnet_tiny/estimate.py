"""How long a grid will take, measured on this machine before it starts: a few real training steps of
the drivers' own loop (`trial.train_step` on the model each driver trains) give images per second; the
epochs each trial has left (after a resume, and where ASHA plans to stop it) turn that into seconds,
with evaluation and checkpoint writes added."""
from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path

import torch

from . import runlog
from .allocator import retained_heap
from .asha import Asha
from .config import TrainConfig, head_size
from .data import Dataset
from .device import autocast, prepare_device, resolve_device, resolve_precision, synchronize
from .engine import CHECKPOINT_SECONDS, StackedAlexNet, StackedSGD
from .errors import UserError
from .model import AlexNet, parameter_count
from .progress import format_duration
from .train import CPU_TRAINING_LAYOUT, TrialState
from .trial import TrialLosses, epoch_batches, train_step

CHECKPOINT_BYTES_PER_SECOND = 5e8  # atomic torch.save of a trial's checkpoints: 1.1-1.8 s for 684 MB measured


@retained_heap()  # as train_one_epoch: fresh gradients reuse freed memory
def measure_throughput(config: TrainConfig, dataset: Dataset, device, steps: int | None = None, stack: int = 1,
                       precision: str = "fp32") -> float:
    """Training images per second for this config on this device, from real steps of the loop that
    will run: the training split resident on the device, the trial's own data stream (`epoch_batches`:
    shuffled across classes, as an epoch; a batch of one class, trained on again and again, soon has
    gradients so small that denormal arithmetic slows the step several times), the device policy set
    first, warm-up steps not timed, under the run's precision. With stack > 1, trial-images per second
    of that many trials stacked by the engine. Default steps: 3 on the CPU, each timed alone and the
    median taken (one step slowed by another process must not set the whole grid's estimate: their mean
    once put a 200-class grid at 30 minutes that took 22); 20 on a GPU, timed together (its steps are
    short, and a sync after each would slow them)."""
    dev = torch.device(device)
    prepare_device(dev)
    warmup = 1 if dev.type == "cpu" else 3  # cuDNN's algorithm search happens in the first steps
    steps = steps or (3 if dev.type == "cpu" else 20)
    if stack > 1:
        model = StackedAlexNet(AlexNet(head_size(config, dataset.num_classes)), stack, dev)
        optimizer = StackedSGD(model, [config] * stack)
    else:
        optimizer = TrialState(config, dataset.num_classes, dev, dataset.splits["train"])
        if dev.type == "cpu":
            optimizer.layout(CPU_TRAINING_LAYOUT)
        model = optimizer.model
    loss_fn = TrialLosses([config.label_smoothing] * stack, dev)
    split = dataset.splits["train"].to(dev)
    if not len(split):
        raise UserError(f"{dataset.root}: its train split has no images")
    per_step = dev.type == "cpu"  # each step timed alone (CPU), or all of them together (GPU: no sync between)
    stream = itertools.chain.from_iterable(epoch_batches(split, config, dev, epoch, progress=False)
                                           for epoch in itertools.count(1))  # as many epochs as it takes
    step_rates, timed, t0 = [], 0, 0.0
    for i, (x, y, lam) in enumerate(itertools.islice(stream, warmup + steps)):
        if i == warmup or (per_step and i > warmup):
            synchronize(dev)
            t0 = time.perf_counter()
        with autocast(dev, precision):
            train_step(model, optimizer, loss_fn, x, y, lam)
        if i >= warmup:
            timed += len(y)
            if per_step:
                step_rates.append(len(y) / (time.perf_counter() - t0))
    synchronize(dev)
    if per_step:
        return stack * statistics.median(step_rates)
    return stack * timed / (time.perf_counter() - t0)


def rate_key(config: TrainConfig, stack: int, precision: str) -> tuple:
    """What a measured throughput depends on, as `estimate_seconds`'s `rates` cache keys it."""
    return config.batch_size, config.image_size, config.input, stack, precision


def estimate_seconds(stacks: list[list[TrainConfig]], dataset: Dataset, device, runs: dict[str, Path] | None = None,
                     planned: dict[str, int] | None = None, rates: dict | None = None, engine: str = "single",
                     precision: str = "fp32") -> float:
    """Train images / measured rate, plus evaluation (about a third of a training step per image),
    for trials run in these stacks (lists of one trial each when trained one at a time), each to
    its last epoch or to `planned[name]`, counting only the epochs a resume still has to run when
    `runs` names their run folders (runlog.run_folders). `rates` caches the measured throughputs
    between calls (keys: `rate_key`). Checkpoints (weights three times over, with the momenta, at
    CHECKPOINT_BYTES_PER_SECOND): the single driver writes a trial's every epoch, the stacked engine
    each trial every CHECKPOINT_SECONDS and at its end."""
    planned = planned or {}
    rates = {} if rates is None else rates
    n_train, n_eval = len(dataset.splits["train"]), len(dataset.splits["val"]) + len(dataset.splits["test"])
    total = 0.0
    for group in stacks:
        t = group[0]
        key = rate_key(t, len(group), precision)
        if key not in rates:
            rates[key] = measure_throughput(t, dataset, device, stack=len(group), precision=precision)
        left = [max(0, planned.get(c.name(), c.epochs) - (runlog.epochs_done(runs[c.name()]) if runs else 0))
                for c in group]
        seconds = sum(left) * (n_train + n_eval / 3) / rates[key]
        save = 3 * 4 * parameter_count(head_size(t, dataset.num_classes)) / CHECKPOINT_BYTES_PER_SECOND
        if engine == "stacked":
            saves = sum(1 for n in left if n) * (1 + int(seconds // CHECKPOINT_SECONDS))
        else:
            saves = sum(left)
        total += seconds + saves * save
    return total


def planned_epochs(asha: Asha, trials: list[TrainConfig], runs: dict[str, Path] | None) -> dict[str, int]:
    """Each trial's epochs if ASHA stops the planned share, knowing what its run folder (in `runs`) says."""
    records = [(runlog.read_config(runs[t.name()]) or {}) if runs else {} for t in trials]
    planned = asha.planned_epochs([t.epochs for t in trials], [r.get("epochs_done", 0) for r in records],
                                  [r.get("status") == runlog.STATUS_STOPPED for r in records])
    return dict(zip((t.name() for t in trials), planned))


def run_plan(config: TrainConfig, dataset: Dataset, device, out: Path, resume: bool, precision: str = "fp32") -> str | None:
    """`train`'s first line: what it trains and how long that takes on this device, measured as a grid's
    estimate is. None where there is nothing to train (a finished run), or where `train` will refuse
    the folder (a run there, and no --resume)."""
    record = runlog.read_config(out)
    if record is not None and (not resume or record.get("status") in runlog.FINISHED):
        return None
    done = (record or {}).get("epochs_done", 0)
    dev = resolve_device(device)
    eta = estimate_seconds([[config]], dataset, dev, {config.name(): out}, precision=resolve_precision(precision, dev))
    warn = " -- hours on a CPU: consider a GPU or --preset quick" if eta > 3600 and dev.type == "cpu" else ""
    start = f", from epoch {done + 1}" if done else ""
    return (f"train: {config.name()}, {config.epochs} epoch{'s' * (config.epochs != 1)} at {config.image_size} px{start}; estimated "
            f"{format_duration(eta)} on {dev}{warn}")
