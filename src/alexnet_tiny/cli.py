"""Command line: argument parsing, then one call into the modules per subcommand."""
from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

from . import __version__, runlog
from .config import CHOICES, DEFAULT_PRESET, DESCRIPTIONS, HYPERPARAMETERS, PRESET_PURPOSES, TYPES, preset
from .data import DEFAULT_DATA_DIR, SPLIT_KINDS, SPLITS, split_description
from .asha import SCHEDULERS
from .device import PRECISION_CHOICES, require_torch, resolve_device
from .engine import ENGINES
from .grid import ASHA_DEFAULTS, BACKENDS, GRID_PURPOSES, GRID_SCHEDULERS, choices_help, shipped_grid_names
from .errors import InvalidValue, UserError
from .files import folder_bytes, folder_lock
from .progress import format_size
from .runfolder import KEEP_CHOICES


class Parser(argparse.ArgumentParser):
    """argparse with a user's mistake in one line (not the usage block) and a pointer to --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_hyperparameter_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--lr, --momentum, ..., --step-size); None = from the preset."""
    kinds = {"float": float, "int": int, "str": str}
    defaults = preset(DEFAULT_PRESET)
    for name in HYPERPARAMETERS:
        flag = flag_name(name)
        extra = ["-b"] if name == "batch_size" else []
        value = getattr(defaults, name)
        shown = str(value).lower() if TYPES[name] == "bool" else f"{value:g}" if TYPES[name] == "float" else value
        text = f"{DESCRIPTIONS[name]} (default: the --preset's; {DEFAULT_PRESET}: {shown})"
        if TYPES[name] == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            p.add_argument(*extra, flag, type=kinds[TYPES[name]], default=None, choices=CHOICES.get(name), help=text)
    p.add_argument("--preset", default=DEFAULT_PRESET, metavar="PRESET",
                   help=f"fills the defaults of every flag above: {choices_help(PRESET_PURPOSES, DEFAULT_PRESET)}")


def add_engine_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="stacked: trials sharing a data stream train together as one stacked model (engine.py); "
                        "single: one trial at a time; auto (default): stacked on a GPU, single on the CPU")
    p.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                   help="bf16: forward and backward under bf16 autocast, fp32 weights and SGD; auto: bf16 where the "
                        "hardware runs it natively (a GPU, or a CPU with AVX512-BF16 or AMX), fp32 elsewhere; "
                        "config.json records which ran (default fp32)")


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (default: cuda where PyTorch sees a GPU, else cpu), cpu or "
                                                    "cuda")


def add_keep_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", default="best", choices=KEEP_CHOICES,
                   help="checkpoints a run keeps once it has ended: best (default): best.pt (about 230 MB for "
                        "10 classes), and last.pt (weights and momenta, twice that) only while the run may "
                        "continue, or for the study's own trials, whose final model it published; all: both, "
                        "to extend or fine-tune a run later")


def config_from_args(args):
    """The preset with the flags given; a value refused is named by its flag, and said to come from the
    preset where the user did not type it."""
    overrides = {n: getattr(args, n) for n in HYPERPARAMETERS if getattr(args, n) is not None}
    try:
        return preset(args.preset).replace(**overrides).validate()
    except InvalidValue as e:
        expected = e.expected
        for name in HYPERPARAMETERS:  # "below epochs" -> "below --epochs"
            expected = re.sub(rf"\b(below|with|when) {name}\b", rf"\1 {flag_name(name)}", expected)
        origin = "" if e.field in overrides else f" (from --preset {args.preset}; give the flag to change it)"
        given = flag_name(e.field) if TYPES[e.field] == "bool" else f"{flag_name(e.field)} {e.value}"
        raise UserError(f"{given}{origin}: expected {expected}") from None


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def cmd_prepare(args) -> int:
    from .data import load_dataset, prepare
    t0 = time.time()
    wnids = [w.strip() for w in args.wnids.split(",") if w.strip()] if args.wnids is not None else None
    if wnids is not None and not wnids:
        raise UserError(f"--wnids {args.wnids!r}: no wnid in it (expected comma-separated wnids such as n01443537,n01629819)")
    if args.seed is not None and args.split != "hash":
        raise UserError(f"--seed {args.seed}: only --split hash takes a seed (--split number is fixed by file names)")
    out = prepare(args.out, source=args.source, classes=args.classes, wnids=wnids,
                  seed=args.seed if args.seed is not None else 0, progress=not args.quiet, split=args.split)
    ds = load_dataset(out, progress=not args.quiet)
    counts = ", ".join(f"{s} {len(ds.splits[s])}" for s in SPLITS)
    print(f"prepared {out}: {ds.num_classes} classes ({counts}; split {split_description(ds.meta)}) "
          f"in {time.time() - t0:.1f}s")
    return 0


def cmd_train(args) -> int:
    from .data import ensure_dataset
    from .estimate import run_plan
    from .train import train
    config = config_from_args(args)
    resolve_device(args.device)  # a wrong --device before any data is prepared
    out = Path(args.out) if args.out else runlog.run_folder("runs", config)
    dataset = ensure_dataset(args.data, progress=not args.quiet, log=log)
    with folder_lock(out, "run folder"):  # a run folder in use is refused before the plan is measured
        plan = run_plan(config, dataset, args.device, out, args.resume, args.precision)
        if plan:
            log(plan)
        rec = train(config, data=dataset, out=out, device=args.device, resume=args.resume, progress=not args.quiet,
                    log=log, engine=args.engine, precision=args.precision, keep=args.keep)
    best, test = rec["best_val_accuracy"], rec["test_accuracy_at_best"]
    verdict = (f"best val {best:.3f} at epoch {rec['best_epoch']}, test {test:.3f}" if best is not None
               else "no epoch finished")
    epochs = f"{rec['epochs_done']} epoch{'s' * (rec['epochs_done'] != 1)}"
    print(f"{rec['status']}: {out}  {verdict}  ({epochs}, {rec['seconds']:.0f}s on {rec['device']}; "
          f"{format_size(folder_bytes(out))} on disk)")
    return 0 if rec["status"] != "failed" else 1


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_checkpoint, format_table
    result = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, device=args.device,
                                 progress=not args.quiet, flip=args.flip)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    line = f"{args.split}: accuracy {result['accuracy']:.3f}, loss {result['loss']:.4f} on {result['images']} images"
    if args.flip:
        line += f"; with flip averaging {result['flip_accuracy']:.3f}, loss {result['flip_loss']:.4f}"
    print(line, file=sys.stderr if args.json else sys.stdout)
    return 0


def parse_duration(text: str) -> float:
    """--time-budget: 90, 90s, 5m, 1.5h -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise UserError(f"--time-budget {text}: expected a duration > 0 such as 300, 300s, 5m or 1.5h")
    return seconds


def cmd_grid(args) -> int:
    from .grid import grid_scheduler, grid_trials, run_grid, with_seeds
    from .results import best_row, summary
    name, trials = grid_trials(args.preset, args.config)
    if args.seed:
        trials = [t.replace(seed=t.seed + args.seed).validate() for t in trials]
    if args.seeds is not None:
        trials = with_seeds(trials, args.seeds)
    out = Path(args.out or f"runs/{name}")
    t0 = time.time()
    if args.max_concurrent is not None and args.backend != "ray":
        raise UserError(f"--max-concurrent {args.max_concurrent}: only with --backend ray (the local backend runs "
                        f"one trial, or one stack of trials (--max-stack), at a time)")
    ray_options = {"address": args.address, "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
                   "max_concurrent": args.max_concurrent}
    scheduler = grid_scheduler(None if args.config else name, args.scheduler, args.grace_period, args.reduction_factor)
    budget = parse_duration(args.time_budget) if args.time_budget is not None else None
    rows = run_grid(trials, out, data=args.data, device=args.device, resume=args.resume, backend=args.backend,
                    progress=not args.quiet, log=log, ray_options=ray_options, engine=args.engine,
                    max_stack=args.max_stack, precision=args.precision, scheduler=scheduler, time_budget=budget,
                    keep=args.keep)
    where = "; no report (--no-report)"
    if not args.no_report:
        from .report import write_report
        where = f"; report {write_report(out, progress=not args.quiet, log=log) / 'index.html'}"
    best = best_row(rows)
    verdict = (f"best {best['trial']}: val {best['best_val_accuracy']:.3f} (epoch {best['best_epoch']}), "
               f"test {best['test_accuracy_at_best']:.3f}") if best else "no trial finished"
    print(f"grid {out}: {summary(rows)} in {time.time() - t0:.0f}s, {format_size(folder_bytes(out))} on disk; "
          f"{verdict}{where}")
    return 0


def cmd_report(args) -> int:
    from .report import summary_line, write_report
    out = write_report(args.runs_dir, out=args.out, progress=not args.quiet, log=log, data=args.data,
                       samples=args.samples, seed=args.seed, device=args.device)
    print(summary_line(out))
    return 0


def cmd_predict(args) -> int:
    from .predict import format_result, predict
    results = predict(args.checkpoint, args.images, topk=args.topk, device=args.device, cam=args.cam)
    for r in results:
        if "error" in r:
            print(f"alexnet-tiny predict: error: {r['error']}", file=sys.stderr)
    good = [r for r in results if "error" not in r]
    if args.json:
        print(json.dumps(results, indent=2))
    elif good:
        print("\n".join(format_result(r) for r in good))
    if args.cam and good:
        print(f"Grad-CAM of {len(good)} image(s) for the most probable class: {args.cam}",
              file=sys.stderr if args.json else sys.stdout)
    return 1 if len(good) < len(results) else 0


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="alexnet-tiny", description="AlexNet on Tiny Image10: prepare data, train one "
                                 "configuration or a grid, evaluate, report, predict.")
    ap.add_argument("--version", action="version", version=f"alexnet-tiny {__version__}")
    sub = ap.add_subparsers(dest="command", parser_class=Parser)

    p = sub.add_parser("prepare", help="split an archive into a prepared dataset folder and decoded cache")
    p.add_argument("--source", default=None, help="Tiny ImageNet zip or folder (default: the embedded Tiny Image10 archive)")
    p.add_argument("--classes", type=int, default=10, help="take the first N wnids in sorted order (default 10)")
    p.add_argument("--wnids", default=None, help="comma-separated wnids instead of --classes")
    p.add_argument("--split", default="number", choices=SPLIT_KINDS,
                   help="number (default): the study's split by the file number n of <wnid>_<n>.JPEG, 0-49 val, "
                        "50-99 test, 100 and up train; hash: 400/50/50 per class ordered by a seeded hash of the "
                        "file names (--seed)")
    p.add_argument("--seed", type=int, default=None, help="--split hash: its seed (default 0)")
    p.add_argument("--out", default=str(DEFAULT_DATA_DIR), help=f"output folder (default {DEFAULT_DATA_DIR})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one configuration, logged to TensorBoard")
    p.add_argument("--data", default=None, help=f"prepared dataset (default {DEFAULT_DATA_DIR}, prepared on first use)")
    p.add_argument("--out", default=None, help="run folder (default runs/<hyperparameters>)")
    add_hyperparameter_flags(p)
    add_device_flag(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_keep_flag(p)
    add_engine_flag(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="loss, accuracy and per-class accuracy of a checkpoint")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="best.pt or last.pt of a run")
    p.add_argument("--data", default=None, help="prepared dataset (default: the one recorded in the run, else data/tiny-image10)")
    p.add_argument("--split", default="test", choices=SPLITS, help="the images to evaluate on (default test)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--flip", action="store_true", help="also the accuracy with test-time flip averaging (the logits "
                   "of each image and its mirror image, averaged), reported beside the plain one")
    add_device_flag(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("grid", help="run a grid of configurations (seed study, quick, or a TOML grid)")
    p.add_argument("--preset", default=None, metavar="PRESET",
                   help=f"the grid: {choices_help(GRID_PURPOSES, DEFAULT_PRESET)}")
    p.add_argument("--config", default=None, help=f"TOML grid file, or the name of one the package ships (the "
                                                    f"repository's grids/: {shipped_grid_names()}); overrides --preset")
    p.add_argument("--data", default=None, help=f"prepared dataset (default {DEFAULT_DATA_DIR}, prepared on first use)")
    p.add_argument("--out", default=None, help="grid folder (default runs/<grid name>)")
    add_device_flag(p)
    p.add_argument("--resume", action="store_true", help="skip finished trials, continue unfinished ones")
    p.add_argument("--no-report", action="store_true", help="do not write the report when the grid finishes")
    p.add_argument("--seed", type=int, default=0,
                   help="added to every trial's seed: the same grid from other random weights, order and crops "
                        "(default 0: the grid's own seeds)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="run every configuration N times, from its seed and the next N - 1: replicates, whose mean "
                        "and spread the results and the report show; the best configuration is then chosen on the "
                        "mean validation accuracy")
    p.add_argument("--backend", default="local", choices=BACKENDS, help="local (default: this machine) or ray (a Ray cluster, docs/ray.md)")
    add_keep_flag(p)
    add_engine_flag(p)
    p.add_argument("--scheduler", default=None, choices=SCHEDULERS,
                   help="asha: stop trials whose validation accuracy trails at rungs (epochs grace period x "
                        "reduction factor^k), as Ray Tune's ASHAScheduler (default: the preset's, else none)")
    def asha_default(key: str) -> str:
        presets = ", ".join(f"{v[key]:g} for --preset {name}" for name, v in GRID_SCHEDULERS.items())
        return f"default {ASHA_DEFAULTS[key]:g}; {presets}"
    p.add_argument("--grace-period", type=int, default=None, metavar="EPOCHS",
                   help=f"asha: epochs before the first rung ({asha_default('grace_period')})")
    p.add_argument("--reduction-factor", type=float, default=None, metavar="F",
                   help=f"asha: rung spacing, and the fraction 1/F of trials kept at each "
                        f"({asha_default('reduction_factor')})")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="start no epoch that would end after this much wall time (e.g. 300, 5m, 1.5h); the grid "
                        "ends resumable, with its results and report")
    p.add_argument("--max-stack", type=int, default=None, metavar="N",
                   help="stacked engine: at most N trials at once (default: as many as fit in memory)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="Ray: CPUs per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="Ray: GPUs per trial, fractions allowed (default 0)")
    p.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="Ray: at most N trials at once (default: as many as the cluster's CPUs and GPUs hold). With "
                        "--scheduler asha and more than one at a time, which trials ASHA stops depends on which "
                        "report first, so two runs of a grid may stop different ones (no seed fixes that); every "
                        "decision is recorded in asha.jsonl and --resume continues from them. 1 judges in grid "
                        "order and stops what the local backend stops")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("report", help="results table, learning curves, per-class accuracy, samples and index.html")
    p.add_argument("runs_dir", metavar="RUNS_DIR", nargs="+",
                   help="a grid folder (from `grid`) or a run folder (from `train`); several: one report over all "
                        "their trials (to compare presets or ablations; needs --out)")
    p.add_argument("--out", metavar="DIR", default=None, help="report folder (default RUNS_DIR/report)")
    p.add_argument("--data", default=None, help="prepared dataset (default: the one recorded in the best trial)")
    p.add_argument("--samples", type=int, default=24, help="sample test images shown with predictions (default 24)")
    p.add_argument("--seed", type=int, default=0, help="which sample images (default 0)")
    add_device_flag(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("predict", help="top-k classes of new images with a checkpoint")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="best.pt or last.pt of a run")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...; any size and mode)")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--cam", metavar="OUT.png", default=None,
                   help="also draw each image under its class-activation map (Grad-CAM, last conv layer) for the "
                        "most probable class, into this PNG")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_device_flag(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (predict shows none; accepted as "
                                                                   "every command accepts it)")
    p.set_defaults(func=cmd_predict)
    return ap


def check_out(args) -> None:
    """--out names a folder: a file there is a mistake, said before any work."""
    out = getattr(args, "out", None)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out}: is a file (expected a folder)")
    if out is None or args.command == "prepare" or not hasattr(args, "data"):
        return
    if args.command == "report" and args.data is None:
        return  # the report reads each trial's recorded dataset, not the default folder
    data = Path(args.data) if args.data is not None else DEFAULT_DATA_DIR
    out_path, data_path = Path(out).resolve(), data.resolve()
    if out_path == data_path or data_path in out_path.parents:
        raise UserError(f"--out {out}: is inside the data folder {data} (its runs would become a class folder "
                        f"there); choose a folder outside it")
    if out_path in data_path.parents:
        raise UserError(f"--out {out}: holds the data folder {data} (a run there would mix with the data); "
                        f"choose another folder")


OVERVIEW = """alexnet-tiny: AlexNet (Krizhevsky et al., 2012) on Tiny Image10, the first 10 classes of Tiny ImageNet.

The main job, on the embedded data (about 15 minutes on a 2-core laptop CPU), with its report:
    alexnet-tiny grid --preset quick

The original study as its code ran (12 trials; a GPU job):
    alexnet-tiny grid --preset seed

Commands: prepare, train, evaluate, grid, report, predict. For one: alexnet-tiny COMMAND --help
"""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that it ends as an interrupted one does."""


def _terminate(signum, frame) -> None:
    raise Terminated()


MAX_ERROR_CHARS = 600  # a value pasted into a grid file can be 200,000 characters: the line shows its ends


def shortened(message: str) -> str:
    """One error line of a readable length: the middle of a longer one is cut, said so."""
    message = message.replace("\n", " ")
    if len(message) <= MAX_ERROR_CHARS:
        return message
    half = MAX_ERROR_CHARS // 2
    return f"{message[:half]} [... {len(message) - 2 * half:,} characters ...] {message[-half:]}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        print(OVERVIEW, end="")
        return 0
    # SIGTERM (a job scheduler, `kill`) ends the command as Ctrl-C does: its line, and what resumes it
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    try:
        require_torch()
        check_out(args)
        return args.func(args)
    except UserError as e:
        print(f"alexnet-tiny {args.command}: error: {shortened(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only disk, a folder removed under us: the system's words, one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"alexnet-tiny {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"alexnet-tiny {args.command}: {what}; rerun with --resume to continue from the last checkpoint",
              file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
