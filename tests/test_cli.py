"""The command line through real subprocesses (`python -m alexnet_tiny ...`): prepare, train and
evaluate on the generated 3-class data, --help everywhere, one-line summaries and one-line errors."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from alexnet_tiny import cli, runlog
from alexnet_tiny.config import PRESETS
from alexnet_tiny.device import require_torch
from alexnet_tiny.errors import UserError
from conftest import run_cli

SUBCOMMANDS = sorted(next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices)


@pytest.fixture(scope="module")
def pipeline(tiny_source, tmp_path_factory):
    """prepare, then train --preset quick with overrides: one real run shared by the tests below."""
    root = tmp_path_factory.mktemp("cli")
    data, run = root / "data", root / "run"
    prepare = run_cli("prepare", "--source", tiny_source, "--classes", 3, "--out", data, "-q", check=True)
    train = run_cli("train", "--preset", "quick", "--epochs", 1, "--image-size", 64, "--data", data,
                    "--out", run, "--device", "cpu", "-q", check=True)
    yield SimpleNamespace(data=data, run=run, prepare=prepare, train=train)
    shutil.rmtree(root)  # checkpoints, needed no more


def error_line(proc, command: str) -> str:
    """The only line of stderr, which must be the error."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"alexnet-tiny {command}: error: ")
    return lines[0]


# ----------------------------------------------------------------------------- help

def test_subcommands():
    """The parser offers exactly the commands the README documents (written out: not read from the parser)."""
    assert SUBCOMMANDS == sorted(["prepare", "train", "evaluate", "grid", "report", "predict"])


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help(command):
    proc = run_cli(*([command] if command else []), "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith(f"usage: alexnet-tiny{' ' + command if command else ''}")
    if command is None:
        assert all(c in proc.stdout for c in SUBCOMMANDS)


def test_train_flags():
    help_text = run_cli("train", "--help").stdout
    for flag in ("--data", "--out", "--lr", "--momentum", "--gamma", "--step-size", "--batch-size", "-b",
                 "--epochs", "--image-size", "--weight-decay", "--seed", "--device", "--resume", "--preset"):
        assert f" {flag}" in help_text, flag
    args = cli.build_parser().parse_args(["train", "--lr", "0.5", "-b", "7", "--step-size", "3", "--image-size", "96"])
    assert (args.lr, args.batch_size, args.step_size, args.image_size, args.momentum) == (0.5, 7, 3, 96, None)


def parser_actions():
    """(command, flag or positional name, argparse action) for every argument of every command."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return [(command, (a.option_strings or [a.dest])[-1], a) for command, sub in commands.items()
            for a in sub._actions if not isinstance(a, argparse._HelpAction)]


def test_every_flag_says_what_it_does_and_its_default_as_the_parser_has_it():
    """A default given in a flag's help is the parser's own; a hyperparameter's (None: the preset's)
    is the default preset's value."""
    from alexnet_tiny.config import DEFAULT_PRESET, HYPERPARAMETERS
    defaults = PRESETS[DEFAULT_PRESET]
    wrong = []
    for command, name, action in parser_actions():
        help_text = " ".join((action.help or "").split())
        if not help_text:
            wrong.append(f"{command} {name}: no help")
            continue
        default = action.default
        if command == "train" and action.dest in HYPERPARAMETERS:
            value = getattr(defaults, action.dest)
            default = str(value).lower() if isinstance(value, bool) else value
            expected = f"{DEFAULT_PRESET}: {default:g})" if isinstance(default, float) else f"{DEFAULT_PRESET}: {default})"
            if expected not in help_text:
                wrong.append(f"{command} {name}: {help_text!r} does not say {expected!r}")
        elif default not in (None, False) and not isinstance(action, argparse._StoreTrueAction):
            shown = re.escape(f"{default:g}" if isinstance(default, float) else str(default))
            if not re.search(rf"default:? {shown}\b|{shown} \(default", help_text):
                wrong.append(f"{command} {name}: {help_text!r} does not give its default {default!r}")
    assert wrong == []


def test_output_to_a_file_has_no_progress_bars_or_escape_codes(tmp_path):
    """Progress bars are for a terminal: a log file gets the commands' own lines, without carriage
    returns or escape codes."""
    log = tmp_path / "prepare.log"
    with log.open("w") as f:
        subprocess.run([sys.executable, "-m", "alexnet_tiny", "prepare", "--classes", "2", "--out",
                        str(tmp_path / "d")], stdout=f, stderr=subprocess.STDOUT, timeout=600, check=True)
    text = log.read_bytes().decode()  # as written: read_text would turn carriage returns into newlines
    assert text.strip().splitlines()[-1].startswith(f"prepared {tmp_path / 'd'}: 2 classes")
    assert "\r" not in text and "\x1b" not in text and "%|" not in text, repr(text[:300])


def test_choices_are_the_modules_own():
    """Every flag with a fixed set of values offers what the module that reads it accepts."""
    from alexnet_tiny import asha, config, data, device, engine, grid, runfolder
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    choices = {(command, flag): action.choices for command, sub in commands.items() for action in sub._actions
               if action.choices for flag in action.option_strings}
    assert choices == {**{(c, "--engine"): engine.ENGINES for c in ("train", "grid")},
                       **{(c, "--keep"): runfolder.KEEP_CHOICES for c in ("train", "grid")},
                       **{("train", f"--{field}"): values for field, values in config.CHOICES.items()},
                       **{(c, "--precision"): device.PRECISION_CHOICES for c in ("train", "grid")},
                       ("prepare", "--split"): data.SPLIT_KINDS, ("evaluate", "--split"): data.SPLITS,
                       ("grid", "--backend"): grid.BACKENDS, ("grid", "--scheduler"): asha.SCHEDULERS}


# ----------------------------------------------------------------------------- prepare, train, evaluate

def test_prepare_summary(pipeline):
    assert pipeline.prepare.stdout.splitlines() == [pipeline.prepare.stdout.strip()]  # -q: only the summary
    assert pipeline.prepare.stdout.startswith(
        f"prepared {pipeline.data}: 3 classes (train 1200, val 150, test 150, official-val 12; split number) in ")


@pytest.mark.slow
def test_train_preset_fills_values_and_flags_override_them(pipeline):
    rec = runlog.read_config(pipeline.run)
    assert rec["config"] == PRESETS["quick"].replace(epochs=1, image_size=64).to_dict()
    assert rec["config"]["batch_size"] == PRESETS["quick"].batch_size and rec["config"]["lr"] == PRESETS["quick"].lr
    assert rec["status"] == "done" and rec["device"] == "cpu"
    assert len(runlog.read_metrics(pipeline.run)) == 1
    files = {p.name for p in pipeline.run.iterdir()}
    assert {"config.json", "metrics.jsonl", "best.pt"} <= files and "last.pt" not in files  # --keep best: done
    assert any(p.name.startswith("events.out.tfevents.") for p in pipeline.run.iterdir())
    summary = pipeline.train.stdout.splitlines()
    assert len(summary) == 1
    assert summary[0].startswith(f"done: {pipeline.run}  best val {rec['best_val_accuracy']:.3f} at epoch 1, "
                                 f"test {rec['test_accuracy_at_best']:.3f}  (1 epoch, ")
    assert "epoch 1/1" in pipeline.train.stderr  # the epoch's log line


@pytest.mark.slow
def test_evaluate_table(pipeline):
    proc = run_cli("evaluate", pipeline.run / "best.pt", "--device", "cpu", "-q", check=True)
    lines = proc.stdout.splitlines()
    rec = runlog.read_config(pipeline.run)
    assert lines[0].split() == ["class", "wnid", "accuracy", "images"]
    for k, line in enumerate(lines[1:4]):
        name, wnid, accuracy, images = line.split()
        assert (name, wnid, images) == (f"colour{k}", f"n0900000{k}", "50") and 0 <= float(accuracy) <= 1
    assert lines[4].split()[0] == "all" and lines[4].split()[-1] == "150"
    assert lines[5] == lines[-1]  # the closing one-line summary
    assert lines[-1].startswith(f"test: accuracy {rec['test_accuracy_at_best']:.3f}, loss ") and \
        lines[-1].endswith(" on 150 images")


@pytest.mark.slow
@pytest.mark.parametrize("split,images", [("val", 150), ("official-val", 12)])
def test_evaluate_json(pipeline, split, images):
    proc = run_cli("evaluate", pipeline.run / "best.pt", "--split", split, "--json", "--device", "cpu", "-q",
                   check=True)
    result = json.loads(proc.stdout)
    assert result["split"] == split and result["images"] == images and result["epoch"] == 1
    assert [(c["wnid"], c["name"]) for c in result["per_class"]] == [(f"n0900000{k}", f"colour{k}") for k in range(3)]
    assert sum(c["images"] for c in result["per_class"]) == images
    assert sum(map(sum, result["confusion"])) == images
    assert result["accuracy"] == pytest.approx(sum(result["confusion"][k][k] for k in range(3)) / images)
    if split == "val":  # best.pt reproduces the validation accuracy that selected it
        assert result["accuracy"] == runlog.read_config(pipeline.run)["best_val_accuracy"]
    assert proc.stderr.strip().startswith(f"{split}: accuracy {result['accuracy']:.3f}")


@pytest.mark.slow
def test_train_resume_of_a_finished_run(pipeline):
    proc = run_cli("train", "--preset", "quick", "--epochs", 1, "--image-size", 64, "--data", pipeline.data,
                   "--out", pipeline.run, "--device", "cpu", "--resume", "-q", check=True)
    assert "already finished (done), nothing to do" in proc.stderr
    assert proc.stdout.startswith(f"done: {pipeline.run}  best val ") and len(proc.stdout.splitlines()) == 1


@pytest.mark.slow
def test_train_divergence_summary(small_data, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", "--lr", "1e6", "--epochs", 1, "--image-size", 64, "-b", 32, "--data", small_data,
                   "--out", run, "--device", "cpu", "-q", check=True)
    assert proc.stdout.splitlines() == [proc.stdout.strip()]
    assert proc.stdout.startswith(f"diverged: {run}  no epoch finished  (0 epochs, ")
    assert "diverged: train loss became" in proc.stderr and "Traceback" not in proc.stderr
    assert runlog.read_config(run)["status"] == "diverged"


@pytest.mark.slow
def test_train_into_an_existing_run_without_resume(pipeline):
    proc = run_cli("train", "--preset", "quick", "--epochs", 1, "--data", pipeline.data, "--out", pipeline.run, "-q")
    assert "already exists; add --resume" in error_line(proc, "train")


# ----------------------------------------------------------------------------- errors

INVALID_FLAGS = [(["--lr", "0"], "--lr 0.0: expected a number > 0"),
                 (["--lr", "-0.5"], "--lr -0.5: expected a number > 0"),
                 (["--momentum", "1"], "--momentum 1.0: expected a number in [0, 1)"),
                 (["--gamma", "0"], "--gamma 0.0: expected a number in (0, 1]"),
                 (["--gamma", "1.1"], "--gamma 1.1: expected a number in (0, 1]"),
                 (["-b", "0"], "--batch-size 0: expected an integer from 1 to 4096"),
                 (["--epochs", "0"], "--epochs 0: expected an integer from 1 to 10000"),
                 (["--step-size", "0"], "--step-size 0: expected an integer from 1 to 10000"),
                 (["--image-size", "32"], "--image-size 32: expected an integer from 64 to 512"),
                 (["--preset", "fast"], "--preset fast: unknown (expected one of seed, readme, quick"),
                 (["--lr", "inf"], "--lr inf: expected a finite number"),
                 (["--weight-decay", "nan"], "--weight-decay nan: expected a finite number"),
                 (["--warmup-epochs", "2", "--schedule", "constant"],
                  "--warmup-epochs 2: expected 0 with --schedule constant"),
                 (["--outputs", "-1"], "--outputs -1: expected an integer from 0 to 100000 (0: one per class)"),
                 (["--preset", "recipe-cpu", "--epochs", "2"], "--warmup-epochs 2 (from --preset recipe-cpu; give the "
                  "flag to change it): expected an integer >= 0 and below --epochs")]


@pytest.mark.parametrize("flags,message", INVALID_FLAGS)
def test_invalid_train_values(flags, message, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert cli.main(["train", *flags, "--data", str(data), "--out", str(run), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alexnet-tiny train: error: {message}") and err.count("\n") == 1
    assert not data.exists() and not run.exists()


@pytest.mark.slow
@pytest.mark.parametrize("flags,message", [INVALID_FLAGS[0], INVALID_FLAGS[8]])
def test_invalid_train_values_in_a_real_subprocess(flags, message, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    proc = run_cli("train", *flags, "--data", data, "--out", run)
    assert message in error_line(proc, "train") and proc.stdout == ""
    assert not data.exists() and not run.exists()


def test_evaluate_errors(tmp_path):
    missing = run_cli("evaluate", tmp_path / "nothing.pt")
    assert f"{tmp_path / 'nothing.pt'}: checkpoint not found" in error_line(missing, "evaluate")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert f"{bad}: not a PyTorch checkpoint" in error_line(run_cli("evaluate", bad), "evaluate")


@pytest.mark.slow
def test_evaluate_an_empty_split(pipeline, tmp_path):
    """A source without official-val images: evaluating that split is refused, not printed as NaN."""
    import shutil
    from conftest import make_source
    source = make_source(tmp_path / "src", classes=3, per_class=500, val_per_class=1)
    (source / "val" / "val_annotations.txt").write_text("")
    shutil.rmtree(source / "val" / "images")
    data = tmp_path / "data"
    run_cli("prepare", "--source", source, "--classes", 3, "--out", data, "-q", check=True)
    proc = run_cli("evaluate", pipeline.run / "best.pt", "--data", data, "--split", "official-val", "--json")
    assert f"{data}: its official-val split has no images to evaluate" in error_line(proc, "evaluate")
    assert proc.stdout == ""


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"alexnet-tiny {command}: error: "), err
    return err


@pytest.mark.parametrize("argv", [["train", "--lr", "fast"], ["grid", "--engine", "turbo"], ["prepare", "--classes"],
                                  ["evaluate"], ["frobnicate"]])
def test_argument_errors_are_one_line_with_a_pointer_to_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: " in err and err.rstrip().endswith("--help)"), err


@pytest.mark.parametrize("command", [["prepare"], ["train", "--epochs", "1"], ["grid"], ["report", "."]])
def test_out_that_is_a_file_is_refused(command, tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("mine")
    assert cli.main([*command, "--out", str(out), "-q"]) == 2
    assert f"--out {out}: is a file (expected a folder)" in one_line_error(capsys, command[0])
    assert out.read_text() == "mine"


def test_max_stack_below_one_is_refused(tmp_path, capsys):
    for value in ("0", "-2"):
        assert cli.main(["grid", "--max-stack", value, "--out", str(tmp_path / "g"), "-q"]) == 2
        assert f"--max-stack {value}: expected an integer >= 1" in one_line_error(capsys, "grid")
    assert not (tmp_path / "g").exists()


def test_max_concurrent_is_for_ray(tmp_path, capsys):
    assert cli.main(["grid", "--max-concurrent", "2", "--out", str(tmp_path / "g"), "-q"]) == 2
    assert "--max-concurrent 2: only with --backend ray" in one_line_error(capsys, "grid")
    assert not (tmp_path / "g").exists()


@pytest.mark.ray
def test_max_concurrent_is_at_least_one(tmp_path, capsys):
    assert cli.main(["grid", "--backend", "ray", "--max-concurrent", "0", "--out", str(tmp_path / "g"), "-q"]) == 2
    assert "--max-concurrent 0: expected an integer >= 1" in one_line_error(capsys, "grid")
    assert not (tmp_path / "g").exists()


def test_damaged_grid_json_on_resume_is_refused(tmp_path, capsys):
    out = tmp_path / "g"
    out.mkdir()
    (out / "grid.json").write_text('{"trials": [')
    assert cli.main(["grid", "--out", str(out), "--resume", "-q"]) == 2
    assert f"{out / 'grid.json'}: not a grid description" in one_line_error(capsys, "grid")


def test_non_finite_values_in_a_grid_file_are_refused(tmp_path, capsys):
    (tmp_path / "g.toml").write_text('preset = "quick"\nlr = [inf]\n')
    assert cli.main(["grid", "--config", str(tmp_path / "g.toml"), "--out", str(tmp_path / "g"), "-q"]) == 2
    assert "lr = inf: expected a finite number" in one_line_error(capsys, "grid")


def test_an_os_error_is_one_line(tmp_path, capsys):
    """A folder that cannot be written (here: its parent is a file) is the system's words, one line."""
    (tmp_path / "blocker").write_text("")
    assert cli.main(["prepare", "--out", str(tmp_path / "blocker" / "data"), "-q"]) == 2
    assert "blocker" in one_line_error(capsys, "prepare")


def test_unknown_device(tmp_path, capsys):
    assert cli.main(["train", "--device", "tpu", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")]) == 2
    assert "--device tpu: expected auto, cpu or cuda" in capsys.readouterr().err


# ----------------------------------------------------------------------------- torch version

TOO_OLD = ("torch 2.3.1 is too old: alexnet-tiny needs torch >= 2.4 (fused SGD on the CPU); "
           "upgrade with: pip install 'torch>=2.4'")


def test_too_old_torch_is_refused_before_any_work(tmp_path):
    """A real interpreter whose torch reports 2.3.1: prepare stops at once, in one line, writing nothing."""
    out = tmp_path / "data"
    code = ("import sys, torch; torch.__version__ = '2.3.1'; from alexnet_tiny.cli import main; "
            f"sys.exit(main(['prepare', '--out', {str(out)!r}, '-q']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"alexnet-tiny prepare: error: {TOO_OLD}"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("version,refused", [("2.3.1+cu121", True), ("2.4.0", False), ("2.13.0+cpu", False),
                                             ("2.5.0a0+git1234", False)])
def test_torch_versions_compare_as_numbers(version, refused, monkeypatch):
    monkeypatch.setattr(torch, "__version__", version)
    if refused:
        with pytest.raises(UserError, match=rf"^torch {re.escape(version)} is too old: "):
            require_torch()
    else:
        require_torch()  # "2.13" sorts before "2.4" as text, not as a version


# ----------------------------------------------------------------------------- one process at a time

HOLD = ("import sys, time; from alexnet_tiny.files import folder_lock\n"
        "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


@pytest.mark.parametrize("command", [["prepare"], ["train", "--epochs", "1"], ["grid"]])
def test_a_folder_in_use_by_another_process_is_refused(command, small_data, tmp_path):
    folder = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        data = [] if command[0] == "prepare" else ["--data", small_data]
        proc = run_cli(*command, *data, "--out", folder, "-q")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1
        assert f"is in use by process {holder.pid}" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    assert not folder.exists() or not any(folder.iterdir())  # nothing written under another's lock


def test_a_stale_lock_is_taken_over(tmp_path):
    from alexnet_tiny.files import folder_lock, lock_path
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmp_path / "run"
    lock_path(folder).write_text(f"{gone.pid}\n")  # a process killed while holding it
    with folder_lock(folder):
        assert lock_path(folder).read_text().split()[0] == str(os.getpid())
    assert not lock_path(folder).exists()


def test_bare_command_prints_an_overview_and_the_main_job():
    proc = run_cli()
    assert proc.returncode == 0 and proc.stderr == ""
    assert "alexnet-tiny grid --preset quick" in proc.stdout and "alexnet-tiny COMMAND --help" in proc.stdout


def test_version():
    from alexnet_tiny import __version__
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"alexnet-tiny {__version__}"
