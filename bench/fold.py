"""FC1 on the cells the adaptive pool repeats (`model.folded_fc1`) against the pooled path, timed.

For each input size, one AlexNet (10 outputs, dropout 0, Kaiming init) at batch 64: training steps
(forward, backward, torch's fused SGD step) and evaluation forwards, alternating between the folded
path and the pooled one (`AlexNet.fold_fc1 = False`) step by step, so that a busy machine slows both
alike. Prints the median milliseconds of each and their ratio; the last line is the training speedup
at 64 px.

    python bench/fold.py                      # 64, 96 and 150 px, 10 steps each
    python bench/fold.py --sizes 64 --steps 20
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from alexnet_tiny.model import AlexNet


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64,96,150", help="input sizes, comma-separated (default 64,96,150)")
    p.add_argument("--steps", type=int, default=10, help="timed steps of each path per size (default 10)")
    p.add_argument("-b", "--batch-size", type=int, default=64)
    args = p.parse_args()
    print(f"fold: torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, batch {args.batch_size}, dropout 0", flush=True)
    speedup_64 = None
    for size in (int(s) for s in args.sizes.split(",")):
        torch.manual_seed(0)
        model = AlexNet(10, dropout=0.0, init="kaiming").to(memory_format=torch.channels_last)
        sgd = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, fused=True)
        x = torch.randn(args.batch_size, 3, size, size).to(memory_format=torch.channels_last)
        y = torch.arange(args.batch_size) % 10

        def train_step():
            model.train()
            sgd.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            sgd.step()

        @torch.no_grad()
        def eval_step():
            model.eval()
            model(x)

        times = {(path, kind): [] for path in ("folded", "pooled") for kind in ("train", "eval")}
        for step in range(args.steps + 1):
            for path in (("folded", "pooled") if step % 2 else ("pooled", "folded")):
                AlexNet.fold_fc1 = path == "folded"
                for kind, fn in (("train", train_step), ("eval", eval_step)):
                    ms = timed(fn)
                    if step:  # the first round warms up
                        times[(path, kind)].append(ms)
        AlexNet.fold_fc1 = True
        med = {k: statistics.median(v) for k, v in times.items()}
        for kind in ("train", "eval"):
            ratio = med[("pooled", kind)] / med[("folded", kind)]
            print(f"{size} px {kind}: pooled {med[('pooled', kind)]:.0f} ms, folded {med[('folded', kind)]:.0f} ms "
                  f"a batch: {ratio:.2f}x", flush=True)
            if size == 64 and kind == "train":
                speedup_64 = ratio
    if speedup_64 is not None:
        print(f"fold: training at 64 px {speedup_64:.2f}x faster with FC1 on the repeated cells")


if __name__ == "__main__":
    main()
