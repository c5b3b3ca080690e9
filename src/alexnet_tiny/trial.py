"""What one trial *is*: every rule that decides a trial's result, written once for both drivers.

A trial is a TrainConfig trained on a dataset. Its rules:

- its starting weights: `start.starting_model` (its seed and init; init "whiten" reads the training split);
- `epoch_batches`: the data stream of each epoch (shuffle, crops, flips, mixup weights), all drawn
  from (seed, epoch), so a resumed run sees what an uninterrupted one sees and trials that share
  `stream_key` see the same batches; dropout masks come from the global generator, reseeded here,
  and are drawn by `model.dropout_mask` (one layer down: the model draws them);
- `lr_at`: the learning rate of each epoch in closed form, StepLR(step_size, gamma) or linear warmup
  then cosine; nothing is stepped, so a checkpoint needs only its epoch;
- `is_decayed`: weight decay on conv and linear weights, never on biases;
- `TrialLosses`: each trial's mean cross-entropy (its own label smoothing), mixed with the
  reversed batch at the step's mixup weight;
- `sgd_update`: the update, `torch.optim.SGD`'s own fused functional step (momentum, nesterov,
  weight decay), called on one trial's tensors (`sgd_step` groups them: decay on weights only);
- `optimizer_state` / `momenta_from_state`: the momenta in a checkpoint, in the layout of
  `torch.optim.SGD.state_dict()` (weights first, then biases), so either driver resumes the other's.

The drivers: `train.py` advances one trial, a plain `AlexNet`; `engine.py` advances K trials whose
weights are stacked. Both call these functions with their own tensors (the engine once per trial
for the SGD step, with K = 1 slices). The single loop is a driver of these functions rather than the
engine's K = 1 case because on the CPU its plain, channels_last convolutions and addmm layers are
faster than the stacked ones (grouped convs, baddbmm), and keep its results bitwise what they were
before this module existed (checked for the quick, recipe-cpu and seed presets' first two epochs).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.sgd import sgd as _functional_sgd  # what torch.optim.SGD.step calls

from .config import TrainConfig
from .data import Split
from .progress import progress_bar
from .transforms import random_boxes, train_view

# The fields that shape a trial's data stream: trials equal in these see the same batches and
# dropout masks, and can share one stack (which starts every trial from one set of weights: init).
STREAM_FIELDS = ("batch_size", "epochs", "image_size", "seed", "augment", "crop_scale", "mixup", "init", "dropout",
                 "input", "outputs")


def stream_key(config: TrainConfig) -> tuple:
    return tuple(getattr(config, f) for f in STREAM_FIELDS)


# ----------------------------------------------------------------------------- the data stream

def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def mixup_weights(config: TrainConfig, generator: torch.Generator, n_batches: int) -> list[float]:
    """One Beta(alpha, alpha) mixing weight per batch (1.0 everywhere when mixup is off)."""
    if config.mixup <= 0:
        return [1.0] * n_batches
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
    return rng.beta(config.mixup, config.mixup, n_batches).tolist()


def epoch_batches(split: Split, config: TrainConfig, device, epoch: int, progress: bool = True):
    """The data stream of one epoch: (x, y, mixup weight) per step, all randomness from (seed, epoch).
    Every trial with the same `stream_key` sees the same stream, dropout masks included (they come
    from the global generator, reseeded here)."""
    generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
    torch.manual_seed(epoch_seed(config.seed, epoch))  # dropout
    images, labels = split.images.to(device), split.labels.to(device)
    order = torch.randperm(len(split), generator=generator)
    batches = range(0, len(split), config.batch_size)
    mix = mixup_weights(config, generator, len(batches))
    # Every step's crops and flips, drawn up front in step order (the same draws, in the same order,
    # as drawing them step by step) and sent to the device once with the order: no host-to-device
    # copy, hence no wait for the GPU, inside the loop.
    b = config.batch_size
    boxes = [random_boxes(min(b, len(split) - i), config.image_size, generator, config.augment, config.crop_scale,
                          config.input) for i in batches]
    centres, extents, flips = (torch.cat(t).to(device) for t in zip(*boxes)) if boxes else (None,) * 3
    order = order.to(device)
    bar = progress_bar(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", enabled=progress)
    for step, i in enumerate(bar):
        idx = order[i:i + b]
        x = train_view(images[idx], config.image_size, centres[i:i + b], extents[i:i + b], flips[i:i + b], config.input)
        lam = mix[step]
        if lam < 1.0:  # mixup with the batch reversed
            x = lam * x + (1 - lam) * x.flip(0)
        yield x, labels[idx], lam


# ----------------------------------------------------------------------------- one step

def train_step(model, optimizer, loss_fn: "TrialLosses", x: torch.Tensor, y: torch.Tensor, lam: float):
    """One training step of every trial in `model` (a plain AlexNet is a stack of one): forward, each
    trial's loss, backward of their sum (trials share no weights, so each gets its own gradients),
    the SGD step. Returns (logits, losses), the logits as the model gives them."""
    out = model(x)
    losses = loss_fn(out if out.dim() == 3 else out.unsqueeze(0), y, lam)
    optimizer.zero_grad()
    losses.sum().backward()
    optimizer.step()
    return out, losses


# ----------------------------------------------------------------------------- how far a call trains

def last_epoch(config: TrainConfig, until: int | None) -> int:
    """The epoch a training call ends after: the trial's last, or `until` (a grid scheduler's rung)."""
    return config.epochs if until is None else min(config.epochs, until)


def epochs_to_run(start: int, config: TrainConfig, until: int | None, budget: "Budget"):
    """The epochs a training call runs, from `start` to `last_epoch`, each only if `budget` allows it."""
    for epoch in range(start, last_epoch(config, until) + 1):
        if not budget.allows_epoch():
            return
        yield epoch


class Budget:
    """A wall-clock deadline for training (grid --time-budget): an epoch starts only if the latest
    epoch's duration (of any trial) says it ends before the deadline. `reached` once one did not."""

    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.epoch_seconds = 0.0
        self.reached = False

    def allows_epoch(self) -> bool:
        if self.deadline is not None and time.monotonic() + self.epoch_seconds > self.deadline:
            self.reached = True
        return not self.reached

    def spent(self, seconds: float) -> None:
        self.epoch_seconds = seconds


UNLIMITED = Budget(None)


@dataclass(frozen=True)
class RunOptions:
    """How a training call runs, beside what it trains (the same for every trial of a call): progress
    bars, where log lines go, `callback(row)` after each epoch (the Ray backend reports through it),
    the precision, the epoch `until` which it trains (a grid scheduler's rung; None: the last) and the
    time `budget` (the grid's --time-budget)."""
    progress: bool = True
    log: Callable[[str], None] = print
    callback: Callable[[dict], None] | None = None
    precision: str = "fp32"
    until: int | None = None
    budget: Budget = UNLIMITED


# ----------------------------------------------------------------------------- the schedule

def lr_factor(config: TrainConfig, epoch_index: int) -> float:
    """Cosine schedule: linear warmup to lr over warmup_epochs, then cosine to zero at the last epoch."""
    if epoch_index < config.warmup_epochs:
        return (epoch_index + 1) / (config.warmup_epochs + 1)
    span = max(1, config.epochs - config.warmup_epochs)
    return 0.5 * (1 + math.cos(math.pi * (epoch_index - config.warmup_epochs) / span))


def lr_at(config: TrainConfig, epoch_index: int) -> float:
    """The learning rate of epoch `epoch_index` (0-based): StepLR(step_size, gamma) stepped once per
    epoch ("step"), lr throughout ("constant": gamma and step_size unused), or warmup + cosine.

    "constant" is what the study's code did. It called `StepLR.step(loss)` three times per epoch;
    PyTorch then took the loss as the epoch number and set lr * gamma ** (loss // step_size), which is
    lr for any loss below step_size (30): the rate never moved."""
    if config.schedule == "cosine":
        return config.lr * lr_factor(config, epoch_index)
    if config.schedule == "constant":
        return config.lr
    return config.lr * config.gamma ** (epoch_index // config.step_size)


# ----------------------------------------------------------------------------- the loss

class TrialLosses:
    """Each trial's mean cross-entropy with its own label smoothing, mixed with the reversed batch's
    labels at weight 1 - lam (mixup): logits (K, B, classes) -> losses (K,). For one trial it is
    exactly `F.cross_entropy(logits, y, label_smoothing=s)`; trials sharing one smoothing value share
    one call; mixed values use the same formula, (1 - s) * nll + s * mean(-log p), with the
    smoothing values on the device (no list indexing: on a GPU that would wait for the queue)."""

    def __init__(self, smoothing: list[float], device=None):
        self.smoothing = list(smoothing)
        self.shared = len(set(self.smoothing)) == 1
        self.s = None if self.shared else torch.tensor(self.smoothing, device=device)[:, None]

    def mean_ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k, b = logits.shape[:2]
        if k == 1:
            return F.cross_entropy(logits[0].float(), y, label_smoothing=self.smoothing[0]).unsqueeze(0)
        flat, labels = logits.flatten(0, 1).float(), y.repeat(k)
        if self.shared:
            return F.cross_entropy(flat, labels, label_smoothing=self.smoothing[0], reduction="none").view(k, b).mean(1)
        nll = F.cross_entropy(flat, labels, reduction="none").view(k, b)
        uniform = -flat.log_softmax(-1).mean(-1).view(k, b)
        return ((1 - self.s) * nll + self.s * uniform).mean(1)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
        loss = self.mean_ce(logits, y)
        return loss if lam >= 1.0 else lam * loss + (1 - lam) * self.mean_ce(logits, y.flip(0))


# ----------------------------------------------------------------------------- the update

def is_decayed(name: str) -> bool:
    """Weight decay applies to conv and linear weights, not to biases."""
    return name.endswith("weight")


def sgd_groups(names: list[str]) -> tuple[list[int], list[int]]:
    """Indices of the decayed parameters (weights) and of the others (biases), in model order."""
    return ([i for i, n in enumerate(names) if is_decayed(n)], [i for i, n in enumerate(names) if not is_decayed(n)])


@torch.no_grad()
def sgd_update(params: list[torch.Tensor], grads: list[torch.Tensor], momenta: list[torch.Tensor],
               config: TrainConfig, lr: float, weight_decay: float) -> None:
    """torch.optim.SGD's fused update in place (dampening 0) with the trial's momentum and nesterov.
    `momenta` start as zeros, which gives the first step's buffer = gradient exactly, as
    torch.optim.SGD's lazily created ones.

    Why not a torch.optim.SGD object: the stacked engine updates K trials' slices of one stacked
    tensor, each with its own lr, momentum and decay, and the single loop keeps its momenta in the
    training layout beside the weights; an optimizer object owns whole parameters and its own state.
    This is the function `SGD.step` itself calls (an entry point torch does not document), so the one
    call is here, and tests/test_trial.py checks it against torch.optim.SGD on the installed torch."""
    _functional_sgd(params, grads, momenta, fused=True, weight_decay=weight_decay, momentum=config.momentum, lr=lr,
                    dampening=0.0, nesterov=config.nesterov, maximize=False)


def sgd_step(names: list[str], params: list[torch.Tensor], grads: list[torch.Tensor],
             momenta: list[torch.Tensor], config: TrainConfig, lr: float) -> None:
    """One SGD step of one trial: weight decay on weights only."""
    for group, decay in zip(sgd_groups(names), (config.weight_decay, 0.0)):
        sgd_update([params[i] for i in group], [grads[i] for i in group], [momenta[i] for i in group], config, lr,
                   decay)


def optimizer_state(names: list[str], momenta: list[torch.Tensor], config: TrainConfig, lr: float) -> dict:
    """Momenta as `torch.optim.SGD(param_groups).state_dict()` holds them (weights group first)."""
    weights, biases = sgd_groups(names)
    order = weights + biases
    state = {j: {"momentum_buffer": momenta[i] if config.momentum > 0 else None}
             for j, i in enumerate(order)}
    common = {"lr": lr, "momentum": config.momentum, "dampening": 0.0, "nesterov": config.nesterov,
              "maximize": False, "foreach": None, "differentiable": False, "fused": True}
    groups = [{**common, "weight_decay": config.weight_decay, "params": list(range(len(weights)))},
              {**common, "weight_decay": 0.0, "params": list(range(len(weights), len(order)))}]
    return {"state": state, "param_groups": groups}


def momenta_from_state(state: dict, names: list[str]) -> list[torch.Tensor | None]:
    """The momenta of an `optimizer_state` (or a torch.optim.SGD state_dict of the same groups),
    in model order; None where none was kept (momentum 0)."""
    weights, biases = sgd_groups(names)
    momenta: list[torch.Tensor | None] = [None] * len(names)
    for j, i in enumerate(weights + biases):
        momenta[i] = state["state"].get(j, {}).get("momentum_buffer")
    return momenta


@torch.no_grad()
def load_momenta(momenta: list[torch.Tensor], state: dict, names: list[str]) -> None:
    """Copy a checkpoint's momenta (`optimizer_state` layout) into `momenta` in place (one trial's
    tensors, or its slices of a stack); zeros where none was kept."""
    for m, saved in zip(momenta, momenta_from_state(state, names)):
        m.copy_(saved) if saved is not None else m.zero_()
