"""The fast multi-trial engine: trials that share one data stream are trained together, stacked.

Trials of a grid that differ only in how they optimise (lr, momentum, gamma, step size, schedule,
weight decay, nesterov, label smoothing) see exactly the same batches, crops, flips, mixup weights
and dropout masks (`train.epoch_batches`). The engine stacks their weights along a leading trial
dimension and advances them together:

- one shared input batch; the first conv is one conv with K x 64 filters, the other convs are
  grouped convs (groups=K), the fully connected layers are batched matmuls (baddbmm);
- each trial's loss is its own mean cross-entropy (with its own label smoothing), so the summed
  loss gives every trial exactly its own gradient;
- each trial's SGD step is PyTorch's fused SGD kernel (`torch.optim.SGD(fused=True)`) on its slice of
  the stacked weights, gradients and momenta, with its own lr, momentum, weight decay and nesterov;
- the data stays on the device; the best weights are kept there too, and checkpoints are written
  every CHECKPOINT_SECONDS and at the end (not every epoch: 12 trials' last.pt are 5.5 GB).

Every trial remains an independent trial: its run folder is exactly what `train` writes, and on the
CPU a trial trained in a stack matches the same trial trained alone to rounding (tests/test_engine.py).
"""
from __future__ import annotations

import math
import resource
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.sgd import sgd as sgd_update  # torch.optim.SGD's own functional step

from . import runlog
from .allocator import retained_heap
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .data import Dataset
from .errors import UserError
from .model import AlexNet
from .train import (EVAL_BATCH_SIZE, Evaluation, RunFolder, autocast, epoch_batches, epoch_line, evaluation, lr_at,
                    make_optimizer, make_scheduler, mixed_loss)
from .transforms import eval_batch

ENGINES = ("auto", "stacked", "single")
# The fields that shape a trial's data stream: trials equal in these can share one stack.
STREAM_FIELDS = ("batch_size", "epochs", "image_size", "seed", "augment", "crop_scale", "mixup")
CHECKPOINT_SECONDS = 300.0


def stream_key(config: TrainConfig) -> tuple:
    return tuple(getattr(config, f) for f in STREAM_FIELDS)


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
                    x = x * dropout_mask((x.shape[2], x.shape[1]), args[0], x.device).t()
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


def dropout_mask(shape, p: float, device) -> torch.Tensor:
    """One mask for the whole stack, drawn exactly as nn.Dropout draws it for one trial (the same
    generator calls in the same order), so every trial gets the masks it would get alone."""
    return torch.empty(shape, device=device).bernoulli_(1 - p).div_(1 - p)


def trial_losses(logits: torch.Tensor, y: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each trial (K,), with per-trial label smoothing, as F.cross_entropy."""
    logp = logits.float().log_softmax(-1)
    nll = -logp.gather(-1, y.expand(logp.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    return ((1 - smoothing)[:, None] * nll - smoothing[:, None] * logp.mean(-1)).mean(1)


# ----------------------------------------------------------------------------- the stacked optimiser

class StackedSGD:
    """torch.optim.SGD (fused; weight decay on weights only, as `train.make_optimizer`) applied to each
    trial's slice of the stacked tensors with that trial's hyperparameters. Gradients are set to None
    between steps, as in `train`, so that backward hands over fresh ones instead of adding into
    zeroed ones (two passes less over every gradient)."""

    def __init__(self, stack: StackedAlexNet, configs: list[TrainConfig]):
        self.stack, self.configs = stack, configs
        params = list(stack.params)
        self.momenta = [torch.zeros_like(p) for p in params]
        self.groups = ([i for i, p in enumerate(params) if p.ndim > 2],  # weights (the trial dimension comes first)
                       [i for i, p in enumerate(params) if p.ndim <= 2])  # biases: no weight decay
        self.slices = [[([params[i][k] for i in group], [self.momenta[i][k] for i in group]) for group in self.groups]
                       for k in range(len(configs))]
        self.lrs = [lr_at(c, 0) for c in configs]
        self.active = [True] * len(configs)

    def set_epoch(self, epoch_index: int) -> None:
        self.lrs = [lr_at(c, epoch_index) for c in self.configs]

    def zero_grad(self) -> None:
        for p in self.stack.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.stack.params]
        for k, c in enumerate(self.configs):
            if not self.active[k]:
                continue
            for (params, momenta), group, decay in zip(self.slices[k], self.groups, (c.weight_decay, 0.0)):
                sgd_update(params, [grads[i][k] for i in group], momenta, fused=True, weight_decay=decay, momentum=c.momentum,
                                    lr=self.lrs[k], dampening=0.0, nesterov=c.nesterov, maximize=False)

    def momentum_state(self, k: int, device="cpu") -> list[torch.Tensor]:
        return [m[k].detach().to(device, copy=True) for m in self.momenta]

    @torch.no_grad()
    def load_momentum(self, k: int, momenta: list[torch.Tensor | None]) -> None:
        for m, saved in zip(self.momenta, momenta):
            m[k].copy_(saved) if saved is not None else m[k].zero_()


# ----------------------------------------------------------------------------- epochs

@retained_heap()
def train_stack_epoch(stack: StackedAlexNet, optimizer: StackedSGD, split, stream: TrainConfig,
                      smoothing: torch.Tensor, device, epoch: int, progress: bool = True) -> list[dict]:
    """One epoch of every trial in the stack; train loss and accuracy per trial."""
    stack.train()
    loss_fn = partial(trial_losses, smoothing=smoothing)
    loss_sum = torch.zeros(stack.k, device=device)
    correct = torch.zeros(stack.k, device=device, dtype=torch.int64)
    start = time.perf_counter()
    for x, y, lam in epoch_batches(split, stream, device, epoch, progress):
        out = stack(x)
        losses = mixed_loss(loss_fn, out, y, lam)
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
        loss_sum += losses.detach() * len(y)
        correct += (out.argmax(-1) == y).sum(1)
    n = len(split)
    losses, corrects = loss_sum.tolist(), correct.tolist()  # one device sync per epoch
    seconds = time.perf_counter() - start
    return [{"loss": loss / n, "accuracy": c / n, "seconds": seconds, "images_per_second": n / seconds}
            for loss, c in zip(losses, corrects)]


@torch.no_grad()
def evaluate_stack(stack: StackedAlexNet, split, image_size: int, device, num_classes: int) -> list[Evaluation]:
    stack.eval()
    logits = [stack(eval_batch(split.images[i:i + EVAL_BATCH_SIZE].to(device), image_size))
              for i in range(0, len(split), EVAL_BATCH_SIZE)]
    logits = torch.cat(logits, 1) if logits else torch.zeros(stack.k, 0, num_classes)
    return [evaluation(logits[k], split.labels, num_classes) for k in range(stack.k)]


# ----------------------------------------------------------------------------- planning

def activation_bytes(config: TrainConfig, num_classes: int) -> int:
    """What one trial's training step keeps for backward, from a forward pass on the meta device
    (every layer output in fp32, doubled for the inputs autograd saves and backward's temporaries)."""
    with torch.device("meta"):
        model = AlexNet(num_classes).eval()
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
    with torch.device("meta"):
        params = sum(p.numel() for p in AlexNet(num_classes).parameters())
    return 4 * 4 * params + activation_bytes(config, num_classes)


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # unknown: assume a modest machine


def stack_capacity(config: TrainConfig, num_classes: int, device: torch.device) -> int:
    """How many trials fit in one stack: 85% of the free memory, less 1 GiB of workspace."""
    budget = 0.85 * free_memory(device) - (1 << 30)
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
        size = stack_capacity(configs[members[0]], num_classes, device)
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
        torch.manual_seed(configs[0].seed)  # every trial starts from the weights it would start from alone
        self.model = StackedAlexNet(AlexNet(dataset.num_classes), len(runs), device)
        self.optimizer = StackedSGD(self.model, configs)
        self.best = [torch.empty_like(p) for p in self.model.params]
        self.saved_best = [r.best["epoch"] for r in runs]
        self.smoothing = torch.tensor([c.label_smoothing for c in configs], device=device)

    def trial_model(self, state_dict: dict) -> AlexNet:
        """A plain AlexNet holding `state_dict` (built on the meta device: no initialisation to pay for)."""
        with torch.device("meta"):
            model = AlexNet(self.dataset.num_classes)
        model.load_state_dict(state_dict, assign=True)
        return model

    def load(self, k: int, ckpt: dict) -> None:
        model = self.trial_model(ckpt["model"])
        optimizer = make_optimizer(model, self.runs[k].config)
        optimizer.load_state_dict(ckpt["optimizer"])
        self.model.load_trial(k, model.state_dict())
        self.optimizer.load_momentum(k, [optimizer.state[p].get("momentum_buffer") for p in model.parameters()])

    @torch.no_grad()
    def keep_best(self, k: int) -> None:
        for best, p in zip(self.best, self.model.params):
            best[k].copy_(p[k])

    def save(self, k: int) -> None:
        """best.pt (if a better epoch came since it was written) and last.pt of trial k, in the format
        `train` writes and resumes from."""
        run = self.runs[k]
        if run.best["epoch"] != self.saved_best[k]:
            run.save(runlog.BEST_CKPT, self.trial_model({n: b[k].cpu() for n, b in zip(self.model.names, self.best)}))
            self.saved_best[k] = run.best["epoch"]
        model = self.trial_model(self.model.trial_state_dict(k))
        optimizer = make_optimizer(model, run.config)
        if run.config.momentum > 0:
            for p, m in zip(model.parameters(), self.optimizer.momentum_state(k)):
                optimizer.state[p]["momentum_buffer"] = m
        scheduler = make_scheduler(optimizer, run.config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": replaying its epochs
            for _ in range(run.start_epoch - 1):
                scheduler.step()
        run.save(runlog.LAST_CKPT, model, optimizer, scheduler)


def stack_line(epoch: int, stack: Stack, live: list[int], tr: list[dict], val: list[Evaluation],
               test: list[Evaluation], seconds: float) -> str:
    runs = [stack.runs[k] for k in live]
    if len(stack.runs) == 1:
        return epoch_line(epoch, runs[0].config, tr[0], val[0], test[0], seconds)
    losses = [tr[k]["loss"] for k in live]
    best = max(live, key=lambda k: val[k].accuracy)
    rate = len(live) * tr[best]["images_per_second"]
    return (f"epoch {epoch}/{runs[0].config.epochs} [{len(live)} trials]  train loss {min(losses):.4f}-{max(losses):.4f}  "
            f"best val {val[best].accuracy:.3f} ({stack.runs[best].out.name})  {seconds:.1f}s ({rate:.0f} trial-img/s)")


def train_stack(configs: list[TrainConfig], dataset: Dataset, outs: list[Path], device, resume: bool = True,
                progress: bool = True, log=print, callback=None,
                checkpoint_seconds: float = CHECKPOINT_SECONDS, precision: str = "fp32") -> list[dict]:
    """Train trials that share one data stream (same stream_key, same epoch to resume from) together
    into their run folders; returns their records, as config.json holds them."""
    if len({stream_key(c) for c in configs}) != 1:
        raise ValueError("train_stack: trials with different data streams cannot share a stack")
    device = torch.device(device)
    dataset = dataset.to(device)  # resident on the device for the whole stack (a no-op on the CPU)
    folders = [RunFolder(c, dataset, Path(o), device, resume, log, f"stacked ({len(configs)} trials)", precision)
               for c, o in zip(configs, outs)]
    records: list[dict | None] = [r.previous if r.finished else None for r in folders]
    for r in folders:
        if r.finished:
            log(f"{r.out}: already finished ({r.previous['status']}), nothing to do")
    todo = [i for i, r in enumerate(folders) if not r.finished]
    runs = [folders[i] for i in todo]
    if not runs:
        return records
    ckpts = [r.resume_checkpoint() for r in runs]
    start = runs[0].start_epoch
    if any(r.start_epoch != start for r in runs):
        raise ValueError("train_stack: trials resuming from different epochs cannot share a stack")
    stack = Stack(runs, dataset, device)
    for k, ckpt in enumerate(ckpts):
        if ckpt is not None:
            stack.load(k, ckpt)
    del ckpts
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # two batch shapes per epoch, the same for every epoch
        torch.cuda.reset_peak_memory_stats(device)
    stream, splits = runs[0].config, dataset.splits
    live = list(range(len(runs)))
    t_start = last_save = time.perf_counter()
    for r in runs:
        r.open()
    try:
        for epoch in range(start, stream.epochs + 1):
            t0 = time.perf_counter()
            stack.optimizer.set_epoch(epoch - 1)
            lrs = list(stack.optimizer.lrs)
            with autocast(device, precision):
                tr = train_stack_epoch(stack.model, stack.optimizer, splits["train"], stream, stack.smoothing,
                                       device, epoch, progress)
                val = evaluate_stack(stack.model, splits["val"], stream.image_size, device, dataset.num_classes)
                test = evaluate_stack(stack.model, splits["test"], stream.image_size, device, dataset.num_classes)
            seconds = time.perf_counter() - t0
            for k in list(live):
                if not math.isfinite(tr[k]["loss"]):
                    records[todo[k]] = runs[k].diverge(epoch, tr[k]["loss"], seconds)
                    stack.optimizer.active[k] = False
                    live.remove(k)
                elif runs[k].end_epoch(epoch, tr[k], val[k], test[k], lrs[k], seconds):
                    stack.keep_best(k)
            if not live:
                break
            log(stack_line(epoch, stack, live, tr, val, test, seconds))
            if epoch == stream.epochs or time.perf_counter() - last_save >= checkpoint_seconds:
                for k in live:
                    stack.save(k)
                last_save = time.perf_counter()
            if callback is not None:
                callback(runs[live[0]].row)
        for k in live:
            records[todo[k]] = runs[k].finish()
    finally:
        for r in runs:
            r.close()
    if len(runs) > 1:
        log(f"stack of {len(runs)} trials: epochs {start}-{stream.epochs} in {time.perf_counter() - t_start:.0f}s, "
            f"peak memory {peak_memory_gb(device):.1f} GB on {device}")
    return records
