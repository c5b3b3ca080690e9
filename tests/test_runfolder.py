"""runfolder.py, one run folder through its run: a scheduler's stop lands only on a trial still
running at that rung, a call ends done or still running, a finished folder says so once, and the
temporary files of a killed writer go at the next run."""
from __future__ import annotations

import pytest

from alexnet_tiny import runlog
from alexnet_tiny.data import load_dataset
from alexnet_tiny.runfolder import RunFolder, stop_at_rung
from alexnet_tiny.train import train

from conftest import FAST, quiet

pytestmark = pytest.mark.usefixtures("narrow_alexnet")
CONFIG = FAST.replace(batch_size=32, epochs=2)


@pytest.fixture(scope="module")
def dataset(small_data):
    return load_dataset(small_data, progress=False)


def test_a_stop_lands_only_on_a_trial_running_at_the_rung(dataset, tmp_path):
    run = tmp_path / "run"
    rec = train(CONFIG, dataset, run, device="cpu", progress=False, log=quiet, until=1)
    assert rec["status"] == runlog.STATUS_RUNNING and rec["epochs_done"] == 1  # ended at the rung, resumable
    assert stop_at_rung(run, 2, "too late", quiet) is None  # not at epoch 2: it has not got there
    lines = []
    stopped = stop_at_rung(run, 1, "stopped by ASHA at epoch 1: test", lines.append)
    assert stopped["status"] == runlog.STATUS_STOPPED and runlog.read_config(run) == stopped
    assert lines == ["run: stopped by ASHA at epoch 1: test"]
    assert runlog.read_metrics(run)[-1] == {"epoch": 1, "status": "stopped", "reason": "stopped by ASHA at epoch 1: test"}
    assert stop_at_rung(run, 1, "again", quiet) is None  # stopped once
    assert len(runlog.read_metrics(run)) == 2
    lines = []
    again = train(CONFIG, dataset, run, device="cpu", resume=True, progress=False, log=lines.append)
    assert again == stopped and lines == [f"{run}: already finished (stopped), nothing to do"]
    assert (run / runlog.LAST_CKPT).exists()  # a call that trained nothing removes nothing (the grid releases it)


def test_a_call_ends_done_after_the_last_epoch_and_leftovers_go(dataset, tmp_path):
    run = tmp_path / "run"
    train(CONFIG, dataset, run, device="cpu", progress=False, log=quiet, until=1)
    leftover = run / f".{runlog.LAST_CKPT}.tmp-999999"  # what a writer killed inside atomic_path leaves
    leftover.write_bytes(b"half a checkpoint")
    rec = train(CONFIG, dataset, run, device="cpu", resume=True, progress=False, log=quiet)
    assert rec["status"] == runlog.STATUS_DONE and rec["epochs_done"] == 2
    assert not leftover.exists()
    folder = RunFolder(CONFIG, dataset, run, "cpu", resume=True, log=quiet)
    assert folder.finished and folder.previous == rec


def test_a_run_keeps_last_pt_only_while_it_may_continue(dataset, tmp_path):
    """--keep best: last.pt stays while the run is resumable (a rung, a budget), goes once it is done;
    --keep all keeps it; best.pt always stays."""
    run, kept = tmp_path / "run", tmp_path / "kept"
    rec = train(CONFIG, dataset, run, device="cpu", progress=False, log=quiet, until=1)
    assert rec["status"] == runlog.STATUS_RUNNING and (run / runlog.LAST_CKPT).exists()
    rec = train(CONFIG, dataset, run, device="cpu", resume=True, progress=False, log=quiet)
    assert rec["status"] == runlog.STATUS_DONE and not (run / runlog.LAST_CKPT).exists()
    assert (run / runlog.BEST_CKPT).exists()
    train(CONFIG, dataset, kept, device="cpu", progress=False, log=quiet, keep="all")
    assert (kept / runlog.LAST_CKPT).exists()


def test_the_studys_trials_keep_their_final_model(tmp_path):
    """The study published its final models: a finished trial of the seed preset keeps last.pt (the
    report measures its train accuracy); any other finished trial gives it up; a running one keeps it."""
    from alexnet_tiny.config import PRESETS
    from alexnet_tiny.runfolder import release_checkpoints
    for name, config, status, stays in (("study", PRESETS["seed"].replace(lr=0.005), "done", True),
                                        ("quick", PRESETS["quick"], "done", False),
                                        ("stopped", PRESETS["quick"], "stopped", False),
                                        ("running", PRESETS["quick"], "running", True)):
        run = tmp_path / name
        runlog.write_config(run, {"config": config.to_dict(), "status": status})
        (run / runlog.LAST_CKPT).write_bytes(b"x" * 1000)
        assert release_checkpoints(run) == (0 if stays else 1000) and (run / runlog.LAST_CKPT).exists() == stays


def test_train_returns_the_run_at_hand(dataset, tmp_path):
    from alexnet_tiny import read_run
    run = train(CONFIG.replace(epochs=1), dataset, tmp_path / "run", device="cpu", progress=False, log=quiet)
    assert run.folder == tmp_path / "run" and run.config == CONFIG.replace(epochs=1)
    assert [row["epoch"] for row in run.history] == [1] and run == runlog.read_config(run.folder)
    saved = run.load()
    assert saved.evaluate(dataset.splits["val"]).accuracy == pytest.approx(run["best_val_accuracy"])
    assert read_run(run.folder) == run and "done, 1 epoch(s), best val" in repr(run)
