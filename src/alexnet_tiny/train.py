"""One training run: SGD with momentum, StepLR, train/val/test metrics every epoch.

Randomness is reseeded at every epoch from (seed, epoch): shuffling, crops, flips and dropout of
epoch e are the same whether or not the run was interrupted before it, so a resumed run on the CPU
reproduces an uninterrupted one exactly and checkpoints need no RNG state.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import runlog
from .allocator import retained_heap
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .data import Dataset, Split, atomic_torch_save, ensure_dataset
from .errors import UserError
from .model import AlexNet
from .progress import progress_bar
from .transforms import MEAN, STD, eval_batch, random_boxes, resize_size, sample_boxes

EVAL_BATCH_SIZE = 100
PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device {name}: expected auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def autocast(device, precision: str):
    """precision bf16: forward and backward under bf16 autocast (GPU tensor cores; AVX512-BF16/AMX
    CPUs); weights, gradients, momenta and the SGD step stay fp32. fp32: no autocast."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum; weight decay on conv and linear weights only (biases are not decayed)."""
    weights = [p for p in model.parameters() if p.ndim > 1]
    biases = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": weights, "weight_decay": config.weight_decay}, {"params": biases, "weight_decay": 0.0}]
    # fused: one pass over weights, gradients and momenta per step instead of PyTorch's CPU default,
    # a loop of three passes per tensor (2-core CPU, 224 px, batch 12: 32 -> 19 ms of a ~200 ms
    # step); equal to it up to rounding
    fused = weights[0].device.type in ("cpu", "cuda")
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, fused=fused)


def lr_factor(config: TrainConfig, epoch_index: int) -> float:
    """Cosine schedule: linear warmup to lr over warmup_epochs, then cosine to zero at the last epoch."""
    if epoch_index < config.warmup_epochs:
        return (epoch_index + 1) / (config.warmup_epochs + 1)
    span = max(1, config.epochs - config.warmup_epochs)
    return 0.5 * (1 + math.cos(math.pi * (epoch_index - config.warmup_epochs) / span))


def make_scheduler(optimizer, config: TrainConfig):
    """Stepped once per epoch. `step` is the original study's StepLR(step_size, gamma)."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, config))
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)


def mixup_weights(config: TrainConfig, generator: torch.Generator, n_batches: int) -> list[float]:
    """One Beta(alpha, alpha) mixing weight per batch (1.0 everywhere when mixup is off)."""
    if config.mixup <= 0:
        return [1.0] * n_batches
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
    return rng.beta(config.mixup, config.mixup, n_batches).tolist()


# ----------------------------------------------------------------------------- epochs

def lr_at(config: TrainConfig, epoch_index: int) -> float:
    """The learning rate of epoch `epoch_index` (0-based), in closed form; the schedulers of
    `make_scheduler` reach the same values by stepping (up to rounding)."""
    if config.schedule == "cosine":
        return config.lr * lr_factor(config, epoch_index)
    return config.lr * config.gamma ** (epoch_index // config.step_size)


def epoch_batches(split: Split, config: TrainConfig, device, epoch: int, progress: bool = True):
    """The data stream of one epoch: (x, y, mixup weight) per step, all randomness from (seed, epoch).
    Every trial with the same seed, batch size, image size and augmentation sees the same stream,
    dropout masks included (they come from the global generator, reseeded here)."""
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
    boxes = [random_boxes(min(b, len(split) - i), config.image_size, generator, config.augment, config.crop_scale)
             for i in batches]
    centres, extents, flips = (torch.cat(t).to(device) for t in zip(*boxes)) if boxes else (None,) * 3
    order = order.to(device)
    bar = progress_bar(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", enabled=progress)
    for step, i in enumerate(bar):
        idx = order[i:i + b]
        x = sample_boxes(images[idx], config.image_size, centres[i:i + b], extents[i:i + b], flips[i:i + b])
        lam = mix[step]
        if lam < 1.0:  # mixup with the batch reversed
            x = lam * x + (1 - lam) * x.flip(0)
        yield x, labels[idx], lam


def mixed_loss(loss_fn, out: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    loss = loss_fn(out, y)
    return loss if lam >= 1.0 else lam * loss + (1 - lam) * loss_fn(out, y.flip(0))


def match_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each momentum buffer its parameter's memory layout: the fused kernel walks both as flat
    memory, so a contiguous buffer (from a checkpoint) beside an NHWC weight would be misread."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            buf = state.get("momentum_buffer")
            if buf is not None and buf.stride() != p.stride():
                state["momentum_buffer"] = torch.empty_like(p).copy_(buf)


@retained_heap()  # CPU: the fresh gradients of every step reuse freed memory instead of faulting
def train_one_epoch(model, optimizer, split: Split, config: TrainConfig, device, epoch: int,
                    progress: bool = True) -> dict:
    model.train()
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu:  # oneDNN's convolutions are faster on NHWC weights (~12% of a 224 px step)
        model.to(memory_format=torch.channels_last)
        match_layout(optimizer)
    loss_fn = partial(F.cross_entropy, label_smoothing=config.label_smoothing)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    start = time.perf_counter()
    for x, y, lam in epoch_batches(split, config, device, epoch, progress):
        out = model(x)
        loss = mixed_loss(loss_fn, out, y, lam)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
    if on_cpu:  # evaluation and checkpoints see the usual layout
        model.to(memory_format=torch.contiguous_format)
    n = len(split)
    loss_value = loss_sum.item() / n  # one device sync per epoch
    seconds = time.perf_counter() - start
    return {"loss": loss_value, "accuracy": correct.item() / n, "seconds": seconds, "images_per_second": n / seconds}


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    confusion: torch.Tensor  # [true, predicted] counts

    @property
    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diag().double() / totals).tolist()


@torch.no_grad()
def predict_logits(model, images: torch.Tensor, image_size: int, device, batch_size: int = EVAL_BATCH_SIZE):
    model.eval()
    outs = [model(eval_batch(images[i:i + batch_size].to(device), image_size)).float()
            for i in range(0, len(images), batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0)


def evaluation(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Evaluation:
    """Loss, accuracy and confusion matrix from a split's logits."""
    if len(labels) == 0:
        return Evaluation(float("nan"), float("nan"), torch.zeros(num_classes, num_classes, dtype=torch.int64))
    logits, labels = logits.float().cpu(), labels.cpu()
    loss = F.cross_entropy(logits, labels, reduction="sum").item() / len(labels)
    pred = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes ** 2).view(num_classes, -1)
    return Evaluation(loss, (pred == labels).double().mean().item(), confusion)


def evaluate(model, split: Split, image_size: int, device, num_classes: int) -> Evaluation:
    return evaluation(predict_logits(model, split.images, image_size, device), split.labels, num_classes)


# ----------------------------------------------------------------------------- a run

def checkpoint_dict(model, optimizer, scheduler, epoch, config, dataset: Dataset, best, elapsed, full=True) -> dict:
    ckpt = {
        "model": model.state_dict(), "epoch": epoch, "config": config.to_dict(), "best": dict(best),
        "classes": {"wnids": dataset.wnids, "names": dataset.names},
        "preprocessing": {"image_size": config.image_size, "resize": resize_size(config.image_size),
                          "mean": list(MEAN), "std": list(STD)},
        "elapsed_seconds": elapsed,
    }
    if full:
        ckpt.update(optimizer=optimizer.state_dict(), lr_scheduler=scheduler.state_dict())
    return ckpt


def run_record(config: TrainConfig, dataset: Dataset, device, status: str, best: dict, epochs_done: int,
               final_train_loss, seconds: float, reason: str | None = None, engine: str = "single",
               precision: str = "fp32") -> dict:
    record = {
        "config": config.to_dict(), "name": config.name(), "device": str(device), "engine": engine,
        "precision": precision, "status": status,
        "dataset": {"root": str(dataset.root), "wnids": dataset.wnids, "names": dataset.names,
                    "source_sha256": dataset.meta.get("source_sha256"), "seed": dataset.meta.get("seed")},
        "epochs_done": epochs_done,  # the best values are None until an epoch finished
        "best_val_accuracy": best["val_accuracy"] if best["epoch"] else None, "best_epoch": best["epoch"] or None,
        "test_accuracy_at_best": best["test_accuracy"], "final_train_loss": final_train_loss,
        "seconds": round(seconds, 2),
    }
    if reason:
        record["reason"] = reason
    return record


def _check_resumable(out: Path, config: TrainConfig, resume: bool) -> dict | None:
    previous = runlog.read_config(out)
    if previous is None:
        return None
    if not resume:
        raise UserError(f"{out}: run folder already exists; add --resume to continue it or choose another --out")
    if TrainConfig.from_dict(previous["config"], str(out / runlog.CONFIG_FILE)) != config:
        raise UserError(f"{out}: holds a run with other hyperparameters ({previous['name']}); "
                        f"resume it with the same flags or choose another --out")
    return previous


class RunFolder:
    """One trial's run folder through its run: what a resume starts from, the per-epoch logs
    (metrics.jsonl, TensorBoard, config.json), checkpoints and the final record. `train` drives one;
    the multi-trial engine drives one per trial it advances."""

    def __init__(self, config: TrainConfig, dataset: Dataset, out: Path, device, resume: bool, log=print,
                 engine: str = "single", precision: str = "fp32"):
        self.config, self.dataset, self.out, self.device, self.log = config, dataset, Path(out), device, log
        self.engine, self.precision = engine, precision
        self.previous = _check_resumable(self.out, config, resume)
        self.finished = self.previous is not None and self.previous["status"] in (runlog.STATUS_DONE,
                                                                                 runlog.STATUS_DIVERGED)
        self.best = {"val_accuracy": -1.0, "epoch": 0, "test_accuracy": None}
        self.start_epoch, self.elapsed, self.final_train_loss = 1, 0.0, None
        self.writer = None

    def resume_checkpoint(self) -> dict | None:
        """last.pt of the run being resumed (None for a fresh start); logs past it are dropped."""
        ckpt = None
        last = self.out / runlog.LAST_CKPT
        if self.previous is not None and last.exists():
            ckpt = load_checkpoint(last, map_location=self.device)
            self.best, self.elapsed, self.start_epoch = ckpt["best"], ckpt["elapsed_seconds"], ckpt["epoch"] + 1
        kept = runlog.truncate_metrics(self.out, self.start_epoch - 1) if self.previous is not None else []
        if kept:
            self.final_train_loss = kept[-1]["train_loss"]
        if self.start_epoch > 1:
            self.log(f"resuming {self.out} at epoch {self.start_epoch}/{self.config.epochs}")
        return ckpt

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(".*.tmp-*"):  # a checkpoint half-written when a previous run was killed
            stale.unlink()
        runlog.write_config(self.out, self.record(runlog.STATUS_RUNNING))
        # purge_step drops any scalars an interrupted run wrote past its last checkpoint (even if it has none)
        self.writer = SummaryWriter(str(self.out), purge_step=self.start_epoch if self.previous is not None else None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def record(self, status: str, reason: str | None = None) -> dict:
        return run_record(self.config, self.dataset, self.device, status, self.best, self.start_epoch - 1,
                          self.final_train_loss, self.elapsed, reason, self.engine, self.precision)

    def end_epoch(self, epoch: int, tr: dict, val: Evaluation, test: Evaluation, lr: float, seconds: float) -> bool:
        """Log a finished epoch; True when it is the best so far on validation."""
        self.elapsed += seconds
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
               "val_loss": val.loss, "val_accuracy": val.accuracy, "test_loss": test.loss,
               "test_accuracy": test.accuracy, "lr": lr, "epoch_seconds": seconds,
               "images_per_second": tr["images_per_second"]}
        # logs first, then checkpoints: a kill in between only makes resume redo this epoch
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
        return improved

    def save(self, name: str, model, optimizer=None, scheduler=None) -> None:
        """best.pt (the best epoch's weights) or last.pt (the last finished epoch's, with optimizer and
        scheduler). The engine writes best.pt epochs after its best epoch: it is labelled with that epoch."""
        epoch = self.best["epoch"] if name == runlog.BEST_CKPT else self.start_epoch - 1
        ckpt = checkpoint_dict(model, optimizer, scheduler, epoch, self.config, self.dataset,
                               self.best, self.elapsed, full=optimizer is not None)
        atomic_torch_save(ckpt, self.out / name)
        if optimizer is not None:  # config.json's epochs_done counts the epochs a resume keeps
            runlog.write_config(self.out, self.record(runlog.STATUS_RUNNING))

    def diverge(self, epoch: int, loss: float, seconds: float) -> dict:
        reason = f"train loss became {loss} at epoch {epoch}"
        runlog.append_metrics(self.out, {"epoch": epoch, "status": runlog.STATUS_DIVERGED, "reason": reason})
        self.elapsed += seconds
        final = self.record(runlog.STATUS_DIVERGED, reason)
        runlog.write_config(self.out, final)
        self.log(f"diverged: {reason} ({self.out.name})")
        return final

    def finish(self) -> dict:
        final = self.record(runlog.STATUS_DONE)
        write_hparams(self.writer, self.config, final)
        runlog.write_config(self.out, final)
        return final


def epoch_line(epoch: int, config: TrainConfig, tr: dict, val: Evaluation, test: Evaluation, seconds: float) -> str:
    return (f"epoch {epoch}/{config.epochs}  train loss {tr['loss']:.4f} acc {tr['accuracy']:.3f}  "
            f"val {val.accuracy:.3f}  test {test.accuracy:.3f}  {seconds:.1f}s ({tr['images_per_second']:.0f} img/s)")


def train(config: TrainConfig, data: Dataset | Path | str | None = None, out: Path | str | None = None,
          device: str = "auto", resume: bool = False, progress: bool = True, log=print, callback=None,
          engine: str = "auto", precision: str = "fp32") -> dict:
    """Train one configuration into the run folder `out`; returns the record saved as config.json.
    `callback(row)` is called with each finished epoch's metrics (the Ray backend reports them).
    engine: "auto" (the stacked engine on a GPU, this loop on the CPU), "stacked" or "single".
    precision: "fp32" or "bf16" (autocast)."""
    config.validate()
    dev = resolve_device(device)
    autocast(dev, precision)  # an unknown precision stops here, before any work
    dataset = data if isinstance(data, Dataset) else ensure_dataset(data, progress=progress)
    dataset = dataset.to(dev)  # resident on the device for the whole run (a no-op on the CPU)
    out = Path(out) if out is not None else Path("runs") / config.name()
    from .engine import resolve_engine, train_stack
    if resolve_engine(engine, dev, log) == "stacked":
        return train_stack([config], dataset, [out], device=dev, resume=resume, progress=progress, log=log,
                           callback=callback, precision=precision)[0]
    run = RunFolder(config, dataset, out, dev, resume, log, "single", precision)
    if run.finished:
        log(f"{out}: already finished ({run.previous['status']}), nothing to do")
        return run.previous

    torch.manual_seed(config.seed)
    model = AlexNet(dataset.num_classes).to(dev)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    ckpt = run.resume_checkpoint()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
    run.open()
    try:
        for epoch in range(run.start_epoch, config.epochs + 1):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            with autocast(dev, precision):
                tr = train_one_epoch(model, optimizer, dataset.splits["train"], config, dev, epoch, progress)
                if not math.isfinite(tr["loss"]):
                    return run.diverge(epoch, tr["loss"], time.perf_counter() - t0)
                val = evaluate(model, dataset.splits["val"], config.image_size, dev, dataset.num_classes)
                test = evaluate(model, dataset.splits["test"], config.image_size, dev, dataset.num_classes)
            scheduler.step()
            seconds = time.perf_counter() - t0
            if run.end_epoch(epoch, tr, val, test, lr, seconds):
                run.save(runlog.BEST_CKPT, model)
            run.save(runlog.LAST_CKPT, model, optimizer, scheduler)
            log(epoch_line(epoch, config, tr, val, test, seconds))
            if callback is not None:
                callback(run.row)
        return run.finish()
    finally:
        run.close()


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
