"""Grid search: presets and TOML grids expanded to trials, run one after another (or on Ray),
resumable at any point, summarised in results.csv / results.md.

A grid folder holds grid.json (the trials), one run folder per trial (exactly what `train`
writes) and the results files. The run folders are the state: a trial whose config.json says done
or diverged is skipped on --resume, any other continues from its last.pt.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
from pathlib import Path

import torch

from . import runlog
from .asha import SCHEDULERS, Asha
from .config import CHOICES, DEFAULT_PRESET, HYPERPARAMETERS, PRESETS, TYPES, TrainConfig, coerce, inert_fields
from .data import Dataset, ensure_dataset
from .device import resolve_device, resolve_precision
from .engine import plan_stacks, resolve_engine
from .errors import UserError
from .estimate import estimate_seconds, planned_epochs
from .files import folder_lock, remove_stale_temporaries, write_json
from .progress import format_duration, progress_bar
from .results import collect_results, write_results
from .runfolder import check_keep, release_checkpoints, stop_at_rung
from .train import run_trials
from .trial import Budget, RunOptions

BACKENDS = ("local", "ray")

GRID_PRESETS: dict[str, dict] = {
    # The original study's 12 trials: 3 learning rates x 2 momenta x 2 gammas. Its rate never moved, so
    # the two gammas are the same configuration trained twice from other random weights, as there: the
    # second gamma trains from seed 1 (grids/seed.toml writes the same grid).
    "seed": {"preset": "seed", "lr": [0.0001, 0.001, 0.005], "momentum": [0.9, 0.5],
             "variant": [{"gamma": 0.1, "seed": 0}, {"gamma": 0.01, "seed": 1}]},
    # The main job: the quick preset at three learning rates, its own first, with ASHA
    # (GRID_SCHEDULERS) stopping the others after one epoch when they trail it. The preset's rate
    # leads the higher ones from the first epoch (RESULTS.md), so the job is the preset's 18 epochs
    # and two more, unless a higher rate leads.
    "quick": {"preset": "quick", "lr": [0.005, 0.01, 0.02]},
    # The recipe's ablation (a GPU job): the full recipe, then each ingredient removed or added alone,
    # over three seeds.
    "recipe": {"preset": "recipe", "seed": [0, 1, 2], "variant": [
        {}, {"augment": "crop"}, {"label_smoothing": 0.0}, {"weight_decay": 0.0},
        {"schedule": "step", "warmup_epochs": 0, "step_size": 20, "gamma": 0.1}, {"mixup": 0.2}]},
}
GRID_PURPOSES = {
    "quick": "the main job: CPU minutes",
    "seed": "the original 12 trials, as its code ran: 6 configurations twice, since gamma had no effect",
    "recipe": "the recipe's ablation over 3 seeds",
    ", ".join(p for p in PRESETS if p not in GRID_PRESETS): "a train preset: its one configuration, with --seeds N "
                                                           "its replicates",
}


def choices_help(purposes: dict[str, str], default: str) -> str:
    """"a (default; what a is for), b (what b is for) or c (...)", for a flag's help."""
    items = [f"{name} ({'default; ' * (name == default)}{what})" for name, what in purposes.items()]
    return ", ".join(items[:-1]) + " or " + items[-1]


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
        raise UserError(f"{path}: grid file not found (the package's own grids, by name: {shipped_grid_names()})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text, as TOML must be ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None


SHIPPED_GRIDS = Path(__file__).parent / "grids"  # the repository's grids/, installed with the package


def shipped_grid_names() -> str:
    return ", ".join(sorted(p.name for p in SHIPPED_GRIDS.glob("*.toml")))


def shipped_grid(config: Path | str) -> Path:
    """A grid file's path: as given where it exists, else the package's grid of that name (`seed.toml`,
    or `seed`), so that `--config grids/seed.toml` works outside a clone too."""
    path = Path(config)
    if path.exists():
        return path
    for name in (path.name, f"{path.name}.toml"):
        if (SHIPPED_GRIDS / name).is_file():
            return SHIPPED_GRIDS / name
    return path


MAX_TRIALS = 10_000  # beyond, a grid is a mistake (a list too many): weeks of a GPU, refused before any work


def expand(grid: dict, where: str = "grid") -> list[TrainConfig]:
    """The product of the grid's value lists, on top of its `preset`, in a stable order.

    Optional `variant` tables (TOML `[[variant]]`) are alternative sets of overrides, each crossed
    with the product: an ablation is a list of variants crossed with a list of seeds. A value may be a
    distribution instead of a list (`lr = {loguniform = [1e-4, 0.1]}`): random search. `samples = N`
    draws N sets of values from the distributions, each crossed with the product, from the generator
    seeded with `sample_seed` (default 0), so that the same file always gives the same trials."""
    grid = dict(grid)
    base_name = grid.pop("preset", "seed")
    if not isinstance(base_name, str) or base_name not in PRESETS:
        raise UserError(f"{where}: preset = {base_name!r}: expected one of {', '.join(PRESETS)}")
    variants = grid.pop("variant", [{}])
    if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
        raise UserError(f"{where}: variant must be a non-empty list of tables ([[variant]])")
    variants = [coerce(v, f"{where} [[variant]]") for v in variants]
    samples, sample_seed = grid.pop("samples", None), grid.pop("sample_seed", 0)
    lists, distributions = {}, {}
    for key, values in grid.items():
        if isinstance(values, dict):
            distributions[key] = distribution(key, values, where)
            continue
        values = values if isinstance(values, list) else [values]
        if not values:
            raise UserError(f"{where}: {key} is an empty list (expected at least one value)")
        lists[key] = [coerce({key: v}, where)[key] for v in values]
    draws = sample_count(samples, sample_seed, distributions, where)
    keys = [k for k in HYPERPARAMETERS if k in lists]
    count = len(variants) * math.prod(len(lists[k]) for k in keys) * draws
    if count > MAX_TRIALS:
        raise UserError(f"{where}: {count:,} trials (the product of its lists{' and samples' * bool(distributions)}); "
                        f"expected at most {MAX_TRIALS:,}")
    drawn = draw_samples(distributions, draws, sample_seed, where)
    try:
        trials = [PRESETS[base_name].replace(**{**variant, **dict(zip(keys, combo)), **sample}).validate()
                  for variant in variants for combo in itertools.product(*(lists[k] for k in keys))
                  for sample in drawn]
    except UserError as e:  # a value out of range: say which file it came from
        raise UserError(f"{where}: {e}") from None
    seen: set[str] = set()
    duplicate = next((n for n in (t.name() for t in trials) if n in seen or seen.add(n)), None)
    if duplicate:
        raise UserError(f"{where}: trial {duplicate} appears twice (repeated value in a list)")
    return trials


# Random search: a grid value that is a table of one of these draws its values (as Ray Tune's
# tune.uniform, tune.loguniform, tune.randint with its upper bound included, tune.choice).
DISTRIBUTIONS = {"uniform": "uniform = [low, high]", "loguniform": "loguniform = [low, high], 0 < low",
                 "randint": "randint = [low, high], integers, both included", "choice": "choice = [a, b, ...]"}
SIGNIFICANT = 3  # a drawn number keeps 3 significant digits: readable trial names, and the draw is what ran


def distribution(key: str, table: dict, where: str) -> tuple[str, list]:
    """(kind, its arguments) of a grid value written as a distribution, checked."""
    if key not in HYPERPARAMETERS:
        coerce({key: 0}, where)  # the unknown key's own message
    kinds = ", ".join(f"{{{v}}}" for v in DISTRIBUTIONS.values())
    if len(table) != 1 or next(iter(table)) not in DISTRIBUTIONS:
        written = "{" + ", ".join(f"{k} = {v!r}" for k, v in table.items()) + "}"
        raise UserError(f"{where}: {key} = {written}: expected one of {kinds}")
    kind, args = next(iter(table.items()))
    numeric = {"float": (int, float), "int": (int,)}.get(TYPES[key])
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise UserError(f"{where}: {key} = {{choice = {args!r}}}: expected a non-empty list of values")
        values = [coerce({key: v}, where)[key] for v in args]
        wrong = next((v for v in values if key in CHOICES and v not in CHOICES[key]), None)
        if wrong is not None:
            raise UserError(f"{where}: {key} = {wrong}: expected one of {', '.join(CHOICES[key])}")
        return kind, values
    ok = (isinstance(args, list) and len(args) == 2 and numeric is not None
          and all(isinstance(a, numeric) and not isinstance(a, bool) for a in args) and args[0] < args[1])
    if kind == "randint":
        ok = ok and TYPES[key] == "int"
    elif kind == "loguniform":
        ok = ok and args[0] > 0 and TYPES[key] == "float"
    elif TYPES[key] != "float":
        ok = False
    if not ok:
        hint = {"int": "; an integer field draws with randint", "float": "; a number field draws with uniform or "
                "loguniform"}.get(TYPES[key], f"; a {TYPES[key]} field draws with choice")
        raise UserError(f"{where}: {key} = {{{kind} = {args!r}}}: expected {DISTRIBUTIONS[kind]} with low < high"
                        f"{hint}")
    return kind, [float(a) if kind != "randint" else int(a) for a in args]


def sample_count(samples, sample_seed, distributions: dict, where: str) -> int:
    """How many draws the grid's `samples` asks for (1 without distributions, where it has no place)."""
    if not isinstance(sample_seed, int) or isinstance(sample_seed, bool) or sample_seed < 0:
        raise UserError(f"{where}: sample_seed = {sample_seed!r}: expected an integer >= 0")
    if not distributions:
        if samples is not None:
            raise UserError(f"{where}: samples = {samples!r}: only with a distribution to draw from "
                            f"(such as lr = {{loguniform = [1e-4, 0.1]}})")
        return 1
    if samples is None:
        raise UserError(f"{where}: {', '.join(distributions)} {'is a distribution' if len(distributions) == 1 else 'are distributions'}"
                        f": add samples = N, the number of draws")
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= MAX_TRIALS:
        raise UserError(f"{where}: samples = {samples!r}: expected an integer from 1 to {MAX_TRIALS:,}")
    return samples


def draw_samples(distributions: dict, samples: int, seed: int, where: str) -> list[dict]:
    """`samples` different draws of every distribution (in HYPERPARAMETERS order), numbers rounded to
    SIGNIFICANT digits. A draw equal to an earlier one (a small choice or randint) is drawn again."""
    if not distributions:
        return [{}]
    rng = random.Random(seed)
    keys = [k for k in HYPERPARAMETERS if k in distributions]
    drawn, seen = [], set()
    for _ in range(100 * samples):
        sample = {k: draw(rng, *distributions[k]) for k in keys}
        if tuple(sample.values()) not in seen:
            seen.add(tuple(sample.values()))
            drawn.append(sample)
            if len(drawn) == samples:
                return drawn
    raise UserError(f"{where}: samples = {samples}: the distributions give only {len(drawn)} different trials")


def draw(rng: random.Random, kind: str, args: list):
    if kind == "choice":
        return rng.choice(args)
    if kind == "randint":
        return rng.randint(*args)
    low, high = args
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if kind == "loguniform" else rng.uniform(low, high)
    return float(f"{value:.{SIGNIFICANT}g}")


# Grid presets that stop trials early by default (--scheduler none turns it off).
GRID_SCHEDULERS: dict[str, dict] = {"quick": {"grace_period": 1, "reduction_factor": 3.0}}
ASHA_SETTINGS = ("grace_period", "reduction_factor")
ASHA_DEFAULTS = {"scheduler": "asha", **{k: getattr(Asha, k) for k in ASHA_SETTINGS}}  # asha.Asha's own


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
        path = shipped_grid(config)
        return path.stem, expand(load_grid_toml(path), where=str(config))
    preset = preset or DEFAULT_PRESET
    if preset in GRID_PRESETS:
        return preset, expand(GRID_PRESETS[preset], where=f"grid preset {preset}")
    if preset in PRESETS:  # a train preset: a grid of its one configuration (with --seeds, its replicates)
        return preset, expand({"preset": preset}, where=f"preset {preset}")
    raise UserError(f"--preset {preset}: unknown (expected a grid preset, {', '.join(GRID_PRESETS)}, or a train "
                    f"preset, {', '.join(p for p in PRESETS if p not in GRID_PRESETS)})")


MAX_SEEDS = 100


def with_seeds(trials: list[TrainConfig], seeds: int) -> list[TrainConfig]:
    """Every trial repeated over `seeds` seeds, its own seed first, then the next ones that no other
    trial of the same configuration runs: replicates, which the results and the report aggregate per
    configuration. The same configuration is judged without the fields its schedule never reads (the
    seed grid's two gammas, seeds 0 and 1: with 2 seeds, gamma 0.1 runs seeds 0 and 1, gamma 0.01
    seeds 2 and 3, four different trainings)."""
    if not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds {seeds}: expected 1 to {MAX_SEEDS} runs of each configuration")
    if len(trials) * seeds > MAX_TRIALS:
        raise UserError(f"--seeds {seeds}: {len(trials) * seeds:,} trials; expected at most {MAX_TRIALS:,}")
    used: dict[tuple, set[int]] = {}
    repeated = []
    for t in trials:
        config = t.to_dict()
        inert = inert_fields(config)
        taken = used.setdefault(tuple((k, v) for k, v in config.items() if k != "seed" and k not in inert), set())
        seed = t.seed
        for _ in range(seeds):
            while seed in taken:
                seed += 1
            taken.add(seed)
            repeated.append(t.replace(seed=seed).validate())
    return repeated


# ----------------------------------------------------------------------------- running

def make_scheduler(scheduler: dict | None, trials: list[TrainConfig]) -> Asha | None:
    if not scheduler or scheduler.get("scheduler", "none") == "none":
        return None
    kind = scheduler["scheduler"]
    if kind not in SCHEDULERS:
        raise UserError(f"--scheduler {kind}: expected one of {', '.join(SCHEDULERS)}")
    return Asha(max(t.epochs for t in trials), **{k: scheduler[k] for k in ASHA_SETTINGS if k in scheduler})


def _check_grid_folder(out: Path, trials: list[TrainConfig], runs: dict[str, Path], resume: bool,
                       asha: Asha | None) -> None:
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
        if previous != names and previous != [runs[n].name for n in names]:
            raise UserError(f"{out}: holds a different grid; resume it with the same --preset/--config or choose another --out")
        scheduler = asha.to_dict() if asha else None
        if grid.get("scheduler") != scheduler:
            raise UserError(f"{out}: was run with scheduler {grid.get('scheduler')}; resume it with the same "
                            f"--scheduler, --grace-period and --reduction-factor (not {scheduler})")
    elif out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"{out}: exists and is not a grid folder; choose another --out")


def plan_groups(todo: list[TrainConfig], runs: dict[str, Path], dataset: Dataset, dev: torch.device, engine: str,
                max_stack: int | None) -> list[list[TrainConfig]]:
    """The order the local backend runs the trials in: stacks of the engine, or one trial at a time."""
    if engine != "stacked" or not todo:
        return [[t] for t in todo]
    stacks = plan_stacks(todo, [runs[t.name()] for t in todo], dev, dataset.num_classes, max_stack)
    return [[todo[i] for i in s] for s in stacks]


def announce(trials: list[TrainConfig], todo: list[TrainConfig], groups: list[list[TrainConfig]], dataset: Dataset,
             dev, estimate: bool, log, runs: dict[str, Path] | None = None, asha: Asha | None = None,
             time_budget: float | None = None, engine: str = "single", precision: str = "fp32") -> None:
    """The grid's first lines: trial count, the duration measured on this device, the stacks."""
    line = f"grid: {len(trials)} trials ({len(trials) - len(todo)} already finished)"
    if estimate and todo:
        planned = planned_epochs(asha, trials, runs) if asha else None
        rates = {}
        eta = estimate_seconds(groups, dataset, dev, runs, planned, rates, engine, precision)
        warn = " -- many hours on a CPU: consider a GPU or --preset quick" if eta > 3 * 3600 else ""
        line += f", estimated {format_duration(eta)} on {dev}{warn}"
        if asha:
            line += (f" if ASHA stops the planned share of trials (at most "
                     f"{format_duration(estimate_seconds(groups, dataset, dev, runs, None, rates, engine, precision))} "
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


def judge_rung(asha: Asha, trials: list[TrainConfig], runs: dict[str, Path], rung: int, log) -> None:
    """ASHA's decision at `rung` for every trial that reached it, in grid order; a trial still
    running there is marked stopped (one already stopped there, on a resume, stays so)."""
    for t in trials:
        value = runlog.val_accuracy_at(runs[t.name()], rung)
        if value is None:
            continue
        reason = asha.judge(t.name(), rung, value)
        if reason:
            stop_at_rung(runs[t.name()], rung, reason, log)
        elif runlog.epochs_done(runs[t.name()]) == rung and t.epochs > rung:
            log(f"{runs[t.name()].name}: kept by ASHA at epoch {rung} (val {value:.3f}); trains on")


def run_local(trials: list[TrainConfig], out: Path, runs: dict[str, Path], dataset: Dataset, dev, engine: str,
              max_stack: int | None, asha: Asha | None, options: RunOptions) -> None:
    """Every unfinished trial to its last epoch, a group at a time (a stack, or one trial), results.csv/md
    rewritten after each. With `asha`: every live trial to the first rung, judged there in grid order,
    then the survivors to the next rung, and so on. Ends early, resumable, when `options.budget` runs out."""
    bar = progress_bar(total=len(trials), desc="trials", unit="trial", enabled=options.progress, position=1)
    failed: set[str] = set()  # trials that crashed in this call: not retried until the next --resume
    try:
        for until in (asha.rungs if asha else []) + [None]:
            todo = [t for t in runlog.unfinished(trials, runs) if t.name() not in failed
                    and (until is None or runlog.epochs_done(runs[t.name()]) < until)]
            for group in plan_groups(todo, runs, dataset, dev, engine, max_stack):
                bar.n = len(trials) - len(runlog.unfinished(trials, runs))
                bar.refresh()
                records = run_trials(group, dataset, [runs[c.name()] for c in group], dev, engine,
                                     dataclasses.replace(options, until=until))
                failed |= {c.name() for c, r in zip(group, records) if r["status"] == runlog.STATUS_FAILED}
                write_results(out, collect_results(out, trials, runs))
                if options.budget.reached:
                    return
            if until is not None:
                judge_rung(asha, trials, runs, until, options.log)
        bar.n = len(trials) - len(runlog.unfinished(trials, runs))
        bar.refresh()
    finally:
        bar.close()


def run_grid(trials: list[TrainConfig], out: Path | str, data=None, device: str = "auto", resume: bool = False,
             backend: str = "local", progress: bool = True, log=print, ray_options: dict | None = None,
             estimate: bool = True, engine: str = "auto", max_stack: int | None = None,
             precision: str = "fp32", scheduler: dict | None = None, time_budget: float | None = None,
             keep: str = "best") -> list[dict]:
    """Run (or resume) every trial into `out`; returns the result rows, also written as results.csv/md.
    engine (local backend): "stacked" trains trials that share a data stream together (engine.py),
    "single" one after another, "auto" picks stacked on a GPU; max_stack caps the trials per stack.
    scheduler: {"scheduler": "asha", "grace_period": 1, "reduction_factor": 2} stops trials early
    (asha.py), None runs every trial to its end. time_budget: seconds after which no epoch starts
    (the grid ends resumable). keep: "best" removes the last.pt of every trial that has ended, once the
    grid ends (runfolder.release_checkpoints); "all" keeps them."""
    out = Path(out)
    check_keep(keep)
    if max_stack is not None and max_stack < 1:
        raise UserError(f"--max-stack {max_stack}: expected an integer >= 1 (leave it out for as many as fit)")
    asha = make_scheduler(scheduler, trials)
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if backend == "ray":
        from .ray_backend import run_trials_on_ray  # noqa: F401 - a missing Ray stops here, before any work
        concurrent = (ray_options or {}).get("max_concurrent")
        if concurrent is not None and concurrent < 1:
            raise UserError(f"--max-concurrent {concurrent}: expected an integer >= 1 (leave it out for as many "
                            f"as the cluster holds)")
        if precision not in ("fp32", "auto"):
            raise UserError(f"--precision {precision}: the Ray backend trains in fp32 only")
    precision = "fp32" if backend == "ray" else resolve_precision(precision, resolve_device(device))
    options = RunOptions(progress, log, precision=precision, budget=Budget(time_budget))
    with folder_lock(out, "grid folder"):
        rows = _run_grid(trials, out, data, device, resume, backend, ray_options, estimate, engine, max_stack, asha,
                         time_budget, options)
        for run in runlog.run_folders(out, trials).values():
            release_checkpoints(run, keep)
        return rows


def _run_grid(trials: list[TrainConfig], out: Path, data, device: str, resume: bool, backend: str,
              ray_options: dict | None, estimate: bool, engine: str, max_stack: int | None, asha: Asha | None,
              time_budget: float | None, options: RunOptions) -> list[dict]:
    """`run_grid`, once it holds the grid folder's lock."""
    progress, log, precision = options.progress, options.log, options.precision
    runs = runlog.run_folders(out, trials)
    _check_grid_folder(out, trials, runs, resume, asha)
    dataset = ensure_dataset(data, progress=progress, log=log)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # results or grid.json half-written when a previous run was killed
    write_json(out / runlog.GRID_FILE, {"trials": [{"name": runs[t.name()].name, "config": t.to_dict()}
                                                   for t in trials],
                                        "dataset": str(dataset.root), "scheduler": asha.to_dict() if asha else None})
    todo = runlog.unfinished(trials, runs)
    if backend == "ray":
        from .ray_backend import run_trials_on_ray
        announce(trials, todo, [[t] for t in todo], dataset, torch.device("cpu"), estimate, log, runs, asha, time_budget)
        out_of_time = run_trials_on_ray(todo, dataset.root, out, runs, **(ray_options or {}), progress=progress,
                                        log=log, asha=asha, trials=trials, time_budget=time_budget)
    else:
        dev = resolve_device(device)
        engine = resolve_engine(engine, dev, log)
        groups = plan_groups(todo, runs, dataset, dev, engine, max_stack)
        announce(trials, todo, groups, dataset, dev, estimate, log, runs, asha, time_budget, engine, precision)
        run_local(trials, out, runs, dataset, dev, engine, max_stack, asha, options)
        out_of_time = options.budget.reached
    if out_of_time:
        log(f"grid: time budget of {format_duration(time_budget)} reached; {len(runlog.unfinished(trials, runs))} "
            f"trial(s) unfinished, continue with --resume")
    rows = collect_results(out, trials, runs)
    write_results(out, rows)
    return rows
