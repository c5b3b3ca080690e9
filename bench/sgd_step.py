"""The stacked engine's SGD step: trials that share their update grouped into shared fused calls (what
`engine.StackedSGD` does) against one fused call per trial and parameter group (what it did before),
on the same stacked weights, gradients and momenta. Same arithmetic, other call count.

    PYTHONPATH=src python bench/sgd_step.py                    # the seed grid's 12 trials, 200 outputs, CPU
    PYTHONPATH=src python bench/sgd_step.py --device cuda --steps 50

Prints one line per way with the calls a step and the median step time, then the ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from alexnet_tiny.config import head_size
from alexnet_tiny.device import resolve_device, synchronize
from alexnet_tiny.engine import StackedAlexNet, StackedSGD
from alexnet_tiny.grid import grid_trials
from alexnet_tiny.model import AlexNet


def per_trial_calls(sgd: StackedSGD) -> list[tuple]:
    """The plan of one fused call per trial and parameter group (weights with their decay, biases)."""
    params, (weights, biases) = list(sgd.stack.params), sgd.groups
    return [(c, sgd.lrs[k], decay, [params[i][k] for i in group], [sgd.momenta[i][k] for i in group],
             [(i, k) for i in group])
            for k, c in enumerate(sgd.configs) for group, decay in ((weights, c.weight_decay), (biases, 0.0))]


def median_step_seconds(sgd: StackedSGD, device, steps: int, warmup: int = 2) -> float:
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        t0 = time.perf_counter()
        sgd.step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--grid", default="seed", help="grid preset whose trials are stacked (default seed: 12 trials)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    configs = grid_trials(args.grid)[1]
    stack = StackedAlexNet(AlexNet(head_size(configs[0], args.classes)), len(configs), device)
    sgd = StackedSGD(stack, configs)
    gen = torch.Generator().manual_seed(0)
    for p in stack.params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    print(f"torch {torch.__version__} on {device} ({torch.backends.cpu.get_cpu_capability()}), "
          f"{torch.get_num_threads()} threads; {len(configs)} trials of grid {args.grid}, "
          f"{sum(p.numel() for p in stack.params) / 1e6:.0f} M stacked parameters")
    grouped = sgd.calls
    results = {}
    for way, calls in (("grouped (engine)", grouped), ("per trial and group", per_trial_calls(sgd)),
                       ("grouped again", grouped)):
        sgd.calls = calls
        results[way] = median_step_seconds(sgd, device, args.steps)
        print(f"{way:>20}: {len(calls):3d} fused calls a step, median {results[way] * 1e3:8.1f} ms")
    grouped_s = min(results["grouped (engine)"], results["grouped again"])
    print(f"per-trial / grouped step time: {results['per trial and group'] / grouped_s:.2f}x")


if __name__ == "__main__":
    main()
