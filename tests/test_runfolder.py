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
