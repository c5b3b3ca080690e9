"""The fast multi-trial engine: trials that share one data stream are trained together, stacked.

Trials of a grid that differ only in how they optimise (lr, momentum, gamma, step size, schedule,
weight decay, nesterov, label smoothing) see exactly the same batches, crops, flips, mixup weights
and dropout masks (`trial.epoch_batches`, `trial.stream_key`). The engine stacks their weights
along a leading trial dimension and advances them together:

- one shared input batch; the first conv is one conv with K x 64 filters, the other convs are
  grouped convs (groups=K), the fully connected layers are batched matmuls (baddbmm);
- each trial's loss is its own mean cross-entropy (`trial.TrialLosses`, its own label smoothing),
  so the summed loss gives every trial exactly its own gradient;
- each trial's SGD step is `trial.sgd_update` on its slice of the stacked weights, gradients and
  momenta, with its own lr (`trial.lr_at`), momentum, weight decay and nesterov;
- the data stays on the device; the best weights are kept there too, and checkpoints are written
  every CHECKPOINT_SECONDS and at the end (not every epoch: 12 trials' last.pt are 5.5 GB); a trial
  that diverges has its best weights written at once, so config.json never names unsaved weights.

Every trial remains an independent trial: its run folder is exactly what `train` writes, and on the
CPU a trial trained in a stack matches the same trial trained alone to rounding (tests/test_engine.py).
"""
from __future__ import annotations

import contextlib
import math
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import runlog
from .allocator import retained_heap
from .checkpoint import load_checkpoint
from .config import TrainConfig, head_size
from .data import Dataset
from .files import folder_lock
from .device import autocast, free_memory, prepare_device
from .errors import UserError
from .evaluate import EVAL_BATCH_SIZE, Evaluation, evaluation
from .model import AlexNet, dropout_mask, parameter_count
from .runfolder import RunFolder, epoch_line
from .start import starting_model
from .transforms import Preprocessing, eval_batch
from .trial import (UNLIMITED, Budget, RunOptions, TrialLosses, epoch_batches, epochs_to_run, last_epoch,
                    load_momenta, lr_at, optimizer_state, sgd_groups, sgd_update, stream_key, train_step)

ENGINES = ("auto", "stacked", "single")
CHECKPOINT_SECONDS = 300.0


def resolve_engine(engine: str, device: torch.device, log=print) -> str:
    """auto: the stacked engine on a GPU, the single-trial loop on the CPU (where it measured faster)."""
    if engine not in ENGINES:
        raise UserError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "stacked" if device.type == "cuda" else "single"
    if engine == "stacked" and device.type not in ("cpu", "cuda"):
        log(f"note: the stacked engine needs fused SGD (cpu or cuda); training one trial at a time on {device}")
        return "single"
    return engine


# ----------------------------------------------------------------------------- the stacked model

CONV_MODES = ("grouped", "split")


class StackedAlexNet(nn.Module):
    """K AlexNets (the layers of `model`) with their weights stacked along a leading trial dimension.
    forward: a batch (B, 3, H, W) shared by all trials -> logits (K, B, classes).
    conv: "grouped" runs the convs after the first as one grouped conv; "split" as one conv per trial
    (the same arithmetic; which is faster depends on the device's grouped-conv kernels)."""

    def __init__(self, model: AlexNet, k: int, device=None, conv: str = "grouped"):
        super().__init__()
        if conv not in CONV_MODES:
            raise ValueError(f"conv={conv!r}: expected one of {CONV_MODES}")
        self.k, self.conv = k, conv
        self.names = [name for name, _ in model.named_parameters()]
        self.params = nn.ParameterList(
            [nn.Parameter(p.detach().to(device).unsqueeze(0).repeat(k, *[1] * p.ndim)) for p in model.parameters()])
        self.plan = []  # the layers, in order, read off the model itself
        for prefix, seq in (("features", model.features), ("classifier", model.classifier)):
            for i, m in enumerate(seq):
                if isinstance(m, nn.Conv2d):
                    self.plan.append(("conv", f"{prefix}.{i}", m.stride, m.padding))
                elif isinstance(m, nn.Linear):
                    self.plan.append(("linear", f"{prefix}.{i}"))
                elif isinstance(m, nn.ReLU):
                    self.plan.append(("relu",))
                elif isinstance(m, nn.MaxPool2d):
                    self.plan.append(("maxpool", m.kernel_size, m.stride))
                elif isinstance(m, nn.Dropout):
                    self.plan.append(("dropout", m.p))
                else:
                    raise TypeError(f"StackedAlexNet: no stacked form for {m}")
            if prefix == "features":
                self.plan.append(("avgpool", model.avgpool.output_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = dict(zip(self.names, self.params))
        shared = True  # the input is the same for every trial until the first conv
        for kind, *args in self.plan:
            if kind == "conv":
                name, stride, padding = args
                w, b = p[name + ".weight"], p[name + ".bias"]
                if shared or self.conv == "grouped":
                    x = F.conv2d(x, w.flatten(0, 1), b.flatten(), stride, padding, groups=1 if shared else self.k)
                else:
                    x = torch.cat([F.conv2d(xk, w[k], b[k], stride, padding)
                                   for k, xk in enumerate(x.chunk(self.k, 1))], 1)
                shared = False
            elif kind == "relu":
                x = F.relu(x, inplace=True)
            elif kind == "maxpool":
                x = F.max_pool2d(x, *args)
            elif kind == "avgpool":  # (B, K*C, h, w) -> (K, C*h*w, B): features by batch, see "linear"
                x = F.adaptive_avg_pool2d(x, *args)
                x = x.reshape(x.shape[0], self.k, -1).permute(1, 2, 0)
            elif kind == "dropout":
                if self.training and args[0] > 0:
                    x = x * dropout_mask((x.shape[2], x.shape[1]), args[0], x.device, x.dtype).t()
            elif kind == "linear":  # W @ x: the weight gradient then comes out contiguous, with no copy
                w, b = p[args[0] + ".weight"], p[args[0] + ".bias"]
                x = torch.baddbmm(b.unsqueeze(2), w, x)
        return x.transpose(1, 2)

    def trial_state_dict(self, k: int, device="cpu") -> dict:
        return {name: p[k].detach().to(device, copy=True) for name, p in zip(self.names, self.params)}

    @torch.no_grad()
    def load_trial(self, k: int, state_dict: dict) -> None:
        for name, p in zip(self.names, self.params):
            p[k].copy_(state_dict[name])


# ----------------------------------------------------------------------------- the stacked optimiser

class StackedSGD:
    """`trial.sgd_update` applied to each trial's slices of the stacked weights, gradients and momenta,
    with that trial's hyperparameters and lr, weight decay on weights only. The fused kernel takes lists
    of tensors, so trials that share this epoch's lr, momentum, nesterov and weight decay are updated by
    one call, and a trial's weights and biases by one call when it has no weight decay (the seed grid:
    K calls a step instead of 2K). Gradients are set to None between steps, as in `train`, so that
    backward hands over fresh ones instead of adding into zeroed ones."""

    def __init__(self, stack: StackedAlexNet, configs: list[TrainConfig]):
        self.stack, self.configs = stack, configs
        self.momenta = [torch.zeros_like(p) for p in stack.params]
        self.groups = sgd_groups(stack.names)
        self.active = [True] * len(configs)
        self.set_epoch(0)

    def set_epoch(self, epoch_index: int) -> None:
        self.lrs = [lr_at(c, epoch_index) for c in self.configs]
        self.plan_calls()

    def plan_calls(self) -> None:
        """The fused calls of a step: (config, lr, weight decay, params, momenta, [(param index, trial)])
        for each set of (trial, parameter group) that shares lr, momentum, nesterov and decay."""
        params = list(self.stack.params)
        calls: dict[tuple, tuple] = {}
        for k, c in enumerate(self.configs):
            if not self.active[k]:
                continue
            weights, biases = self.groups
            groups = [(weights + biases, 0.0)] if c.weight_decay == 0 else [(weights, c.weight_decay), (biases, 0.0)]
            for group, decay in groups:
                call = calls.setdefault((self.lrs[k], c.momentum, c.nesterov, decay), (c, self.lrs[k], decay, [], [], []))
                call[3].extend(params[i][k] for i in group)
                call[4].extend(self.momenta[i][k] for i in group)
                call[5].extend((i, k) for i in group)
        self.calls = list(calls.values())

    def deactivate(self, k: int) -> None:
        """Trial k diverged: no more updates for it."""
        self.active[k] = False
        self.plan_calls()

    def zero_grad(self) -> None:
        for p in self.stack.params:
            p.grad = None

    def step(self) -> None:
        grads = [p.grad for p in self.stack.params]
        for config, lr, decay, params, momenta, where in self.calls:
            sgd_update(params, [grads[i][k] for i, k in where], momenta, config, lr, decay)

    def trial_state(self, k: int, epochs_done: int) -> dict:
        """Trial k's momenta as a checkpoint's "optimizer" entry, copied to the CPU (a view of the
        stacked tensor would save all K trials' momenta)."""
        return optimizer_state(self.stack.names, [m[k].detach().to("cpu", copy=True) for m in self.momenta],
                               self.configs[k], lr_at(self.configs[k], epochs_done))

    def load_trial(self, k: int, optimizer: dict) -> None:
        load_momenta([m[k] for m in self.momenta], optimizer, self.stack.names)


# ----------------------------------------------------------------------------- epochs

@retained_heap()
def train_stack_epoch(stack: StackedAlexNet, optimizer: StackedSGD, split, stream: TrainConfig,
                      loss_fn: TrialLosses, device, epoch: int, progress: bool = True) -> list[dict]:
    """One epoch of every trial in the stack; train loss and accuracy per trial."""
    stack.train()
    loss_sum = torch.zeros(stack.k, device=device)
    correct = torch.zeros(stack.k, device=device, dtype=torch.int64)
    start = time.perf_counter()
    for x, y, lam in epoch_batches(split, stream, device, epoch, progress):
        out, losses = train_step(stack, optimizer, loss_fn, x, y, lam)
        loss_sum += losses.detach() * len(y)
        correct += (out.argmax(-1) == y).sum(1)
    n = len(split)
    losses, corrects = loss_sum.tolist(), correct.tolist()  # one device sync per epoch
    seconds = time.perf_counter() - start
    return [{"loss": loss / n, "accuracy": c / n, "seconds": seconds, "images_per_second": n / seconds}
            for loss, c in zip(losses, corrects)]


@torch.no_grad()
def evaluate_stack(stack: StackedAlexNet, split, prep: Preprocessing | int, device, num_classes: int) -> list[Evaluation]:
    stack.eval()
    logits = [stack(eval_batch(split.images[i:i + EVAL_BATCH_SIZE].to(device), prep)).float()
              for i in range(0, len(split), EVAL_BATCH_SIZE)]
    logits = torch.cat(logits, 1) if logits else torch.zeros(stack.k, 0, stack.params[-1].shape[1])
    return [evaluation(logits[k], split.labels, num_classes) for k in range(stack.k)]


# ----------------------------------------------------------------------------- planning

def activation_bytes(config: TrainConfig, num_classes: int) -> int:
    """What one trial's training step keeps for backward, from a forward pass on the meta device
    (every layer output in fp32, doubled for the inputs autograd saves and backward's temporaries)."""
    with torch.device("meta"):
        model = AlexNet(head_size(config, num_classes)).eval()
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        total += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    model(torch.empty(max(config.batch_size, EVAL_BATCH_SIZE), 3, config.image_size, config.image_size, device="meta"))
    for h in hooks:
        h.remove()
    return 2 * 4 * total


def trial_bytes(config: TrainConfig, num_classes: int) -> int:
    """Device memory of one trial in a stack: weights, gradients, momenta and best weights, plus activations."""
    return 4 * 4 * parameter_count(head_size(config, num_classes)) + activation_bytes(config, num_classes)


def stack_capacity(config: TrainConfig, num_classes: int, free_bytes: int) -> int:
    """How many trials fit in one stack: 85% of the free memory, less 1 GiB of workspace (at least one)."""
    budget = 0.85 * free_bytes - (1 << 30)
    return max(1, int(budget // trial_bytes(config, num_classes)))


def resume_epoch(out: Path) -> int:
    """The epoch a trial's last.pt holds (0 without one); reads the header, not the tensors."""
    last = Path(out) / runlog.LAST_CKPT
    return load_checkpoint(last, mmap=True)["epoch"] if last.exists() else 0


def plan_stacks(configs: list[TrainConfig], outs: list[Path], device: torch.device, num_classes: int,
                max_stack: int | None = None) -> list[list[int]]:
    """Trials grouped into stacks: same data stream, same epoch to resume from, at most what fits
    in memory (or max_stack). Returns lists of indices into `configs`, in grid order."""
    groups: dict[tuple, list[int]] = {}
    for i, (c, out) in enumerate(zip(configs, outs)):
        groups.setdefault((stream_key(c), resume_epoch(out)), []).append(i)
    stacks = []
    for members in groups.values():
        size = stack_capacity(configs[members[0]], num_classes, free_memory(device))
        size = min(size, max_stack) if max_stack else size
        stacks += [members[i:i + size] for i in range(0, len(members), size)]
    return sorted(stacks)


# ----------------------------------------------------------------------------- a stack

def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Stack:
    """The trials of one stack on the device, with their run folders."""

    def __init__(self, runs: list[RunFolder], dataset: Dataset, device: torch.device):
        self.runs, self.dataset, self.device = runs, dataset, device
        configs = [r.config for r in runs]
        first = configs[0]  # every trial starts from the weights it would start from alone
        start = starting_model(first, head_size(first, dataset.num_classes), dataset.splits["train"])
        self.model = StackedAlexNet(start, len(runs), device)
        self.optimizer = StackedSGD(self.model, configs)
        self.best = [torch.empty_like(p) for p in self.model.params]
        self.loss_fn = TrialLosses([c.label_smoothing for c in configs], device)
        self.live = list(range(len(runs)))

    def resume(self) -> int:
        """Each trial's last.pt, read from disk one at a time and copied into its slice (so at most
        one trial's checkpoint is in host memory and none beside the stack on the device); returns
        the epoch the stack starts at."""
        for k, run in enumerate(self.runs):
            ckpt = run.resume_checkpoint()
            if ckpt is not None:
                self.model.load_trial(k, ckpt["model"])
                self.optimizer.load_trial(k, ckpt["optimizer"])
            del ckpt
        start = self.runs[0].start_epoch
        if any(r.start_epoch != start for r in self.runs):
            raise ValueError("train_stack: trials resuming from different epochs cannot share a stack")
        return start

    @torch.no_grad()
    def keep_best(self, k: int) -> None:
        for best, p in zip(self.best, self.model.params):
            best[k].copy_(p[k])

    def save_best(self, k: int) -> None:
        """best.pt of trial k, if a better epoch came since it was written."""
        if self.runs[k].best_unsaved:
            self.runs[k].save_best({n: b[k].to("cpu", copy=True) for n, b in zip(self.model.names, self.best)})

    def save(self, k: int) -> None:
        """best.pt, then last.pt of trial k, in the format `train` writes and resumes from."""
        run = self.runs[k]
        self.save_best(k)
        run.save_last(self.model.trial_state_dict(k), self.optimizer.trial_state(k, run.epochs_done))

    def train_epoch(self, epoch: int, progress: bool) -> tuple[list[dict], list[Evaluation], list[Evaluation]]:
        stream, splits, classes = self.runs[0].config, self.dataset.splits, self.dataset.num_classes
        self.optimizer.set_epoch(epoch - 1)
        tr = train_stack_epoch(self.model, self.optimizer, splits["train"], stream, self.loss_fn, self.device,
                               epoch, progress)
        val, test = (evaluate_stack(self.model, splits[s], Preprocessing.for_config(stream), self.device, classes)
                     for s in ("val", "test"))
        return tr, val, test

    def end_epoch(self, epoch: int, tr, val, test, seconds: float) -> list[tuple[int, dict]]:
        """Log the epoch of every live trial; freeze (and record) those that diverged, with their
        best weights written first. Returns (k, record) of the diverged ones."""
        ended = []
        for k in list(self.live):
            run = self.runs[k]
            if not math.isfinite(tr[k]["loss"]):
                self.save_best(k)
                ended.append((k, run.diverge(epoch, tr[k]["loss"], seconds)))
                self.optimizer.deactivate(k)
                self.live.remove(k)
            elif run.end_epoch(epoch, tr[k], val[k], test[k], self.optimizer.lrs[k], seconds):
                self.keep_best(k)
        return ended

    def line(self, epoch: int, tr: list[dict], val: list[Evaluation], test: list[Evaluation], seconds: float) -> str:
        live = self.live
        if len(self.runs) == 1:
            return epoch_line(epoch, self.runs[0].config, tr[0], val[0], test[0], seconds)
        losses = [tr[k]["loss"] for k in live]
        best = max(live, key=lambda k: val[k].accuracy)
        rate = len(live) * tr[best]["images_per_second"]
        return (f"epoch {epoch}/{self.runs[0].config.epochs} [{len(live)} trials]  train loss "
                f"{min(losses):.4f}-{max(losses):.4f}  best val {val[best].accuracy:.3f} ({self.runs[best].out.name})  "
                f"{seconds:.1f}s ({rate:.0f} trial-img/s)")


def open_runs(configs: list[TrainConfig], dataset: Dataset, outs: list[Path], device, resume: bool, log,
              precision: str) -> tuple[list[RunFolder], list[dict | None]]:
    """Every trial's run folder; the records of those already finished (None for the others)."""
    engine = f"stacked ({len(configs)} trials)"
    folders = [RunFolder(c, dataset, Path(o), device, resume, log, engine, precision) for c, o in zip(configs, outs)]
    return folders, [r.previous if r.finished else None for r in folders]


def train_stack(configs: list[TrainConfig], dataset: Dataset, outs: list[Path], device, resume: bool = True,
                progress: bool = True, log=print, callback=None,
                checkpoint_seconds: float = CHECKPOINT_SECONDS, precision: str = "fp32", until: int | None = None,
                budget: Budget = UNLIMITED) -> list[dict]:
    """Train trials that share one data stream (same stream_key, same epoch to resume from) together
    into their run folders, up to epoch `until` within `budget` (as `train`); returns their records,
    as config.json holds them."""
    return run_stack(configs, dataset, outs, torch.device(device), resume,
                     RunOptions(progress, log, callback, precision, until, budget), checkpoint_seconds)


def run_stack(configs: list[TrainConfig], dataset: Dataset, outs: list[Path], device: torch.device, resume: bool,
              options: RunOptions, checkpoint_seconds: float = CHECKPOINT_SECONDS) -> list[dict]:
    """`train_stack` with its options in one object (the drivers' and the grid's entry)."""
    if len({stream_key(c) for c in configs}) != 1:
        raise ValueError("train_stack: trials with different data streams cannot share a stack")
    with contextlib.ExitStack() as locks:
        for out in outs:
            locks.enter_context(folder_lock(out, "run folder"))
        return _train_stack(configs, dataset, outs, device, resume, options, checkpoint_seconds)


def _train_stack(configs, dataset, outs, device, resume: bool, options: RunOptions,
                 checkpoint_seconds: float) -> list[dict]:
    """`run_stack`, once it holds its trials' run folders' locks."""
    log, budget, callback = options.log, options.budget, options.callback
    dataset = dataset.to(device)  # resident on the device for the whole stack (a no-op on the CPU)
    folders, records = open_runs(configs, dataset, outs, device, resume, log, options.precision)
    todo = [i for i, r in enumerate(folders) if not r.finished]
    if not todo:
        return records
    stack = Stack([folders[i] for i in todo], dataset, device)
    start = stack.resume()
    prepare_device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    last = last_epoch(stack.runs[0].config, options.until)
    t_start = last_save = time.perf_counter()
    for r in stack.runs:
        r.open()
    try:
        for epoch in epochs_to_run(start, stack.runs[0].config, options.until, budget):
            t0 = time.perf_counter()
            with autocast(device, options.precision):
                tr, val, test = stack.train_epoch(epoch, options.progress)
            seconds = time.perf_counter() - t0
            budget.spent(seconds)
            for k, record in stack.end_epoch(epoch, tr, val, test, seconds):
                records[todo[k]] = record
            if not stack.live:
                break
            log(stack.line(epoch, tr, val, test, seconds))
            ending = epoch == last or not budget.allows_epoch()
            if ending or time.perf_counter() - last_save >= checkpoint_seconds:
                for k in stack.live:
                    stack.save(k)
                last_save = time.perf_counter()
            if callback is not None:
                callback(stack.runs[stack.live[0]].row)
        for k in stack.live:
            records[todo[k]] = stack.runs[k].conclude()
    finally:
        for r in stack.runs:
            r.close()
    if len(stack.runs) > 1:
        log(f"stack of {len(stack.runs)} trials: epochs {start}-{max(r.epochs_done for r in stack.runs)} in {time.perf_counter() - t_start:.0f}s, "
            f"peak memory {peak_memory_gb(device):.1f} GB on {device}")
    return records
