"""Grid search: presets and TOML grids expanded to trials, run one after another (or on Ray),
resumable at any point, summarised in results.csv / results.md.

A grid folder holds grid.json (the trials), one run folder per trial (exactly what `train`
writes) and the results files. The run folders are the state: a trial whose config.json says done
or diverged is skipped on --resume, any other continues from its last.pt.
"""
from __future__ import annotations

import itertools
import json
import time
from functools import partial
from pathlib import Path

import torch

from . import runlog
from .config import HYPERPARAMETERS, PRESETS, TrainConfig, coerce
from .data import Dataset, ensure_dataset, write_json
from .device import check_precision, resolve_device, synchronize
from .engine import StackedAlexNet, StackedSGD, plan_stacks, resolve_engine
from .errors import UserError
from .model import AlexNet
from .progress import format_duration, progress_bar
from .results import collect_results, write_results
from .train import CPU_TRAINING_LAYOUT, TrialState, run_trials
from .transforms import train_batch
from .trial import TrialLosses

BACKENDS = ("local", "ray")

GRID_PRESETS: dict[str, dict] = {
    # The original study: 3 learning rates x 2 momenta x 2 gammas, batch 12, 35 epochs at 224.
    "seed": {"preset": "seed", "lr": [0.0001, 0.001, 0.005], "momentum": [0.9, 0.5], "gamma": [0.1, 0.01]},
    # Same shape, sized for a 2-core CPU: several learning rates and momenta at 64x64, a few epochs.
    "quick": {"preset": "quick", "lr": [0.02, 0.01], "momentum": [0.9, 0.5], "epochs": [3]},
    # The recipe's ablation (a GPU job): the full recipe, then each ingredient removed or added alone,
    # over three seeds.
    "recipe": {"preset": "recipe", "seed": [0, 1, 2], "variant": [
        {}, {"augment": "crop"}, {"label_smoothing": 0.0}, {"weight_decay": 0.0},
        {"schedule": "step", "warmup_epochs": 0, "step_size": 20, "gamma": 0.1}, {"mixup": 0.2}]},
}


# ----------------------------------------------------------------------------- grids

def load_grid_toml(path: Path | str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: grid file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None


def expand(grid: dict, where: str = "grid") -> list[TrainConfig]:
    """The product of the grid's value lists, on top of its `preset`, in a stable order.

    Optional `variant` tables (TOML `[[variant]]`) are alternative sets of overrides, each crossed
    with the product: an ablation is a list of variants crossed with a list of seeds."""
    grid = dict(grid)
    base_name = grid.pop("preset", "seed")
    if not isinstance(base_name, str) or base_name not in PRESETS:
        raise UserError(f"{where}: preset = {base_name!r}: expected one of {', '.join(PRESETS)}")
    variants = grid.pop("variant", [{}])
    if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
        raise UserError(f"{where}: variant must be a non-empty list of tables ([[variant]])")
    variants = [coerce(v, f"{where} [[variant]]") for v in variants]
    lists = {}
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise UserError(f"{where}: {key} is an empty list (expected at least one value)")
        lists[key] = [coerce({key: v}, where)[key] for v in values]
    keys = [k for k in HYPERPARAMETERS if k in lists]
    try:
        trials = [PRESETS[base_name].replace(**{**variant, **dict(zip(keys, combo))}).validate()
                  for variant in variants for combo in itertools.product(*(lists[k] for k in keys))]
    except UserError as e:  # a value out of range: say which file it came from
        raise UserError(f"{where}: {e}") from None
    names = [t.name() for t in trials]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UserError(f"{where}: trial {duplicate} appears twice (repeated value in a list)")
    return trials


def grid_trials(preset: str | None = None, config: Path | str | None = None) -> tuple[str, list[TrainConfig]]:
    """(grid name, trials) from --preset or --config."""
    if config is not None:
        return Path(config).stem, expand(load_grid_toml(config), where=str(config))
    preset = preset or "quick"
    if preset not in GRID_PRESETS:
        raise UserError(f"--preset {preset}: unknown grid preset (expected one of {', '.join(GRID_PRESETS)})")
    return preset, expand(GRID_PRESETS[preset], where=f"grid preset {preset}")


# ----------------------------------------------------------------------------- estimate

def measure_throughput(config: TrainConfig, dataset: Dataset, device, steps: int = 3, stack: int = 1) -> float:
    """Training images per second for this config on this device, from a few real steps of the loop
    that will run; with stack > 1, trial-images per second of that many trials stacked by the engine."""
    dev = torch.device(device)
    if stack > 1:
        model = StackedAlexNet(AlexNet(dataset.num_classes), stack, dev)
        optimizer = StackedSGD(model, [config] * stack)
        step = optimizer.step
    else:
        state = TrialState(config, dataset.num_classes, dev)
        if dev.type == "cpu":
            state.layout(CPU_TRAINING_LAYOUT)
        model, optimizer = state.model, state
        step = partial(state.step, config.lr)
    loss_fn = TrialLosses([config.label_smoothing] * stack, dev)
    gen = torch.Generator().manual_seed(0)
    images = dataset.splits["train"].images[:config.batch_size].to(dev)
    labels = dataset.splits["train"].labels[:config.batch_size].to(dev)
    for i in range(steps + 1):
        if i == 1:
            synchronize(dev)
            t0 = time.perf_counter()
        out = model(train_batch(images, config.image_size, gen))
        loss = loss_fn(out if stack > 1 else out.unsqueeze(0), labels).sum()
        optimizer.zero_grad()
        loss.backward()
        step()
    synchronize(dev)
    return stack * steps * len(labels) / (time.perf_counter() - t0)


def estimate_seconds(stacks: list[list[TrainConfig]], dataset: Dataset, device) -> float:
    """Train images / measured rate, plus evaluation (about a third of a training step per image),
    for trials run in these stacks (lists of one trial each when trained one at a time)."""
    n_train, n_eval = len(dataset.splits["train"]), len(dataset.splits["val"]) + len(dataset.splits["test"])
    rates = {}
    total = 0.0
    for group in stacks:
        t = group[0]
        key = (t.batch_size, t.image_size, len(group))
        if key not in rates:
            rates[key] = measure_throughput(t, dataset, device, stack=len(group))
        total += t.epochs * (n_train + n_eval / 3) * len(group) / rates[key]
    return total


# ----------------------------------------------------------------------------- running

def _check_grid_folder(out: Path, trials: list[TrainConfig], resume: bool) -> None:
    path = out / runlog.GRID_FILE
    names = [t.name() for t in trials]
    if path.exists():
        previous = json.loads(path.read_text()).get("trials", [])
        if not resume:
            raise UserError(f"{out}: grid folder already exists; add --resume to continue it or choose another --out")
        if [t["name"] for t in previous] != names:
            raise UserError(f"{out}: holds a different grid; resume it with the same --preset/--config or choose another --out")
    elif out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"{out}: exists and is not a grid folder; choose another --out")


def todo_trials(out: Path, trials: list[TrainConfig]) -> list[TrainConfig]:
    """The trials whose run folder does not say done or diverged."""
    return [t for t in trials if (runlog.read_config(out / t.name()) or {}).get("status") not in runlog.FINISHED]


def plan_groups(todo: list[TrainConfig], out: Path, dataset: Dataset, dev: torch.device, engine: str,
                max_stack: int | None) -> list[list[TrainConfig]]:
    """The order the local backend runs the trials in: stacks of the engine, or one trial at a time."""
    if engine != "stacked" or not todo:
        return [[t] for t in todo]
    stacks = plan_stacks(todo, [out / t.name() for t in todo], dev, dataset.num_classes, max_stack)
    return [[todo[i] for i in s] for s in stacks]


def announce(trials: list[TrainConfig], todo: list[TrainConfig], groups: list[list[TrainConfig]], dataset: Dataset,
             dev, estimate: bool, log) -> None:
    """The grid's first lines: trial count, the duration measured on this device, the stacks."""
    line = f"grid: {len(trials)} trials ({len(trials) - len(todo)} already finished)"
    if estimate and todo:
        eta = estimate_seconds(groups, dataset, dev)
        warn = " -- many hours on a CPU: consider a GPU or --preset quick" if eta > 3 * 3600 else ""
        line += f", estimated {format_duration(eta)} on {dev}{warn}"
    log(line)
    if any(len(g) > 1 for g in groups):
        log(f"stacked engine: {len(todo)} trials in {len(groups)} stack(s) of {', '.join(str(len(g)) for g in groups)}")


def run_local(groups: list[list[TrainConfig]], trials: list[TrainConfig], out: Path, dataset: Dataset, dev,
              engine: str, precision: str, progress: bool, log) -> None:
    """Each group in turn (a stack, or one trial), results.csv/md rewritten after each."""
    bar = progress_bar(total=len(trials), initial=len(trials) - sum(map(len, groups)), desc="trials", unit="trial",
                       enabled=progress, position=1)
    try:
        for group in groups:
            run_trials(group, dataset, [out / c.name() for c in group], dev, progress, log=log, engine=engine,
                       precision=precision)
            write_results(out, collect_results(out, trials))
            bar.update(len(group))
    finally:
        bar.close()


def run_grid(trials: list[TrainConfig], out: Path | str, data=None, device: str = "auto", resume: bool = False,
             backend: str = "local", progress: bool = True, log=print, ray_options: dict | None = None,
             estimate: bool = True, engine: str = "auto", max_stack: int | None = None,
             precision: str = "fp32") -> list[dict]:
    """Run (or resume) every trial into `out`; returns the result rows, also written as results.csv/md.
    engine (local backend): "stacked" trains trials that share a data stream together (engine.py),
    "single" one after another, "auto" picks stacked on a GPU; max_stack caps the trials per stack."""
    out = Path(out)
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if backend == "ray":
        from .ray_backend import run_trials_on_ray  # a missing Ray stops here, before any work
        if precision != "fp32":
            raise UserError(f"--precision {precision}: the Ray backend trains in fp32 only")
    check_precision(precision)
    _check_grid_folder(out, trials, resume)
    dataset = ensure_dataset(data, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / runlog.GRID_FILE, {"trials": [{"name": t.name(), "config": t.to_dict()} for t in trials],
                                 "dataset": str(dataset.root)})
    todo = todo_trials(out, trials)
    if backend == "ray":
        announce(trials, todo, [[t] for t in todo], dataset, torch.device("cpu"), estimate, log)
        run_trials_on_ray(todo, dataset.root, out, **(ray_options or {}), progress=progress, log=log)
    else:
        dev = resolve_device(device)
        engine = resolve_engine(engine, dev, log)
        groups = plan_groups(todo, out, dataset, dev, engine, max_stack)
        announce(trials, todo, groups, dataset, dev, estimate, log)
        run_local(groups, trials, out, dataset, dev, engine, precision, progress, log)
    rows = collect_results(out, trials)
    write_results(out, rows)
    return rows
