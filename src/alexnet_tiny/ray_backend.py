"""Grid trials on Ray Tune (`alexnet-tiny grid --backend ray`).

Each unfinished trial becomes one Tune trial that calls train.run_trials, so it writes exactly the run
folder `train` writes and the grid's results, resume and report never know Ray was used. Tune is
only the scheduler: no Tune checkpoints (last.pt in the run folder is the checkpoint), no Tune
loggers (the run folder has its own TensorBoard file) and no Tune restore (grid --resume skips
finished trials and run_trials continues the others from last.pt). On a multi-node cluster the
grid folder and the data folder must therefore be on storage every node sees (docs/ray.md).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import torch

from . import runlog
from .asha import Asha
from .config import TrainConfig
from .data import load_dataset
from .errors import UserError, exception_line
from .progress import format_duration
from .runfolder import record_failure, stop_at_rung
from .train import run_trials
from .trial import RunOptions

INSTALL_HINT = "pip install 'alexnet-tiny[ray]'"
MIN_RAY = (2, 41)  # ray.tune.report / ray.tune.RunConfig, the Tune-only API of Ray 2.41+
TUNE_STORAGE = ".ray_results"  # under the grid folder: Tune's own records (state, result.json, error.txt)

try:
    import ray
    from ray import cloudpickle, tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.stopper import TimeoutStopper
except ImportError as e:
    raise UserError(f"--backend ray needs Ray Tune ({e}); install it with: {INSTALL_HINT}") from None

if tuple(int(p) for p in ray.__version__.split(".")[:2]) < MIN_RAY:
    raise UserError(f"--backend ray needs Ray >= {'.'.join(map(str, MIN_RAY))} (found {ray.__version__}); "
                    f"upgrade with: {INSTALL_HINT}")

# Tune defaults we switch off: its CSV and TensorBoard loggers (copies of the run folder's; TensorBoard
# pointed at the grid folder would show every trial twice; only result.json is kept, which Tune's own
# result fetching reads), its Ctrl-C handler (it ends the experiment as if it had finished; we want
# KeyboardInterrupt, then `grid ... --resume`) and the new console output, whose experiment box
# prints even at verbose=0.
# Strict metric checking is off too: a trial that diverges in its first epoch reports no epoch, and
# Tune would call its final result (which lacks val_accuracy) an error of the scheduler's.
TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_DISABLE_SIGINT_HANDLER": "1", "RAY_AIR_NEW_OUTPUT": "0",
            "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}
# Defaults only, the user's own setting wins: a Ray instance we start does not send usage statistics.
RAY_ENV_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0"}


def train_trial(tune_config: dict, data_root: str, out: str, device: str, threads: int) -> None:
    """The Tune function trainable: one grid trial into out/<name>, each epoch's metrics reported to Tune."""
    torch.set_num_threads(threads)
    config = TrainConfig.from_dict(tune_config["trial"]["config"])
    run = runlog.run_folder(out, config)
    # load_dataset, not ensure_dataset: a worker that cannot see the data folder must fail, not prepare
    # another. The decoded cache is memory-mapped: the trials on one node share its pages.
    dataset = load_dataset(data_root, progress=False)
    # Tune reports synchronously: a trial its scheduler stops ends inside tune.report (the epoch it
    # reports is saved by then). The last epoch is reported once the run folder says done, so that a
    # decision at a trial's last epoch finds it done.
    last = []
    run_trials([config], dataset, [run], device, "single", RunOptions(
        progress=False, callback=lambda row: last.append(row) if row["epoch"] == config.epochs else tune.report(row)))
    for row in last:
        tune.report(row)


def trial_name(trial) -> str:
    """A Tune trial's name and folder under .ray_results: the run folder's name."""
    return trial.config["trial"]["name"]


class AshaScheduler(FIFOScheduler):
    """asha.Asha as a Tune scheduler: each rung's result judged as it arrives, in the order trials
    report it, and the decision appended to the grid folder's asha.jsonl before Tune acts on it (a
    resumed grid restores them: `restore_decisions`). The trials it stops: `stops`."""

    _supports_buffered_results = False  # every result is judged as it comes, none batched

    def __init__(self, asha: Asha, out: Path):
        super().__init__()
        self.asha, self.out = asha, out
        self.stops: dict[str, tuple[int, str]] = {}  # trial -> (epoch, reason)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        name, epoch = trial_name(trial), result.get("epoch")
        if epoch in self.asha.rungs and name not in self.asha.recorded[epoch]:
            reason = self.asha.judge(name, epoch, result["val_accuracy"])
            record_decision(self.out, name, epoch, result["val_accuracy"], reason)
            if reason:
                self.stops[name] = (epoch, reason)
                return self.STOP
        return self.CONTINUE


def record_decision(out: Path, name: str, epoch: int, val_accuracy: float, reason: str | None) -> None:
    runlog.append_jsonl(out / runlog.DECISIONS_FILE, {
        "trial": name, "epoch": epoch, "val_accuracy": val_accuracy, "decision": "stop" if reason else "continue",
        "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def restore_decisions(asha: Asha, trials: list[TrainConfig], out: Path, runs: dict[str, Path], log) -> None:
    """A resumed grid's ASHA state: the decisions asha.jsonl recorded, in their order; then, in grid
    order, those a kill kept from it (a rung a run folder reached without a recorded decision: judged
    now if the trial is still there, counted as gone on if it trained past it). A trial a recorded
    decision stopped is marked stopped if its run folder does not say so yet. Nothing is judged twice."""
    for row in runlog.read_jsonl(out / runlog.DECISIONS_FILE):
        name, epoch = row["trial"], row["epoch"]
        if name in runs and epoch in asha.recorded and name not in asha.recorded[epoch]:
            asha.record(name, epoch, row["val_accuracy"])
            if row["decision"] == "stop":
                stop_at_rung(runs[name], epoch, row["reason"], log)
    for name, run in runs.items():
        done = runlog.epochs_done(run)
        for rung in asha.rungs:
            value = runlog.val_accuracy_at(run, rung) if rung <= done and name not in asha.recorded[rung] else None
            if value is None:
                continue
            if rung < done:  # it trained past the rung before the kill: it went on there
                asha.record(name, rung, value)
                reason = None
            else:
                reason = asha.judge(name, rung, value)
            record_decision(out, name, rung, value, reason)
            if reason:
                stop_at_rung(run, rung, reason, log)


class BudgetStopper(TimeoutStopper):
    """Tune's own time-budget stopper (what time_budget_s builds), remembering whether it stopped the run."""

    def __init__(self, seconds: float):
        super().__init__(seconds)
        self.fired = False

    def stop_all(self) -> bool:
        self.fired = self.fired or super().stop_all()
        return self.fired


class GridProgress(tune.Callback):
    """Driver-side progress: one line per epoch result (when `progress`), one per finished trial with
    the time left, from the epochs still to run and the rate at which this run has run them so far
    (all trials together, so it counts the trials running side by side)."""

    def __init__(self, runs: dict[str, Path], todo: list[TrainConfig], progress: bool, log, stops: dict | None = None):
        self.runs, self.total, self.progress, self.log = runs, len(todo), progress, log
        self.stops = {} if stops is None else stops  # trial -> (epoch, reason) where the scheduler stopped it
        self.done_before = {t.name(): runlog.epochs_done(runs[t.name()]) for t in todo}
        self.epochs_left = {t.name(): t.epochs - self.done_before[t.name()] for t in todo}
        self.finished, self.epochs_run, self.start = 0, 0, time.time()
        self.user_errors: list[str] = []  # "name: message" of UserErrors raised inside trials
        self.unseen: list[str] = []  # trials that finished on a worker whose run folder the driver cannot see

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epochs = trial.config["trial"]["config"]["epochs"]
        self.epochs_left[trial_name(trial)] = epochs - result["epoch"]
        self.epochs_run += 1
        if self.progress:
            self.log(f"{trial_name(trial)}: epoch {result['epoch']}/{epochs}  "
                     f"train loss {result['train_loss']:.4f}  val {result['val_accuracy']:.3f}  "
                     f"test {result['test_accuracy']:.3f}  {result['epoch_seconds']:.1f}s")

    def on_trial_complete(self, iteration, trials, trial, **info):
        name = trial_name(trial)
        rec = runlog.read_config(self.runs[name])
        if rec is None:
            self.unseen.append(name)
            status = "finished on a worker, but its run folder is not visible here"
        else:
            epoch, reason = self.stops.get(name, (None, None))
            if epoch is not None:  # ASHA stopped it
                rec = stop_at_rung(self.runs[name], epoch, reason) or rec
            status = rec["status"] + (f" ({rec['reason']})" if rec.get("reason") else "")
            if rec.get("best_val_accuracy") is not None:
                status += f", best val {rec['best_val_accuracy']:.3f}"
        self._finished(name, status)

    def on_trial_error(self, iteration, trials, trial, **info):
        name = trial_name(trial)
        message, user_error = trial_error_message(trial)
        if user_error:
            self.user_errors.append(f"{name}: {message}")
        else:  # the worker died (node lost, out of memory) before run_trials could record it
            record_failure(TrainConfig.from_dict(trial.config["trial"]["config"]), self.runs[name], message)
        self._finished(name, f"error: {message}")

    def _finished(self, name: str, what: str) -> None:
        self.finished += 1
        self.epochs_left[name] = 0
        left = sum(self.epochs_left.values())
        eta = ""
        if left and self.epochs_run:
            eta = f", about {format_duration((time.time() - self.start) / self.epochs_run * left)} left"
        self.log(f"trials {self.finished}/{self.total} finished{eta} -- {name}: {what}")


def trial_error_message(trial) -> tuple[str, bool]:
    """(one-line message, whether it is a UserError) for the exception that ended a Tune trial."""
    # the driver's copies, written before on_trial_error is called; the pickle only for Ray's own errors
    if trial.pickled_error_file and os.path.exists(trial.pickled_error_file):
        with open(trial.pickled_error_file, "rb") as f:
            error = cloudpickle.load(f)
    else:
        error = Path(trial.error_file).read_text() if trial.error_file else "unknown error"
    cause = getattr(error, "cause", error)  # RayTaskError wraps the trial's own exception
    if isinstance(cause, UserError):
        message = str(cause)
    elif isinstance(cause, BaseException):
        message = exception_line(cause)
    else:
        message = next((line for line in str(cause).splitlines()[::-1] if line.strip()), "unknown error")
    return message, isinstance(cause, UserError)


@contextlib.contextmanager
def quiet_tune():
    """TUNE_ENV and RAY_ENV_DEFAULTS set, and Tune's logger limited to critical errors: a failed trial's
    traceback is in .ray_results/<experiment>/<trial>/error.txt and the driver prints its cause."""
    changes = {**{k: v for k, v in RAY_ENV_DEFAULTS.items() if k not in os.environ}, **TUNE_ENV}
    saved = {k: os.environ.get(k) for k in changes}
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    os.environ.update(changes)
    tune_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tune_logger.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_session(address: str | None, log):
    """Connect to the cluster at `address` (or RAY_ADDRESS), else start a local instance; yields True
    for a local instance. Disconnects (and stops a local instance) on the way out, Ctrl-C included."""
    if ray.is_initialized():  # the caller's own session (Python API use): leave it alone
        yield False
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:  # Ray counts the machine's CPUs (and GPUs) itself, container CPU limits included
            ray.init(address="local", **quiet)
    except ConnectionError as e:  # Ray >= 2.59 clusters also refuse clients without their token
        raise UserError(f"--address {address}: cannot connect to a Ray cluster ({e}); is it running, and is "
                        f"its token here (RAY_AUTH_MODE=token, ~/.ray/auth_token)? See docs/ray.md") from None
    try:
        resources = ray.cluster_resources()
        log(f"ray: {'local instance' if not address else address}, "
            f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
        yield not address
    finally:
        ray.shutdown()


def check_resources(cpus_per_trial: float, gpus_per_trial: float, local: bool, log) -> None:
    """A trial runs on one node: refuse (local instance) or warn about (cluster, which may grow) a request
    no live node can hold, rather than let Tune wait for it forever."""
    if cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial {cpus_per_trial:g}: expected a number > 0")
    if gpus_per_trial < 0 or (gpus_per_trial > 1 and not float(gpus_per_trial).is_integer()):
        raise UserError(f"--gpus-per-trial {gpus_per_trial:g}: expected a fraction in [0, 1] or a whole number")
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    for flag, wanted, key in (("--cpus-per-trial", cpus_per_trial, "CPU"), ("--gpus-per-trial", gpus_per_trial, "GPU")):
        largest = max((n.get(key, 0) for n in nodes), default=0)
        if wanted > largest:
            message = f"{flag} {wanted:g}: no Ray node has more than {largest:g} {key}s"
            if local:
                raise UserError(message)
            log(f"warning: {message}; the trials wait until one joins the cluster")


def run_trials_on_ray(todo: list[TrainConfig], data_root: Path | str, out: Path | str, runs: dict[str, Path],
                      address: str | None = None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                      progress: bool = True, log=print, asha: Asha | None = None, trials: list[TrainConfig] | None = None,
                      time_budget: float | None = None, max_concurrent: int | None = None) -> bool:
    """Run the unfinished trials `todo` as Ray Tune trials into the grid folder `out` (their run folders:
    `runs`, by trial name), at most `max_concurrent` at a time (None: as many as the cluster's resources hold).
    Trial outcomes are in the run folders (as with the local backend); a trial whose worker died is
    recorded as failed; a UserError inside trials (e.g. a data folder a node cannot see) is raised here.

    With `asha` (ASHA over the grid's `trials`), AshaScheduler judges results as they arrive and
    records its decisions in asha.jsonl; a resumed grid restores them first (restore_decisions).
    One trial at a time runs them in grid order and stops what the local backend stops.
    time_budget: seconds, Tune's own time-budget stopper (the trials left running continue on --resume).
    Returns True when the time budget ended the run before its trials did."""
    out, data_root = Path(out).resolve(), Path(data_root).resolve()  # workers run in other directories
    runs = {name: out / run.name for name, run in runs.items()}
    scheduler = None
    if asha is not None:
        restore_decisions(asha, trials or todo, out, runs, log)
        scheduler = AshaScheduler(asha, out)
        todo = runlog.unfinished(todo, runs)
    if not todo:
        return False
    device = "cuda" if gpus_per_trial > 0 else "cpu"
    with quiet_tune(), ray_session(address, log) as local:
        check_resources(cpus_per_trial, gpus_per_trial, local, log)
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, data_root=str(data_root), out=str(out), device=device,
                                 threads=max(1, int(cpus_per_trial))),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        progress_cb = GridProgress(runs, todo, progress, log, scheduler.stops if scheduler else None)
        stopper = BudgetStopper(time_budget) if time_budget is not None else None
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([{"name": t.name(), "config": t.to_dict()} for t in todo])},
            tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                        scheduler=scheduler, max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(
                name=time.strftime("grid-%Y%m%d-%H%M%S"), storage_path=str(out / TUNE_STORAGE), verbose=0,
                stop=stopper, callbacks=[progress_cb, JsonLoggerCallback()], log_to_file=True,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
        t0 = time.time()
        tuner.fit()
    statuses = [(runlog.read_config(runs[t.name()]) or {}).get("status", "no run folder") for t in todo]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    log(f"ray: {len(todo)} trial{'s' * (len(todo) != 1)} in {time.time() - t0:.0f}s: {counts}")
    if progress_cb.user_errors:
        raise UserError(f"{len(progress_cb.user_errors)} of {len(todo)} Ray trials stopped; first: "
                        f"{progress_cb.user_errors[0]}")
    if progress_cb.unseen:
        raise UserError(f"{out}: trial {progress_cb.unseen[0]} finished on a Ray worker but its run folder is not "
                        f"here; on a multi-node cluster --out and --data must be on storage every node shares")
    unfinished = [s for s in statuses if s not in runlog.FINISHED and s != runlog.STATUS_FAILED]
    return bool(stopper and stopper.fired and unfinished)
