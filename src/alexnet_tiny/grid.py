"""Grid search: presets and TOML grids expanded to trials, run one after another (or on Ray),
resumable at any point, summarised in results.csv / results.md.

A grid folder holds grid.json (the trials), one run folder per trial (exactly what `train`
writes) and the results files. The run folders are the state: a trial whose config.json says done
or diverged is skipped on --resume, any other continues from its last.pt.
"""
from __future__ import annotations

import csv
import io
import itertools
import time
from pathlib import Path

import torch

from . import runlog
from .config import HYPERPARAMETERS, PRESETS, TrainConfig, coerce
from .data import Dataset, atomic_path, ensure_dataset, write_json
from .errors import UserError
from .progress import progress_bar

GRID_FILE = "grid.json"
RESULTS_CSV, RESULTS_MD = "results.csv", "results.md"

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
    """Training images per second for this config on this device, from a few real steps; with
    stack > 1, trial-images per second of that many trials stacked by the engine."""
    from .model import AlexNet
    from .train import make_optimizer, resolve_device
    from .transforms import train_batch
    dev = resolve_device(str(device))
    if stack > 1:
        from .engine import StackedAlexNet, StackedSGD, trial_losses
        model = StackedAlexNet(AlexNet(dataset.num_classes), stack, dev)
        opt = StackedSGD(model, [config] * stack)
        smoothing = torch.zeros(stack, device=dev)
        loss_fn = lambda out, y: trial_losses(out, y, smoothing).sum()  # noqa: E731
    else:
        model = AlexNet(dataset.num_classes).to(dev)
        opt = make_optimizer(model, config)
        loss_fn = torch.nn.functional.cross_entropy
    gen = torch.Generator().manual_seed(0)
    images = dataset.splits["train"].images[:config.batch_size].to(dev)
    labels = dataset.splits["train"].labels[:config.batch_size].to(dev)
    for i in range(steps + 1):
        if i == 1:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = loss_fn(model(train_batch(images, config.image_size, gen)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
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


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ----------------------------------------------------------------------------- results

RESULT_COLUMNS = ["trial", *HYPERPARAMETERS, "best_val_accuracy", "best_epoch", "test_accuracy_at_best",
                  "final_train_loss", "status", "seconds", "reason"]


def collect_results(out: Path, trials: list[TrainConfig]) -> list[dict]:
    rows = []
    for t in trials:
        rec = runlog.read_config(out / t.name()) or {"status": "pending"}
        row = {"trial": t.name(), **t.to_dict()}
        for key in RESULT_COLUMNS[len(row):]:
            row[key] = rec.get(key)
        row["status"] = rec.get("status", "pending")
        rows.append(row)
    return rows


def best_row(rows: list[dict]) -> dict | None:
    """Best trial by validation accuracy alone (never test); ties go to the earlier trial."""
    scored = [r for r in rows if r["status"] == runlog.STATUS_DONE and r["best_val_accuracy"] is not None]
    return max(scored, key=lambda r: r["best_val_accuracy"], default=None)


def _cell(v) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if isinstance(v, float) and not float(v).is_integer() else format(v, "g") if isinstance(v, float) else str(v)


def write_results(out: Path, rows: list[dict], columns: list[str] = RESULT_COLUMNS, best: dict | None = None) -> None:
    """results.csv and results.md (best trial marked); the report writes its own table through here too."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    with atomic_path(out / RESULTS_CSV) as tmp:
        tmp.write_text(buf.getvalue())
    best = best or best_row(rows)
    cols = [c for c in columns if c not in ("trial", "best")]
    lines = ["| best | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        mark = "**best**" if best is not None and r["trial"] == best["trial"] else ""
        lines.append(f"| {mark} | " + " | ".join(_cell(r[c]) for c in cols) + " |")
    with atomic_path(out / RESULTS_MD) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- running

def _check_grid_folder(out: Path, trials: list[TrainConfig], resume: bool) -> None:
    path = out / GRID_FILE
    names = [t.name() for t in trials]
    if path.exists():
        import json
        previous = json.loads(path.read_text()).get("trials", [])
        if not resume:
            raise UserError(f"{out}: grid folder already exists; add --resume to continue it or choose another --out")
        if [t["name"] for t in previous] != names:
            raise UserError(f"{out}: holds a different grid; resume it with the same --preset/--config or choose another --out")
    elif out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"{out}: exists and is not a grid folder; choose another --out")


def run_trial(config: TrainConfig, dataset: Dataset | Path | str, out: Path, device: str, progress: bool,
              log=print, callback=None, engine: str = "single", precision: str = "fp32") -> dict:
    """One trial; a crash is recorded as status failed (with its reason) instead of stopping the grid."""
    return run_trials([config], dataset, out, device, progress, log, callback, engine, precision)[0]


def run_trials(configs: list[TrainConfig], dataset: Dataset | Path | str, out: Path, device, progress: bool,
               log=print, callback=None, engine: str = "single", precision: str = "fp32") -> list[dict]:
    """Trials of one stack (or one trial alone); a crash marks them failed instead of stopping the grid."""
    try:
        if engine == "stacked":
            from .engine import train_stack
            return train_stack(configs, dataset, [out / c.name() for c in configs], device, resume=True,
                               progress=progress, log=log, callback=callback, precision=precision)
        from .train import train
        return [train(configs[0], data=dataset, out=out / configs[0].name(), device=str(device), resume=True,
                      progress=progress, log=log, callback=callback, engine="single", precision=precision)]
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as e:  # noqa: BLE001 - any bug or device error in one trial must not lose the grid
        reason = f"{e.__class__.__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        log(f"trial {', '.join(c.name() for c in configs)} failed: {reason}")
        return [record_failure(c, out, reason) for c in configs]


def record_failure(config: TrainConfig, out: Path, reason: str) -> dict:
    """Mark a trial's run folder failed (also used by the Ray backend when a worker dies)."""
    run = out / config.name()
    rec = runlog.read_config(run) or {"config": config.to_dict(), "name": config.name()}
    rec.update(status=runlog.STATUS_FAILED, reason=reason[:300])
    runlog.write_config(run, rec)
    return rec


def run_grid(trials: list[TrainConfig], out: Path | str, data=None, device: str = "auto", resume: bool = False,
             backend: str = "local", progress: bool = True, log=print, ray_options: dict | None = None,
             estimate: bool = True, engine: str = "auto", max_stack: int | None = None,
             precision: str = "fp32") -> list[dict]:
    """Run (or resume) every trial into `out`; returns the result rows, also written as results.csv/md.
    engine (local backend): "stacked" trains trials that share a data stream together (engine.py),
    "single" one after another, "auto" picks stacked on a GPU; max_stack caps the trials per stack."""
    out = Path(out)
    if backend == "ray":
        from .ray_backend import run_trials_on_ray  # a missing Ray stops here, before any work
        if precision != "fp32":
            raise UserError(f"--precision {precision}: the Ray backend trains in fp32 only")
    _check_grid_folder(out, trials, resume)
    dataset = ensure_dataset(data, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / GRID_FILE, {"trials": [{"name": t.name(), "config": t.to_dict()} for t in trials],
                                 "dataset": str(dataset.root)})
    todo = [t for t in trials if (runlog.read_config(out / t.name()) or {}).get("status")
            not in (runlog.STATUS_DONE, runlog.STATUS_DIVERGED)]
    from .train import resolve_device
    dev = resolve_device(device) if backend == "local" else device
    groups = [[t] for t in todo]
    if backend == "local":
        from .engine import plan_stacks, resolve_engine
        engine = resolve_engine(engine, dev, log)
        if engine == "stacked" and todo:
            stacks = plan_stacks(todo, [out / t.name() for t in todo], dev, dataset.num_classes, max_stack)
            groups = [[todo[i] for i in s] for s in stacks]
    if estimate and todo:
        eta = estimate_seconds(groups, dataset, dev if backend == "local" else "cpu")
        warn = " -- many hours on a CPU: consider a GPU or --preset quick" if eta > 3 * 3600 else ""
        log(f"grid: {len(trials)} trials ({len(trials) - len(todo)} already finished), "
            f"estimated {format_duration(eta)} on {dev}{warn}")
    else:
        log(f"grid: {len(trials)} trials ({len(trials) - len(todo)} already finished)")
    if any(len(g) > 1 for g in groups):
        log(f"stacked engine: {len(todo)} trials in {len(groups)} stack(s) of {', '.join(str(len(g)) for g in groups)}")
    if backend == "ray":
        run_trials_on_ray(todo, dataset.root, out, **(ray_options or {}), progress=progress, log=log)
    elif backend == "local":
        bar = progress_bar(total=len(trials), initial=len(trials) - len(todo), desc="trials", unit="trial",
                           enabled=progress, position=1)
        try:
            for group in groups:
                run_trials(group, dataset, out, dev, progress, log=log, engine=engine, precision=precision)
                write_results(out, collect_results(out, trials))
                bar.update(len(group))
        finally:
            bar.close()
    else:
        raise UserError(f"--backend {backend}: expected local or ray")
    rows = collect_results(out, trials)
    write_results(out, rows)
    return rows
