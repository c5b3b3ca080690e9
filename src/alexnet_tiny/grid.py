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
from .asha import SCHEDULERS, Asha
from .config import HYPERPARAMETERS, PRESETS, TrainConfig, coerce, head_size
from .data import Dataset, ensure_dataset, folder_lock, write_json
from .device import autocast, check_precision, prepare_device, resolve_device, synchronize
from .engine import CHECKPOINT_SECONDS, StackedAlexNet, StackedSGD, plan_stacks, resolve_engine
from .allocator import retained_heap
from .errors import UserError
from .model import AlexNet, count_parameters
from .progress import format_duration, progress_bar
from .results import collect_results, write_results
from .runfolder import record_stop
from .train import CPU_TRAINING_LAYOUT, TrialState, run_trials
from .trial import UNLIMITED, Budget, TrialLosses, epoch_batches

BACKENDS = ("local", "ray")
CHECKPOINT_BYTES_PER_SECOND = 5e8  # atomic torch.save of a trial's checkpoints: 1.1-1.8 s for 684 MB measured

GRID_PRESETS: dict[str, dict] = {
    # The original study's 12 trials: 3 learning rates x 2 momenta x 2 gammas. Its rate never moved, so
    # the two gammas are the same configuration trained twice from other random weights, as there: the
    # second gamma trains from seed 1 (grids/seed.toml writes the same grid).
    "seed": {"preset": "seed", "lr": [0.0001, 0.001, 0.005], "momentum": [0.9, 0.5],
             "variant": [{"gamma": 0.1, "seed": 0}, {"gamma": 0.01, "seed": 1}]},
    # Sized for 5 minutes on a 2-core CPU: the quick preset at three learning rates, its own first,
    # with ASHA (GRID_SCHEDULERS) stopping the others after one epoch when they trail it.
    "quick": {"preset": "quick", "lr": [0.004, 0.001, 0.016]},
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
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: grid file not found") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text, as TOML must be ({e.reason} at byte {e.start})") from None
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


# Grid presets that stop trials early by default (--scheduler none turns it off).
GRID_SCHEDULERS: dict[str, dict] = {"quick": {"grace_period": 1, "reduction_factor": 3.0}}
ASHA_DEFAULTS = {"scheduler": "asha", "grace_period": 1, "reduction_factor": 2.0}


def grid_scheduler(preset: str | None, scheduler: str | None = None, grace_period: int | None = None,
                   reduction_factor: float | None = None) -> dict | None:
    """The scheduler settings of a grid: the flags given, on top of the grid preset's (None for a TOML
    grid) or ASHA's defaults."""
    base = GRID_SCHEDULERS.get(preset) if scheduler is None and preset else None
    if scheduler == "asha" or (base and scheduler is None):
        settings = {**ASHA_DEFAULTS, **(base or {})}
        if grace_period is not None:
            settings["grace_period"] = grace_period
        if reduction_factor is not None:
            settings["reduction_factor"] = float(reduction_factor)
        return settings
    if grace_period is not None or reduction_factor is not None:
        raise UserError("--grace-period and --reduction-factor need --scheduler asha")
    return None


def grid_trials(preset: str | None = None, config: Path | str | None = None) -> tuple[str, list[TrainConfig]]:
    """(grid name, trials) from --preset or --config."""
    if config is not None:
        return Path(config).stem, expand(load_grid_toml(config), where=str(config))
    preset = preset or "quick"
    if preset not in GRID_PRESETS:
        raise UserError(f"--preset {preset}: unknown grid preset (expected one of {', '.join(GRID_PRESETS)})")
    return preset, expand(GRID_PRESETS[preset], where=f"grid preset {preset}")


# ----------------------------------------------------------------------------- estimate

@retained_heap()  # as train_one_epoch: fresh gradients reuse freed memory
def measure_throughput(config: TrainConfig, dataset: Dataset, device, steps: int | None = None, stack: int = 1,
                       precision: str = "fp32") -> float:
    """Training images per second for this config on this device, from real steps of the loop that
    will run: the training split resident on the device, the trial's own data stream (`epoch_batches`:
    shuffled across classes, as an epoch; a batch of one class, trained on again and again, soon has
    gradients so small that denormal arithmetic slows the step several times), the device policy set
    first, warm-up steps not timed, under the run's precision. With stack > 1, trial-images per second
    of that many trials stacked by the engine. Default steps: 3 on the CPU, 20 on a GPU (whose steps are short)."""
    dev = torch.device(device)
    prepare_device(dev)
    warmup = 1 if dev.type == "cpu" else 3  # cuDNN's algorithm search happens in the first steps
    steps = steps or (3 if dev.type == "cpu" else 20)
    if stack > 1:
        model = StackedAlexNet(AlexNet(head_size(config, dataset.num_classes)), stack, dev)
        optimizer = StackedSGD(model, [config] * stack)
        step = optimizer.step
    else:
        state = TrialState(config, dataset.num_classes, dev)
        if dev.type == "cpu":
            state.layout(CPU_TRAINING_LAYOUT)
        model, optimizer = state.model, state
        step = partial(state.step, config.lr)
    loss_fn = TrialLosses([config.label_smoothing] * stack, dev)
    split = dataset.splits["train"].to(dev)
    if not len(split):
        raise UserError(f"{dataset.root}: its train split has no images")
    timed, t0 = 0, 0.0
    stream = itertools.chain.from_iterable(epoch_batches(split, config, dev, epoch, progress=False)
                                           for epoch in itertools.count(1))  # as many epochs as it takes
    for i, (x, y, lam) in enumerate(itertools.islice(stream, warmup + steps)):
        if i == warmup:
            synchronize(dev)
            t0 = time.perf_counter()
        with autocast(dev, precision):
            out = model(x)
            loss = loss_fn(out if stack > 1 else out.unsqueeze(0), y, lam).sum()
        optimizer.zero_grad()
        loss.backward()
        step()
        timed += len(y) if i >= warmup else 0
    synchronize(dev)
    return stack * timed / (time.perf_counter() - t0)


def estimate_seconds(stacks: list[list[TrainConfig]], dataset: Dataset, device, out: Path | None = None,
                     planned: dict[str, int] | None = None, rates: dict | None = None, engine: str = "single",
                     precision: str = "fp32") -> float:
    """Train images / measured rate, plus evaluation (about a third of a training step per image),
    for trials run in these stacks (lists of one trial each when trained one at a time), each to
    its last epoch or to `planned[name]`, counting only the epochs a resume still has to run when
    `out` holds their run folders. `rates` caches the measured throughputs between calls. Checkpoints
    (weights three times over, with the momenta, at CHECKPOINT_BYTES_PER_SECOND): the single driver
    writes a trial's every epoch, the stacked engine each trial every CHECKPOINT_SECONDS and at its end."""
    planned = planned or {}
    rates = {} if rates is None else rates
    n_train, n_eval = len(dataset.splits["train"]), len(dataset.splits["val"]) + len(dataset.splits["test"])
    total, sizes = 0.0, {}  # head size -> parameters (building an AlexNet to count them takes a while)
    for group in stacks:
        t = group[0]
        key = (t.batch_size, t.image_size, t.input, len(group), precision)
        if key not in rates:
            rates[key] = measure_throughput(t, dataset, device, stack=len(group), precision=precision)
        left = [max(0, planned.get(c.name(), c.epochs) - (runlog.epochs_done(runlog.run_folder(out, c)) if out else 0))
                for c in group]
        seconds = sum(left) * (n_train + n_eval / 3) / rates[key]
        outputs = head_size(t, dataset.num_classes)
        if outputs not in sizes:
            sizes[outputs] = count_parameters(AlexNet(outputs))
        save = 3 * 4 * sizes[outputs] / CHECKPOINT_BYTES_PER_SECOND
        if engine == "stacked":
            saves = sum(1 for n in left if n) * (1 + int(seconds // CHECKPOINT_SECONDS))
        else:
            saves = sum(left)
        total += seconds + saves * save
    return total


# ----------------------------------------------------------------------------- running

def make_scheduler(scheduler: dict | None, trials: list[TrainConfig]) -> Asha | None:
    if not scheduler or scheduler.get("scheduler", "none") == "none":
        return None
    kind = scheduler["scheduler"]
    if kind not in SCHEDULERS:
        raise UserError(f"--scheduler {kind}: expected one of {', '.join(SCHEDULERS)}")
    return Asha(max(t.epochs for t in trials), scheduler.get("grace_period", 1), scheduler.get("reduction_factor", 2.0))


def _check_grid_folder(out: Path, trials: list[TrainConfig], resume: bool, asha: Asha | None) -> None:
    path = out / runlog.GRID_FILE
    names = [t.name() for t in trials]
    if path.exists():
        try:
            grid = json.loads(path.read_text())
            previous = [t["name"] for t in grid.get("trials", [])]
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise UserError(f"{path}: not a grid description ({e.__class__.__name__}: {e}); "
                            f"remove it to start the grid again") from None
        if not resume:
            raise UserError(f"{out}: grid folder already exists; add --resume to continue it or choose another --out")
        if previous != names and previous != [runlog.run_folder(out, t).name for t in trials]:
            raise UserError(f"{out}: holds a different grid; resume it with the same --preset/--config or choose another --out")
        scheduler = asha.to_dict() if asha else None
        if grid.get("scheduler") != scheduler:
            raise UserError(f"{out}: was run with scheduler {grid.get('scheduler')}; resume it with the same "
                            f"--scheduler, --grace-period and --reduction-factor (not {scheduler})")
    elif out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"{out}: exists and is not a grid folder; choose another --out")


def todo_trials(out: Path, trials: list[TrainConfig]) -> list[TrainConfig]:
    """The trials whose run folder does not say done or diverged."""
    return [t for t in trials if (runlog.read_config(runlog.run_folder(out, t)) or {}).get("status") not in runlog.FINISHED]


def plan_groups(todo: list[TrainConfig], out: Path, dataset: Dataset, dev: torch.device, engine: str,
                max_stack: int | None) -> list[list[TrainConfig]]:
    """The order the local backend runs the trials in: stacks of the engine, or one trial at a time."""
    if engine != "stacked" or not todo:
        return [[t] for t in todo]
    stacks = plan_stacks(todo, [runlog.run_folder(out, t) for t in todo], dev, dataset.num_classes, max_stack)
    return [[todo[i] for i in s] for s in stacks]


def planned_epochs(asha: Asha, trials: list[TrainConfig], out: Path | None) -> dict[str, int]:
    """Each trial's epochs if ASHA stops the planned share, knowing what the folders in `out` say."""
    records = [(runlog.read_config(runlog.run_folder(out, t)) or {}) if out else {} for t in trials]
    planned = asha.planned_epochs([t.epochs for t in trials], [r.get("epochs_done", 0) for r in records],
                                  [r.get("status") == runlog.STATUS_STOPPED for r in records])
    return dict(zip((t.name() for t in trials), planned))


def announce(trials: list[TrainConfig], todo: list[TrainConfig], groups: list[list[TrainConfig]], dataset: Dataset,
             dev, estimate: bool, log, out: Path | None = None, asha: Asha | None = None,
             time_budget: float | None = None, engine: str = "single", precision: str = "fp32") -> None:
    """The grid's first lines: trial count, the duration measured on this device, the stacks."""
    line = f"grid: {len(trials)} trials ({len(trials) - len(todo)} already finished)"
    if estimate and todo:
        planned = planned_epochs(asha, trials, out) if asha else None
        rates = {}
        eta = estimate_seconds(groups, dataset, dev, out, planned, rates, engine, precision)
        warn = " -- many hours on a CPU: consider a GPU or --preset quick" if eta > 3 * 3600 else ""
        line += f", estimated {format_duration(eta)} on {dev}{warn}"
        if asha:
            line += (f" if ASHA stops the planned share of trials (at most "
                     f"{format_duration(estimate_seconds(groups, dataset, dev, out, None, rates, engine, precision))} "
                     f"if it stops none)")
        if time_budget is not None and time_budget < eta:
            line += f"; the time budget ends it after {format_duration(time_budget)}"
    if asha:
        line += (f"; ASHA judges trials at epoch{'s' * (len(asha.rungs) != 1)} {', '.join(map(str, asha.rungs))} "
                 f"(reduction factor {asha.reduction_factor:g})" if asha.rungs else "; ASHA has no rung below the "
                 "last epoch (use more epochs or a smaller --grace-period)")
    log(line)
    if any(len(g) > 1 for g in groups):
        log(f"stacked engine: {len(todo)} trials in {len(groups)} stack(s) of {', '.join(str(len(g)) for g in groups)}")


def judge_rung(asha: Asha, trials: list[TrainConfig], out: Path, rung: int, log) -> None:
    """ASHA's decision at `rung` for every trial that reached it, in grid order; a trial still
    running there is marked stopped (one already stopped there, on a resume, stays so)."""
    for t in trials:
        value = runlog.val_accuracy_at(runlog.run_folder(out, t), rung)
        if value is None:
            continue
        reason = asha.judge(t.name(), rung, value)
        rec = runlog.read_config(runlog.run_folder(out, t))
        if reason and rec["status"] == runlog.STATUS_RUNNING and rec["epochs_done"] == rung:
            record_stop(runlog.run_folder(out, t), reason)
            log(f"{t.name()}: {reason}")


def run_local(trials: list[TrainConfig], out: Path, dataset: Dataset, dev, engine: str, max_stack: int | None,
              precision: str, progress: bool, log, asha: Asha | None = None, budget: Budget = UNLIMITED) -> None:
    """Every unfinished trial to its last epoch, a group at a time (a stack, or one trial), results.csv/md
    rewritten after each. With `asha`: every live trial to the first rung, judged there in grid order,
    then the survivors to the next rung, and so on. Ends early, resumable, when `budget` runs out."""
    bar = progress_bar(total=len(trials), desc="trials", unit="trial", enabled=progress, position=1)
    failed: set[str] = set()  # trials that crashed in this call: not retried until the next --resume
    try:
        for until in (asha.rungs if asha else []) + [None]:
            todo = [t for t in todo_trials(out, trials) if t.name() not in failed
                    and (until is None or runlog.epochs_done(runlog.run_folder(out, t)) < until)]
            for group in plan_groups(todo, out, dataset, dev, engine, max_stack):
                bar.n = len(trials) - len(todo_trials(out, trials))
                bar.refresh()
                records = run_trials(group, dataset, [runlog.run_folder(out, c) for c in group], dev, progress, log=log,
                                     engine=engine, precision=precision, until=until, budget=budget)
                failed |= {c.name() for c, r in zip(group, records) if r["status"] == runlog.STATUS_FAILED}
                write_results(out, collect_results(out, trials))
                if budget.reached:
                    return
            if until is not None:
                judge_rung(asha, trials, out, until, log)
        bar.n = len(trials) - len(todo_trials(out, trials))
        bar.refresh()
    finally:
        bar.close()


def run_grid(trials: list[TrainConfig], out: Path | str, data=None, device: str = "auto", resume: bool = False,
             backend: str = "local", progress: bool = True, log=print, ray_options: dict | None = None,
             estimate: bool = True, engine: str = "auto", max_stack: int | None = None,
             precision: str = "fp32", scheduler: dict | None = None, time_budget: float | None = None) -> list[dict]:
    """Run (or resume) every trial into `out`; returns the result rows, also written as results.csv/md.
    engine (local backend): "stacked" trains trials that share a data stream together (engine.py),
    "single" one after another, "auto" picks stacked on a GPU; max_stack caps the trials per stack.
    scheduler: {"scheduler": "asha", "grace_period": 1, "reduction_factor": 2} stops trials early
    (asha.py), None runs every trial to its end. time_budget: seconds after which no epoch starts
    (the grid ends resumable)."""
    out = Path(out)
    if max_stack is not None and max_stack < 1:
        raise UserError(f"--max-stack {max_stack}: expected an integer >= 1 (leave it out for as many as fit)")
    asha = make_scheduler(scheduler, trials)
    budget = Budget(time_budget)
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if backend == "ray":
        from .ray_backend import run_trials_on_ray  # a missing Ray stops here, before any work
        concurrent = (ray_options or {}).get("max_concurrent")
        if concurrent is not None and concurrent < 1:
            raise UserError(f"--max-concurrent {concurrent}: expected an integer >= 1 (leave it out for as many "
                            f"as the cluster holds)")
        if precision != "fp32":
            raise UserError(f"--precision {precision}: the Ray backend trains in fp32 only")
    check_precision(precision)
    with folder_lock(out, "grid folder"):
        return _run_grid(trials, out, data, device, resume, backend, progress, log, ray_options, estimate, engine,
                         max_stack, precision, asha, budget, time_budget)


def _run_grid(trials, out, data, device, resume, backend, progress, log, ray_options, estimate, engine, max_stack,
              precision, asha, budget, time_budget) -> list[dict]:
    """`run_grid`, once it holds the grid folder's lock."""
    _check_grid_folder(out, trials, resume, asha)
    dataset = ensure_dataset(data, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / runlog.GRID_FILE, {"trials": [{"name": runlog.run_folder(out, t).name, "config": t.to_dict()}
                                                   for t in trials],
                                        "dataset": str(dataset.root), "scheduler": asha.to_dict() if asha else None})
    todo = todo_trials(out, trials)
    if backend == "ray":
        from .ray_backend import run_trials_on_ray
        announce(trials, todo, [[t] for t in todo], dataset, torch.device("cpu"), estimate, log, out, asha, time_budget)
        out_of_time = run_trials_on_ray(todo, dataset.root, out, **(ray_options or {}), progress=progress, log=log,
                                        asha=asha, trials=trials, time_budget=time_budget)
    else:
        dev = resolve_device(device)
        engine = resolve_engine(engine, dev, log)
        groups = plan_groups(todo, out, dataset, dev, engine, max_stack)
        announce(trials, todo, groups, dataset, dev, estimate, log, out, asha, time_budget, engine, precision)
        run_local(trials, out, dataset, dev, engine, max_stack, precision, progress, log, asha, budget)
        out_of_time = budget.reached
    if out_of_time:
        log(f"grid: time budget of {format_duration(time_budget)} reached; {len(todo_trials(out, trials))} "
            f"trial(s) unfinished, continue with --resume")
    rows = collect_results(out, trials)
    write_results(out, rows)
    return rows
