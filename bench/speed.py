"""Training speed, side by side in one process: the naive pipeline against the project's engine.

baseline  the seed's pipeline rebuilt: JPEG bytes decoded with PIL per item inside a DataLoader,
          resize + random crop + flip (or, with the seed preset's --input pad, the padded canvas and a flip)
          per item, to tensor, normalise; eager fp32, SGD with momentum
          (PyTorch defaults), `.item()` after every step.
engine    `alexnet_tiny.train.train_one_epoch` on the decoded uint8 cache with batched transforms,
          and `evaluate` for validation and test; with --stack K, the multi-trial engine instead
          (`alexnet_tiny.engine`): K trials (learning rates 1x..2x) trained together as one stacked
          model, counted as K trial-images per image.

Both train the same `AlexNet` at the same batch and image size, on the same device. Each trial
builds one model per pipeline and runs their epochs as adjacent pairs, in alternating order; on
a shared, noisy machine the load then hits both sides of a pair alike, so the speedup is the
median over pairs of engine / baseline training images per second. Each trial-epoch runs --steps
steps and evaluates --eval-images images of val and of test; times are projected to the seed grid
(12 trials x 35 epochs x 4,000 training images, val + test = 1,000 images every epoch).

    python bench/speed.py                                   # CPU, 224 px, batch 12
    python bench/speed.py --device cuda --trials 3 --epochs 2 --steps 100 --bf16 --channels-last
    python bench/speed.py --stack 12                        # 12 trials at once, as `grid` runs the seed grid on a GPU
    python bench/speed.py --breakdown 5                     # each part of a step, timed alone
    python bench/speed.py --profile 3                       # torch.profiler over 3 steps of each
"""
from __future__ import annotations

import argparse
import io
import math
import random
import resource
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from alexnet_tiny.allocator import retained_heap
from alexnet_tiny.config import INPUTS, PRESETS, TrainConfig, head_size
from alexnet_tiny.data import Split, ensure_dataset, prepare
from alexnet_tiny.engine import StackedAlexNet, StackedSGD, evaluate_stack, train_stack_epoch
from alexnet_tiny.errors import UserError
from alexnet_tiny.model import AlexNet, count_parameters
from alexnet_tiny.device import autocast, resolve_device
from alexnet_tiny.evaluate import evaluate
from alexnet_tiny.progress import format_duration
from alexnet_tiny.train import CPU_TRAINING_LAYOUT, TrialState, train_one_epoch
from alexnet_tiny.trial import TrialLosses
from alexnet_tiny.transforms import MEAN, STD, Preprocessing, resize_size, train_batch

SEED_GRID = {"trials": 12, "epochs": 35, "train_images": 4000, "eval_images": 1000}
FLOOR_BYTES_PER_PARAM = 30  # weight, gradient and momentum read and written once per step (fp32 master)
DEFAULT_DATA = Path(tempfile.gettempdir()) / "alexnet-tiny-bench" / "tiny-image10"
PIPELINES = ("baseline", "engine")


# ----------------------------------------------------------------------------- the naive baseline

class JpegItems(torch.utils.data.Dataset):
    """One JPEG decoded and transformed per `__getitem__`, in Python, as the seed notebook did."""

    def __init__(self, blobs: list[bytes], labels: torch.Tensor, image_size: int, train: bool, input: str = "resize"):
        self.blobs, self.labels, self.size, self.train, self.input = blobs, labels.tolist(), image_size, train, input
        self.resize = resize_size(image_size)
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, i):
        im = Image.open(io.BytesIO(self.blobs[i])).convert("RGB")
        if self.input == "pad":  # the study's CenterCrop(S) of a 64 px image: a black S x S canvas around it
            canvas = Image.new("RGB", (self.size, self.size))
            canvas.paste(im, ((self.size - im.width) // 2, (self.size - im.height) // 2))
            im = canvas
        else:
            im = im.resize((self.resize, self.resize), Image.BILINEAR)
            margin = self.resize - self.size
            x0, y0 = (random.randint(0, margin), random.randint(0, margin)) if self.train else (margin // 2, margin // 2)
            im = im.crop((x0, y0, x0 + self.size, y0 + self.size))
        if self.train and random.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
        return (x - self.mean) / self.std, self.labels[i]


def baseline_loader(blobs, labels, image_size, batch_size, train, seed, workers, pin_memory, input="resize"):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(JpegItems(blobs, labels, image_size, train, input), batch_size=batch_size,
                                       shuffle=train, generator=generator, num_workers=workers,
                                       pin_memory=pin_memory)


def baseline_train(model, optimizer, loader, device) -> int:
    model.train()
    n = correct = 0
    loss_sum = 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss = F.cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    return n


@torch.no_grad()
def baseline_eval(model, loader, device) -> int:
    model.eval()
    n = correct = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    return n


# ----------------------------------------------------------------------------- measurement helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    hwm = proc_field("/proc/self/status", "VmHWM:")  # e.g. "  123456 kB"
    if hwm is not None:
        return int(hwm.split()[0]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process-wide, never reset


def minor_faults() -> int:
    """Page faults served without I/O so far (each first touch of a fresh page)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def training_flops_per_image(image_size: int, num_classes: int) -> float:
    """Forward + backward FLOPs of one training image, counted on the model itself."""
    from torch.utils.flop_counter import FlopCounterMode
    model = AlexNet(num_classes)
    x = torch.zeros(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(1, dtype=torch.int64)).backward()
    return float(counter.get_total_flops())


def best_seconds(fn, device: torch.device, repeats: int) -> float:
    """Fastest of `repeats` timed calls, after one untimed call."""
    best = math.inf
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0) if i else best
    return best


def copy_bandwidth(device: torch.device, mbytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy (read + write), the memory floor's yardstick."""
    src = torch.ones(mbytes << 18, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / best_seconds(lambda: dst.copy_(src), device, repeats)


def matmul_rate(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """FLOP/s of a large square matmul (MKL's sgemm on a CPU): the machine's own compute yardstick."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    return 2 * n ** 3 / best_seconds(lambda: a @ a, device, repeats)


# ----------------------------------------------------------------------------- one trial-epoch of each pipeline

class Bench:
    def __init__(self, args, dataset, device):
        self.args, self.device = args, device
        self.num_classes = dataset.num_classes
        n_train, n_eval = args.steps * args.batch_size, args.eval_images
        self.train = subset(dataset.splits["train"], n_train)
        self.evals = [subset(dataset.splits[s], n_eval) for s in ("val", "test")] if n_eval else []
        read = lambda split: [(dataset.root / f).read_bytes() for f in split.files]
        self.train_blobs = read(self.train)
        self.eval_blobs = [read(s) for s in self.evals]
        self.peak = {name: 0 for name in PIPELINES}

    def config(self, trial: int) -> TrainConfig:
        a = self.args
        return TrainConfig(batch_size=a.batch_size, image_size=a.image_size, epochs=a.epochs, seed=trial, input=a.input,
                           outputs=a.outputs)

    @property
    def prep(self) -> Preprocessing:
        """The evaluation preprocessing of the trials timed (resize and crop, or the padded canvas)."""
        return Preprocessing.for_config(self.config(0))

    def model(self, pipeline: str, config: TrainConfig):
        torch.manual_seed(config.seed)
        model = AlexNet(head_size(config, self.num_classes)).to(self.device)
        if pipeline == "baseline":
            return model, torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
        if self.args.stack > 1:
            stack = StackedAlexNet(model, self.args.stack, self.device, conv=self.args.stack_conv)
            trials = [config.replace(lr=config.lr * (1 + k / self.args.stack)) for k in range(self.args.stack)]
            return stack, StackedSGD(stack, trials)
        state = TrialState(config, self.num_classes, self.device)
        if self.args.channels_last:
            state.layout(torch.channels_last)
        return state.model, state

    def autocast(self, pipeline: str):
        if pipeline == "engine" and self.args.bf16:
            return autocast(self.device, "bf16")  # the loops' own region (no stale bf16 weight cache)
        return nullcontext()

    def epoch(self, pipeline: str, model, optimizer, config: TrainConfig, epoch: int, train: Split | None = None):
        """Train one (short) epoch and evaluate it: images, seconds and page faults of each part."""
        a, dev = self.args, self.device
        train = train if train is not None else self.train
        pin = dev.type == "cuda"
        reset_peak_memory(dev)
        faults = minor_faults()
        sync(dev)
        t0 = time.perf_counter()
        with self.autocast(pipeline):
            if pipeline == "baseline":
                random.seed(config.seed * 1000 + epoch)
                blobs = self.train_blobs[:len(train)]
                loader = baseline_loader(blobs, train.labels, a.image_size, a.batch_size, True, epoch, a.workers, pin,
                                         a.input)
                n_train = baseline_train(model, optimizer, loader, dev)
            elif isinstance(model, StackedAlexNet):
                n_train = model.k * len(train)
                train_stack_epoch(model, optimizer, train, config, TrialLosses([0.0] * model.k, dev), dev, epoch,
                                  progress=False)
            else:
                n_train = len(train)
                train_one_epoch(optimizer, train, dev, epoch, progress=False)
            sync(dev)
            t1 = time.perf_counter()
            faults = minor_faults() - faults
            n_eval = 0
            for split, blobs in zip(self.evals, self.eval_blobs):
                if pipeline == "baseline":
                    loader = baseline_loader(blobs, split.labels, a.image_size, a.batch_size, False, 0, a.workers, pin,
                                             a.input)
                    n_eval += baseline_eval(model, loader, dev)
                elif isinstance(model, StackedAlexNet):
                    evaluate_stack(model, split, self.prep, dev, self.num_classes)
                    n_eval += model.k * len(split)
                else:
                    evaluate(model, split, self.prep, dev, self.num_classes, "bf16" if a.bf16 else "fp32")
                    n_eval += len(split)
        sync(dev)
        t2 = time.perf_counter()
        self.peak[pipeline] = max(self.peak[pipeline], peak_memory_bytes(dev))
        return {"train_images": n_train, "train_s": t1 - t0, "eval_images": n_eval, "eval_s": t2 - t1,
                "train_faults": faults}


def subset(split: Split, n: int) -> Split:
    return Split(split.images[:n], split.labels[:n], split.files[:n])


# ----------------------------------------------------------------------------- reporting

def train_ips(row: dict) -> float:
    return row["train_images"] / row["train_s"]


def eval_ips(row: dict) -> float:
    return row["eval_images"] / row["eval_s"] if row["eval_images"] else math.nan


def summarise(rows: list[dict], args, flops_per_image: float, params: int, bandwidth: float) -> dict:
    train_rate = statistics.median(map(train_ips, rows))
    eval_rate = statistics.median(map(eval_ips, rows))
    steps_per_epoch = math.ceil(SEED_GRID["train_images"] / args.batch_size)
    epoch_s = SEED_GRID["train_images"] / train_rate + (SEED_GRID["eval_images"] / eval_rate if args.eval_images else 0)
    grid_steps = SEED_GRID["trials"] * SEED_GRID["epochs"] * steps_per_epoch
    floor_s = FLOOR_BYTES_PER_PARAM * params * grid_steps / bandwidth
    grid_s = SEED_GRID["trials"] * SEED_GRID["epochs"] * epoch_s
    return {
        "epoch_s": epoch_s, "train_ips": train_rate, "eval_ips": eval_rate, "grid_s": grid_s,
        "measured_s": sum(r["train_s"] + r["eval_s"] for r in rows),
        "tflops": flops_per_image * train_rate / 1e12,
        "floor_gbs": FLOOR_BYTES_PER_PARAM * params * train_rate / args.batch_size / 1e9,
        "x_floor": grid_s / floor_s, "floor_s": floor_s,
        "faults_per_step": statistics.median(r["train_faults"] * args.batch_size / r["train_images"] for r in rows),
    }


def print_table(summaries: dict, peaks: dict, device) -> None:
    mem = "peak GPU alloc" if device.type == "cuda" else "peak RSS"
    head = (f"{'pipeline':9} {'s/trial-epoch':>13} {'train img/s':>11} {'eval img/s':>10} {'seed grid':>10} "
            f"{'x floor':>8} {'measured':>9} {'TFLOP/s':>8} {'floor GB/s':>10} {mem:>14} {'faults/step':>11}")
    print(head)
    print("-" * len(head))
    for name, s in summaries.items():
        print(f"{name:9} {s['epoch_s']:13.1f} {s['train_ips']:11.1f} {s['eval_ips']:10.1f} "
              f"{format_duration(s['grid_s']):>10} {s['x_floor']:8.1f} {s['measured_s']:8.1f}s {s['tflops']:8.3f} "
              f"{s['floor_gbs']:10.2f} {peaks[name] / 2**30:10.2f} GiB {s['faults_per_step']:11.0f}")


def breakdown(bench: Bench, repeats: int) -> None:
    """Each part of one training step of each pipeline, timed alone, `repeats` rounds round-robin
    (so a noisy neighbour hits every part alike): min and median ms and page faults per step."""
    a, dev = bench.args, bench.device
    config = bench.config(0)
    (model_b, sgd_b), (model_e, sgd_e) = bench.model("baseline", config), bench.model("engine", config)
    loader = baseline_loader(bench.train_blobs, bench.train.labels, a.image_size, a.batch_size, True, 0, a.workers,
                             dev.type == "cuda", a.input)
    images = bench.train.images.to(dev)
    generator = torch.Generator().manual_seed(0)
    idx = torch.arange(a.batch_size, device=dev)
    x, y = next(iter(loader))
    x, y = x.to(dev), y.to(dev)

    def forward_backward(model, optimizer):
        optimizer.zero_grad()  # gradients set to None in both
        F.cross_entropy(model(x), y).backward()

    if dev.type == "cpu" and isinstance(sgd_e, TrialState):  # as train_one_epoch trains on the CPU
        sgd_e.layout(CPU_TRAINING_LAYOUT)

    def forward_backward_retained():
        with retained_heap():
            forward_backward(model_e, sgd_e)

    parts = {
        "baseline: PIL decode + resize (or pad) + crop + flip + normalise per item, collate": lambda: next(iter(loader)),
        "engine: batched crop + flip + normalise of uint8 cache (grid_sample)":
            lambda: train_batch(images[idx], a.image_size, generator, input=a.input),
        "baseline: zero_grad + forward + backward, gradients freshly mapped": lambda: forward_backward(model_b, sgd_b),
        "engine: zero_grad + forward + backward, retained heap" + (", NHWC" if dev.type == "cpu" else ""):
            forward_backward_retained,
        "baseline: SGD step, PyTorch's default (a loop over tensors)": sgd_b.step,
        "engine: SGD step, fused": sgd_e.step if isinstance(sgd_e, StackedSGD) else lambda: sgd_e.step(config.lr),
    }
    times = {name: [] for name in parts}
    faults = {name: [] for name in parts}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name, part in parts.items():
            sync(dev)
            f0, t0 = minor_faults(), time.perf_counter()
            part()
            sync(dev)
            if round_:
                times[name].append(time.perf_counter() - t0)
                faults[name].append(minor_faults() - f0)
    print(f"\n{'part of one step (' + str(a.image_size) + ' px, batch ' + str(a.batch_size) + ')':75} "
          f"{'min ms':>8} {'median ms':>9} {'faults':>7}")
    totals = {name: [0.0, 0.0] for name in PIPELINES}
    for name in parts:
        low, mid = min(times[name]) * 1000, statistics.median(times[name]) * 1000
        totals[name.split(":")[0]][0] += low
        totals[name.split(":")[0]][1] += mid
        print(f"{name:75} {low:8.1f} {mid:9.1f} {statistics.median(faults[name]):7.0f}")
    for name, (low, mid) in totals.items():
        print(f"{name + ': sum of its parts':75} {low:8.1f} {mid:9.1f}")
    print(f"engine / baseline from the sums: {totals['baseline'][0] / totals['engine'][0]:.2f}x (min), "
          f"{totals['baseline'][1] / totals['engine'][1]:.2f}x (median)")


def profile_steps(bench: Bench, steps: int) -> None:
    """torch.profiler over `steps` training steps of each pipeline (after one warm-up epoch)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    sort = "self_device_time_total" if bench.device.type == "cuda" else "self_cpu_time_total"
    short = subset(bench.train, steps * bench.args.batch_size)
    for name in PIPELINES:
        config = bench.config(0)
        model, optimizer = bench.model(name, config)
        bench.epoch(name, model, optimizer, config, 1, short)
        with profile(activities=activities) as prof:
            bench.epoch(name, model, optimizer, config, 2, short)
        print(f"\n== {name}: {steps} steps at {bench.args.image_size} px, batch {bench.args.batch_size} "
              f"(+ eval of {2 * bench.args.eval_images} images)")
        print(prof.key_averages().table(sort_by=sort, row_limit=bench.args.profile_rows))


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--data", type=Path, default=None,
                   help=f"prepared dataset folder (default: the embedded archive prepared into {DEFAULT_DATA})")
    p.add_argument("--trials", type=int, default=2, help="trials, a fresh model per pipeline each (default 2)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial, one pair each (default 3)")
    p.add_argument("--steps", type=int, default=4, help="training steps per epoch, timing only (default 4)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each pipeline first (default 2)")
    p.add_argument("--eval-images", type=int, default=24,
                   help="images of val and of test evaluated after each epoch (default 24; 0 skips)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="batch size and image size of this train preset (explicit -b / --image-size win)")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="default 12 (the seed's), or the preset's")
    p.add_argument("--image-size", type=int, default=None, help="default the seed preset's (150), or the preset's")
    p.add_argument("--input", default=None, choices=INPUTS,
                   help="how a 64 px image becomes --image-size: resize (and crop) or pad (the black canvas the seed "
                        "preset trains on); default the preset's (the seed's: pad)")
    p.add_argument("--workers", type=int, default=0, help="baseline DataLoader workers (default 0, as the seed)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    p.add_argument("--stack", type=int, default=1, metavar="K",
                   help="engine: K trials trained together by the stacked engine (default 1: train.py's loop)")
    p.add_argument("--stack-conv", default="grouped", choices=["grouped", "split"],
                   help="stacked convs as one grouped conv (default, as the engine) or one conv per trial")
    p.add_argument("--bf16", action="store_true", help="engine under bf16 autocast (baseline stays fp32)")
    p.add_argument("--channels-last", action="store_true",
                   help="engine model in channels_last (on the CPU train_one_epoch already trains in it)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="instead of timing, profile STEPS steps of each pipeline with torch.profiler")
    p.add_argument("--profile-rows", type=int, default=20)
    p.add_argument("--breakdown", type=int, default=0, metavar="ROUNDS",
                   help="instead of timing epochs, time each part of a step alone, ROUNDS rounds")
    args = p.parse_args(argv)
    shape = PRESETS[args.preset or "seed"]
    args.batch_size = args.batch_size or shape.batch_size
    args.image_size = args.image_size or shape.image_size
    args.input = args.input or shape.input
    args.outputs = shape.outputs
    for name in ("trials", "epochs", "steps", "batch_size", "stack"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected an integer >= 1")
    if args.image_size < 64:
        p.error(f"--image-size {args.image_size}: expected an integer >= 64")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        if args.data is None:  # the bench's own copy of the embedded archive (prepared once; then a no-op)
            prepare(DEFAULT_DATA, progress=False)
        dataset = ensure_dataset(args.data if args.data is not None else DEFAULT_DATA, progress=False)
    except UserError as e:
        raise SystemExit(f"speed.py: {e}") from None
    need = args.steps * args.batch_size
    if need > len(dataset.splits["train"]):
        raise SystemExit(f"speed.py: --steps {args.steps} x --batch-size {args.batch_size} = {need} images: "
                         f"more than the {len(dataset.splits['train'])} training images")
    bench = Bench(args, dataset, device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak_before = matmul_rate(device, dtype)  # again after the pipelines: the yardstick is the faster of the two
    print(f"device {device} ({device_name(device)}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.image_size} px, batch {args.batch_size}, {args.trials} trials x {args.epochs} epochs x "
          f"{args.steps} steps, eval {args.eval_images} val + {args.eval_images} test images per epoch; "
          f"engine: {'bf16 autocast' if args.bf16 else 'fp32'}{', channels_last' if args.channels_last else ''}"
          f"{f', {args.stack} trials stacked, {args.stack_conv} convs (rates are trial-images/s)' if args.stack > 1 else ''}")
    if args.profile:
        profile_steps(bench, args.profile)
        return
    if args.breakdown:
        breakdown(bench, args.breakdown)
        return

    for name in PIPELINES:  # warm-up: allocator, oneDNN/cuDNN primitives, lazy CUDA init
        config = bench.config(0)
        model, optimizer = bench.model(name, config)
        bench.epoch(name, model, optimizer, config, 1, subset(bench.train, args.warmup * args.batch_size))
    bench.peak = {name: 0 for name in PIPELINES}

    rows = {name: [] for name in PIPELINES}
    ratios = []  # engine / baseline training img/s of each adjacent pair: the shared load cancels
    for trial in range(args.trials):
        models = {name: bench.model(name, bench.config(trial)) for name in PIPELINES}
        for epoch in range(1, args.epochs + 1):
            order = PIPELINES if (trial * args.epochs + epoch) % 2 else PIPELINES[::-1]
            pair = {}
            for name in order:
                row = pair[name] = bench.epoch(name, *models[name], bench.config(trial), epoch)
                rows[name].append(row)
            ratios.append(train_ips(pair["engine"]) / train_ips(pair["baseline"]))
            print(f"  trial {trial} epoch {epoch}: " + ", ".join(
                f"{name} {train_ips(pair[name]):.1f}" + (f" (eval {eval_ips(pair[name]):.1f})" if args.eval_images else "")
                for name in order) + f" img/s; ratio {ratios[-1]:.2f}", flush=True)
        del models

    outputs = head_size(bench.config(0), dataset.num_classes)  # 200 with the seed preset
    flops = training_flops_per_image(args.image_size, outputs)
    params = count_parameters(AlexNet(outputs))
    bandwidth = copy_bandwidth(device)
    summaries = {name: summarise(rows[name], args, flops, params, bandwidth) for name in PIPELINES}
    print()
    print_table(summaries, bench.peak, device)
    floor_s = summaries["engine"]["floor_s"]
    print(f"\nmedians over {args.trials * args.epochs} trial-epochs each; 'seed grid' projects 12 trials x 35 epochs x "
          f"(4,000 train + 1,000 eval images); 'measured' is this run's own time.\n"
          f"floors: {flops / 1e9:.2f} GFLOP per training image; memory floor {FLOOR_BYTES_PER_PARAM} B x "
          f"{params / 1e6:.1f} M params per step at the measured copy bandwidth {bandwidth / 1e9:.1f} GB/s "
          f"= {format_duration(floor_s)} for the seed grid ('x floor' = seed grid / that)")
    peak = max(peak_before, matmul_rate(device, dtype))
    grid_flops = SEED_GRID["trials"] * SEED_GRID["epochs"] * SEED_GRID["train_images"] * flops
    n = 8192 if device.type == "cuda" else 2048
    print(f"compute: {str(dtype)[6:]} matmul ({n}x{n}) measured at {peak / 1e9:.1f} GFLOP/s in this run (best of 10, "
          f"before and after the pipelines); training "
          f"reaches " + ", ".join(f"{name} {s['tflops'] * 1e3:.1f} GFLOP/s = {s['tflops'] * 1e12 / peak:.0%}"
                                  for name, s in summaries.items())
          + f" of it; compute floor of the seed grid {format_duration(grid_flops / peak)}")
    print(f"engine / baseline training img/s: median {statistics.median(ratios):.2f} over {len(ratios)} adjacent pairs "
          f"(range {min(ratios):.2f} to {max(ratios):.2f}); ratio of the medians above "
          f"{summaries['engine']['train_ips'] / summaries['baseline']['train_ips']:.2f}")
    print(f"speedup: {statistics.median(ratios):.2f}x")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = proc_field("/proc/cpuinfo", "model name")
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{model.split(':', 1)[-1].strip()}, {capability}" if model is not None else capability


def proc_field(path: str, prefix: str) -> str | None:
    """The rest of the first line of a /proc file that starts with `prefix` (None off Linux)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix):]
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main()
