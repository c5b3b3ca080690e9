"""Correctness on a device, the checks the CPU test suite cannot make there (run first by gpu_check.sh).

    PYTHONPATH=src python3 bench/device_checks.py --device cuda

1. dropout: in training mode, a stack of K trials gives each trial the logits its plain AlexNet
   gives alone from the same seed (the same dropout masks: `model.dropout_mask` in both; with
   PyTorch's nn.Dropout the plain model would draw CUDA's fused-kernel masks instead);
2. losses and gradients: each trial's own label smoothing (three values: the formula on the
   device; and one shared value), stacked against each model alone;
3. SGD: one step of the single loop's update and of the stack's, from the same gradients, lands
   on the same weights (weight decay on weights, not biases, per-trial lr, momentum 0 included);
4. a short epoch: a trial stacked and alone on real data, first-epoch train loss, fp32 and bf16.

Each check prints one PASS or FAIL line with the measured error; the exit status is the number of
failures. Tolerances are relative errors chosen for cuDNN's TF32 convolutions (about 1e-3); a
wrong mask or update is off by order 1.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from alexnet_tiny.config import TrainConfig
from alexnet_tiny.data import ensure_dataset, prepare
from alexnet_tiny.device import resolve_device
from alexnet_tiny.engine import StackedAlexNet, StackedSGD, train_stack
from alexnet_tiny.model import AlexNet
from alexnet_tiny.train import TrialState, train
from alexnet_tiny.trial import TrialLosses


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


def report(name: str, error: float, tolerance: float) -> int:
    ok = error <= tolerance
    print(f"{'PASS' if ok else 'FAIL'} {name}: relative error {error:.2e} (tolerance {tolerance:g})", flush=True)
    return 0 if ok else 1


def check_dropout(device) -> int:
    torch.manual_seed(0)
    models = [AlexNet(10).to(device).train() for _ in range(3)]
    stack = StackedAlexNet(models[0], 3, device).train()
    for k, m in enumerate(models):
        stack.load_trial(k, m.state_dict())
    x = torch.randn(8, 3, 64, 64, device=device)
    torch.manual_seed(1)
    stacked = stack(x)
    errors = []
    for k, m in enumerate(models):
        torch.manual_seed(1)  # the stack drew one mask per layer from this seed, as each model does alone
        errors.append(relative(stacked[k], m(x)))
    return report("dropout masks: stacked logits = each trial's own, training mode", max(errors), 1e-2)


def check_losses(device) -> int:
    failures = 0
    for smoothing in ([0.0, 0.1, 0.2], [0.1, 0.1, 0.1]):
        torch.manual_seed(0)
        models = [AlexNet(10).to(device).eval() for _ in range(3)]  # eval: no dropout, gradients comparable
        stack = StackedAlexNet(models[0], 3, device).eval()
        for k, m in enumerate(models):
            stack.load_trial(k, m.state_dict())
        x, y = torch.randn(8, 3, 64, 64, device=device), torch.arange(8, device=device) % 10
        TrialLosses(smoothing, device)(stack(x), y).sum().backward()
        errors = []
        for k, m in enumerate(models):
            torch.nn.functional.cross_entropy(m(x), y, label_smoothing=smoothing[k]).backward()
            errors += [relative(sp.grad[k], p.grad) for p, sp in zip(m.parameters(), stack.params)]
        failures += report(f"losses and gradients, label smoothing {smoothing}", max(errors), 1e-2)
    return failures


def check_sgd(device) -> int:
    configs = [TrainConfig(lr=0.5, momentum=0.9, weight_decay=0.01), TrainConfig(lr=0.1, momentum=0.5, nesterov=True),
               TrainConfig(lr=0.2, momentum=0.0, weight_decay=0.001)]
    singles = [TrialState(c, 10, device) for c in configs]
    stack = StackedAlexNet(singles[0].model, len(configs), device)
    for k, s in enumerate(singles):
        stack.load_trial(k, s.model.state_dict())
    sgd = StackedSGD(stack, configs)
    gen = torch.Generator().manual_seed(0)  # drawn on the CPU: the same gradients on every device
    for p in stack.params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    for k, s in enumerate(singles):
        for p, g in zip(s.model.parameters(), stack.params):
            p.grad = g.grad[k].clone()
        s.step(configs[k].lr)
    sgd.step()
    error = max(relative(stack.params[i][k], p) for k, s in enumerate(singles)
                for i, p in enumerate(s.model.parameters()))
    return report("SGD step: stacked update = single-loop update", error, 1e-6)


def check_epoch(device, data: Path, precision: str) -> int:
    dataset = ensure_dataset(data, progress=False)
    config = TrainConfig(lr=0.01, batch_size=32, epochs=1, image_size=64)
    quiet = lambda m: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        stacked = train_stack([config, config.replace(lr=0.005)], dataset, [Path(tmp) / "a", Path(tmp) / "b"], device,
                              progress=False, log=quiet, precision=precision)[0]
        alone = train(config, dataset, Path(tmp) / "c", device=str(device), progress=False, log=quiet, engine="single",
                      precision=precision)
    error = abs(stacked["final_train_loss"] - alone["final_train_loss"]) / alone["final_train_loss"]
    return report(f"one epoch on the data ({precision}): stacked train loss = alone", error, 1e-2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "alexnet-tiny-bench" / "tiny-image10")
    args = ap.parse_args()
    device = resolve_device(args.device)
    prepare(args.data, progress=False)  # the embedded archive, once (a no-op when prepared)
    failures = run_checks(device, args.data)
    print(f"device checks on {device}: {CHECKS - failures} passed, {failures} failed")
    return failures


CHECKS = 6  # report lines of run_checks


def run_checks(device, data: Path) -> int:
    """Every check on `device`; the number that failed."""
    return (check_dropout(device) + check_losses(device) + check_sgd(device) + check_epoch(device, data, "fp32")
            + check_epoch(device, data, "bf16"))


if __name__ == "__main__":
    sys.exit(main())
