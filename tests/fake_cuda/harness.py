"""A CUDA dry run on a CPU-only torch: the project's training loops on fake tensors labelled cuda:0.

    LD_LIBRARY_PATH=<torch>/lib python tests/fake_cuda/harness.py LIBRARY SCENARIO DATA OUT [--plant FAULT]

LIBRARY is fake_cuda.so (built from fake_cuda.cpp beside this file): it registers c10's test double
of the CUDA device guard and CUDA hooks that say CUDA is built, and must be loaded before torch.
Under torch's FakeTensorMode every tensor has meta storage and no kernel runs, so what this checks is
devices, dtypes, shapes, layouts and the sequence of operations, never numbers. Host-side stand-ins:
`torch.cuda`'s queries; the fused SGD kernel (its own checks: one device and dtype, equal sizes and
strides, dense tensors; then no update); evaluation's host arithmetic and torch.save, which copy
device tensors to the host (one sync each), run on real zeros of the same shapes.

A dispatch mode counts host synchronisations (`.item()`, `.tolist()`, ...: aten._local_scalar_dense)
and blocking host-to-device copies, each with the training step it happened in (`epoch_batches` is
wrapped to number the steps). It prints one JSON line: the events inside steps after an epoch's first
(there must be none), those of the epoch's start (its preamble and first step) and after its last
step, and the scenario's own results.

FAULT plants a known defect, to show that the dry run catches it: "item" calls .item() on each
step's loss; "cpu-tensor" multiplies each step's logits by a tensor left on the CPU;
"constants-per-call" builds normalisation's mean and std at every call (two copies a step).
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import sys
from pathlib import Path

ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)  # before torch: the CUDA hooks are looked up once

import torch  # noqa: E402
import torch.cuda.amp.common  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_map  # noqa: E402

from alexnet_tiny import device, model, runfolder, runlog, trial  # noqa: E402
from alexnet_tiny.config import PRESETS  # noqa: E402
from alexnet_tiny.data import load_dataset  # noqa: E402

train_mod = importlib.import_module("alexnet_tiny.train")  # the module (the package exports the function)
evaluate_mod = importlib.import_module("alexnet_tiny.evaluate")
engine = importlib.import_module("alexnet_tiny.engine")
grid = importlib.import_module("alexnet_tiny.grid")
estimate = importlib.import_module("alexnet_tiny.estimate")
aten = torch.ops.aten
CUDA = torch.device("cuda")


class Events(TorchDispatchMode):
    """Host syncs and blocking host-to-device copies, with the step they happened in (None: outside
    the step loop)."""

    def __init__(self):
        super().__init__()
        self.step: int | str | None = None  # a step's number; "start": the epoch's first; None: outside
        self.steps = 0
        self.epochs = 0  # data streams started (epochs, of one trial or a stack)
        self.events: list[dict] = []

    def add(self, kind: str, what: str) -> None:
        self.events.append({"kind": kind, "step": self.step, "what": what})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            self.add("sync", str(func))
            return 1.0 if args[0].dtype.is_floating_point else 1  # fake values: any number will do
        if func is aten._to_copy.default and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu" \
                and kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cuda" \
                and not kwargs.get("non_blocking", False):
            self.add("h2d", f"{tuple(args[0].shape)} {args[0].dtype}")
        if func is aten.copy_.default and args[0].device.type == "cuda" and args[1].device.type == "cpu":
            self.add("h2d", f"copy_ {tuple(args[1].shape)}")
        return func(*args, **kwargs)


EVENTS = Events()


def stand_ins() -> None:
    """What a CPU-only torch lacks for a CUDA run, replaced by the least that lets the code run."""
    torch.cuda.amp.common.amp_definitely_not_available = lambda: False  # autocast("cuda") stays enabled
    for name, value in {"is_bf16_supported": True, "synchronize": None, "reset_peak_memory_stats": None,
                        "max_memory_allocated": 0, "memory_reserved": 1 << 30, "memory_allocated": 0,
                        "mem_get_info": (80 << 30, 141 << 30)}.items():
        setattr(torch.cuda, name, lambda *a, _v=value, **k: _v)
    resolve = device.resolve_device

    def resolve_device(name: str = "auto") -> torch.device:
        return CUDA if name in ("auto", "cuda", "cuda:0") else resolve(name)
    for module in (device, train_mod, evaluate_mod, grid):
        module.resolve_device = resolve_device
    trial._functional_sgd = checked_fused_sgd

    init = model.AlexNet.__init__

    def real_init(self, *args, **kwargs):
        with unset_fake_temporarily():  # real CPU weights; .to("cuda") makes them fake CUDA ones
            init(self, *args, **kwargs)
    model.AlexNet.__init__ = real_init

    evaluation = evaluate_mod.evaluation

    def host_evaluation(logits, labels, num_classes):
        EVENTS.add("sync", "evaluation copies the logits to the host")
        with unset_fake_temporarily():
            return evaluation(torch.zeros(logits.shape), torch.zeros(labels.shape, dtype=torch.int64), num_classes)
    evaluate_mod.evaluation = engine.evaluation = host_evaluation

    save = runfolder.atomic_torch_save

    def host_save(obj, path):
        EVENTS.add("sync", f"torch.save copies {Path(path).name} to the host")
        with unset_fake_temporarily():
            save(tree_map(lambda t: torch.zeros(t.shape, dtype=t.dtype) if isinstance(t, torch.Tensor) else t, obj),
                 path)
    runfolder.atomic_torch_save = host_save

    batches = trial.epoch_batches

    def numbered_batches(*args, **kwargs):
        """Step k covers the building of its batch (inside the generator) and its training; the
        epoch's preamble and first step count as "start", what follows the last step as outside."""
        stream = iter(batches(*args, **kwargs))
        EVENTS.step = "start"
        EVENTS.epochs += 1
        try:
            while True:
                try:
                    item = next(stream)
                except StopIteration:
                    break
                yield item
                EVENTS.steps += 1
                EVENTS.step = EVENTS.steps
        finally:  # also when the consumer stops early (the throughput probe's few steps)
            EVENTS.step = None
    train_mod.epoch_batches = engine.epoch_batches = estimate.epoch_batches = numbered_batches


def checked_fused_sgd(params, grads, momenta, **kwargs) -> None:
    """The CUDA fused SGD kernel's own checks, then no update (fake tensors hold no values)."""
    for group in (grads, momenta):
        assert len(group) == len(params)
        for p, t in zip(params, group):
            assert t.device == p.device and t.device.type == "cuda", (t.device, p.device)
            assert t.dtype == p.dtype == torch.float32, (t.dtype, p.dtype)
            assert t.shape == p.shape and t.stride() == p.stride(), (t.shape, t.stride(), p.stride())
            assert t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last), t.stride()


def plant(fault: str) -> None:
    losses = trial.TrialLosses.__call__
    if fault == "item":
        def with_item(self, logits, y, lam=1.0):
            loss = losses(self, logits, y, lam)
            loss.sum().item()
            return loss
        trial.TrialLosses.__call__ = with_item
    elif fault == "cpu-tensor":
        def with_cpu_tensor(self, logits, y, lam=1.0):
            return losses(self, logits * torch.ones(logits.shape[-1]), y, lam)
        trial.TrialLosses.__call__ = with_cpu_tensor
    elif fault == "constants-per-call":  # mean and std built at every call, as before they were cached
        transforms = importlib.import_module("alexnet_tiny.transforms")
        transforms._channel_values = lambda values, device: torch.tensor(values, device=device).view(1, 3, 1, 1)
    else:
        raise SystemExit(f"unknown fault {fault}")


# ----------------------------------------------------------------------------- scenarios

def quiet(_msg: str) -> None:
    pass


QUICK = PRESETS["quick"].replace(epochs=1)
STACK = [QUICK, QUICK.replace(lr=0.001, momentum=0.5), QUICK.replace(lr=0.01, weight_decay=0.0, label_smoothing=0.1)]


def single(data, out, precision="fp32"):
    return [train_mod.train(QUICK, data, out / "single", device="cuda", progress=False, log=quiet, engine="single",
                            precision=precision)["status"]]


def stacked(data, out, precision="fp32"):
    records = engine.train_stack(STACK, data, [out / f"stack{k}" for k in range(len(STACK))], CUDA, progress=False,
                                 log=quiet, precision=precision)
    return [r["status"] for r in records]


def resume(data, out):
    """A run stopped after epoch 1 (by a scheduler's rung), resumed from its CPU checkpoint by each driver."""
    config = QUICK.replace(epochs=2)
    statuses = []
    for name, kind in (("single", "single"), ("stacked", "stacked")):
        run = out / f"resume-{name}"
        train_mod.train(config, data, run, device="cuda", progress=False, log=quiet, engine=kind, until=1)
        statuses.append(train_mod.train(config, data, run, device="cuda", resume=True, progress=False, log=quiet,
                                        engine=kind)["status"])
    return statuses


def planner(data, out):
    """The grid's stacks and its estimate on the device."""
    trials = [QUICK.replace(lr=lr) for lr in (0.001, 0.004, 0.016)]
    runs = runlog.run_folders(out, trials)
    groups = grid.plan_groups(trials, runs, data, CUDA, "stacked", None)
    seconds = estimate.estimate_seconds(groups, data, CUDA, runs, engine="stacked")
    bf16 = estimate.estimate_seconds(groups, data, CUDA, runs, engine="stacked", precision="bf16")
    return [len(groups), len(groups[0]), seconds > 0, bf16 > 0]


def device_checks(data, out):
    """bench/device_checks.py's checks (the GPU machine's first stage) on the device. Fake tensors hold
    no values, so every comparison is of devices and shapes and scores no error; the checks' own
    operations (stacked and single models, losses, SGD steps, a short epoch of each driver) run."""
    path = Path(__file__).resolve().parents[2] / "bench" / "device_checks.py"
    spec = importlib.util.spec_from_file_location("device_checks", path)
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)

    def compared(a, b) -> float:
        assert a.device == b.device and a.shape == b.shape, (a.device, b.device, a.shape, b.shape)
        return 0.0
    checks.relative = compared
    lines = []
    checks.report = lambda name, error, tolerance: lines.append(name) or 0
    failures = checks.run_checks(CUDA, Path(data.root))
    return [failures, len(lines) == checks.CHECKS]


SCENARIOS = {"single": single, "device-checks": device_checks, "single-bf16": lambda d, o: single(d, o, "bf16"), "stacked": stacked,
             "stacked-bf16": lambda d, o: stacked(d, o, "bf16"), "resume": resume, "planner": planner}


def main() -> None:
    scenario, data_root, out = sys.argv[2], sys.argv[3], Path(sys.argv[4])
    if "--plant" in sys.argv:
        plant(sys.argv[sys.argv.index("--plant") + 1])
    stand_ins()
    data = load_dataset(data_root, progress=False)
    with FakeTensorMode(allow_non_fake_inputs=True), EVENTS:
        result = SCENARIOS[scenario](data, out)
    inside = [e for e in EVENTS.events if isinstance(e["step"], int)]
    print(json.dumps({"scenario": scenario, "result": result, "steps": EVENTS.steps, "epochs": EVENTS.epochs,
                      "inside_steps": inside,
                      "epoch_start": [e for e in EVENTS.events if e["step"] == "start"],
                      "outside_steps": [e for e in EVENTS.events if e["step"] is None]}))


if __name__ == "__main__":
    main()
