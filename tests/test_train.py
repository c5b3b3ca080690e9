"""train.py: real training runs on the small generated dataset, their run folders (config.json,
metrics.jsonl, TensorBoard files read back with EventAccumulator, checkpoints), resume and divergence.

One uninterrupted run (A) and one run stopped after epoch 1 (B) are trained once per module and
shared; tests that resume B work on copies of its folder."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from alexnet_tiny import runlog
from alexnet_tiny.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet_tiny.config import TrainConfig
from alexnet_tiny.data import load_dataset
from alexnet_tiny.errors import UserError
from alexnet_tiny.device import resolve_device
from alexnet_tiny.evaluate import evaluate
from alexnet_tiny.train import TrialState, train
from conftest import FAST, quiet, stop_after, without_timing

pytestmark = pytest.mark.usefixtures("narrow_alexnet")  # many trial-epochs; the real width is not needed
# 12 steps an epoch on small_data (192 training images); the learning rate halves every epoch.
TRAIN = FAST.replace(lr=0.02, batch_size=16, epochs=3)


@pytest.fixture(scope="module")
def dataset(small_data):
    return load_dataset(small_data, progress=False)


@pytest.fixture(scope="module")
def run_a(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "a"
    train(TRAIN, dataset, out, device="cpu", progress=False, log=quiet, keep="all")  # last.pt read below
    return out


@pytest.fixture(scope="module")
def run_b(dataset, tmp_path_factory) -> Path:
    """The same configuration as A, interrupted after epoch 1."""
    out = tmp_path_factory.mktemp("train") / "b"
    with pytest.raises(KeyboardInterrupt):
        train(TRAIN, dataset, out, device="cpu", progress=False, log=quiet, callback=stop_after(1))
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


# ----------------------------------------------------------------------------- one run

def test_training_learns(run_a):
    rows = runlog.read_metrics(run_a)
    losses = [r["train_loss"] for r in rows]
    assert losses == sorted(losses, reverse=True) and losses[-1] < math.log(3)  # falls every epoch, below chance
    assert rows[-1]["val_accuracy"] > 0.8  # 3 colour classes: chance is 1/3


def test_metrics_jsonl(run_a, dataset):
    rows = runlog.read_metrics(run_a)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert set(r) == {"epoch", *runlog.TAGS}
        for split in ("train", "val", "test"):
            n = len(dataset.splits[split])
            assert 0 <= r[f"{split}_accuracy"] <= 1 and r[f"{split}_loss"] > 0
            assert abs(r[f"{split}_accuracy"] * n - round(r[f"{split}_accuracy"] * n)) < 1e-9  # a count over n images
        assert r["epoch_seconds"] > 0 and r["images_per_second"] > 0
    assert [r["lr"] for r in rows] == pytest.approx([0.02, 0.01, 0.005])  # StepLR(step_size=1, gamma=0.5)


def test_config_json(run_a, dataset):
    rec = runlog.read_config(run_a)
    rows = runlog.read_metrics(run_a)
    best = max(rows, key=lambda r: r["val_accuracy"])  # the first epoch reaching the maximum
    assert rec["status"] == runlog.STATUS_DONE and "reason" not in rec
    assert rec["config"] == TRAIN.to_dict() and rec["name"] == TRAIN.name()
    assert rec["device"] == "cpu" and rec["epochs_done"] == 3
    assert rec["best_val_accuracy"] == best["val_accuracy"] and rec["best_epoch"] == best["epoch"]
    assert rec["test_accuracy_at_best"] == best["test_accuracy"]
    assert rec["final_train_loss"] == rows[-1]["train_loss"]
    assert rec["dataset"]["wnids"] == dataset.wnids and rec["dataset"]["names"] == dataset.names
    assert rec["dataset"]["source_sha256"] == dataset.meta["source_sha256"]
    assert 0 < rec["seconds"] <= sum(r["epoch_seconds"] for r in rows) + 1


def test_tensorboard_scalars(run_a):
    scalars = runlog.read_scalars(run_a)
    rows = runlog.read_metrics(run_a)
    for key, tag in runlog.TAGS.items():
        assert [step for step, _ in scalars[tag]] == [1, 2, 3], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([r[key] for r in rows], rel=1e-6), tag
    rec = runlog.read_config(run_a)
    for key, tag in runlog.HPARAM_METRICS.items():
        assert scalars[tag] == [(3, pytest.approx(rec[key], rel=1e-6))]


def test_tensorboard_hparams(run_a):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    acc = EventAccumulator(str(run_a))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    for key in ("lr", "momentum", "gamma", "step_size", "batch_size", "epochs", "image_size", "weight_decay", "seed"):
        assert values[key] == pytest.approx(getattr(TRAIN, key)), key
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == set(runlog.HPARAM_METRICS.values())


def test_checkpoints_load_with_weights_only(run_a, dataset):
    rec = runlog.read_config(run_a)
    rows = {r["epoch"]: r for r in runlog.read_metrics(run_a)}
    last = torch.load(run_a / runlog.LAST_CKPT, weights_only=True)
    best = torch.load(run_a / runlog.BEST_CKPT, weights_only=True)
    assert {"model", "optimizer", "epoch", "config", "classes", "preprocessing", "precision"} <= set(last)
    assert "optimizer" not in best and best["precision"] == "fp32"
    assert last["epoch"] == 3 and best["epoch"] == rec["best_epoch"]
    assert last["config"] == TRAIN.to_dict() and last["classes"]["wnids"] == dataset.wnids
    assert last["preprocessing"]["image_size"] == 64
    assert not [p for p in run_a.iterdir() if ".tmp-" in p.name]  # atomic writes leave no temporary files
    # The checkpoints hold the weights that produced the logged metrics.
    for name, epoch in ((runlog.BEST_CKPT, rec["best_epoch"]), (runlog.LAST_CKPT, 3)):
        model = model_from_checkpoint(load_checkpoint(run_a / name))
        for split in ("val", "test"):
            ev = evaluate(model, dataset.splits[split], 64, torch.device("cpu"), dataset.num_classes)
            assert ev.accuracy == rows[epoch][f"{split}_accuracy"]
            assert ev.loss == pytest.approx(rows[epoch][f"{split}_loss"], rel=1e-5)


def test_evaluation_confusion_matrix(run_a, dataset):
    model = model_from_checkpoint(load_checkpoint(run_a / runlog.LAST_CKPT))
    ev = evaluate(model, dataset.splits["val"], 64, torch.device("cpu"), dataset.num_classes)
    assert ev.confusion.shape == (3, 3) and ev.confusion.sum(1).tolist() == [20, 20, 20]
    assert ev.accuracy == pytest.approx(ev.confusion.trace().item() / 60)
    assert ev.per_class_accuracy == pytest.approx([ev.confusion[k, k].item() / 20 for k in range(3)])


# ----------------------------------------------------------------------------- resume

def assert_same_run(run: Path, reference: Path):
    assert without_timing(runlog.read_metrics(run)) == without_timing(runlog.read_metrics(reference))
    rec, ref = runlog.read_config(run), runlog.read_config(reference)
    assert {k: v for k, v in rec.items() if k != "seconds"} == {k: v for k, v in ref.items() if k != "seconds"}
    scalars, ref_scalars = runlog.read_scalars(run), runlog.read_scalars(reference)
    for tag in [*runlog.TAGS.values(), *runlog.HPARAM_METRICS.values()]:
        steps = [s for s, _ in scalars[tag]]
        assert steps == [s for s, _ in ref_scalars[tag]], f"{tag}: steps {steps}"  # no duplicates
        if not tag.startswith("time/"):
            assert scalars[tag] == ref_scalars[tag], tag
    a = torch.load(run / runlog.LAST_CKPT, weights_only=True)["model"]
    b = torch.load(reference / runlog.LAST_CKPT, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_interrupted_run_state(run_b):
    rec = runlog.read_config(run_b)
    assert rec["status"] == runlog.STATUS_RUNNING and rec["epochs_done"] == 1
    assert [r["epoch"] for r in runlog.read_metrics(run_b)] == [1]
    assert torch.load(run_b / runlog.LAST_CKPT, weights_only=True)["epoch"] == 1


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(run_a, run_b, dataset, tmp_path):
    run = copy_run(run_b, tmp_path)
    logged = []
    rec = train(TRAIN, dataset, run, device="cpu", resume=True, progress=False, log=logged.append, keep="all")
    assert f"continuing {run} at epoch 2/3 from its last checkpoint" in logged
    assert rec["status"] == runlog.STATUS_DONE
    assert_same_run(run, run_a)


@pytest.mark.slow
def test_resume_after_a_kill_before_the_first_checkpoint(run_a, run_b, dataset, tmp_path):
    """Killed after epoch 1 was logged (metrics.jsonl, TensorBoard) but before last.pt was written:
    the run starts again at epoch 1 and TensorBoard still shows each step once."""
    run = copy_run(run_b, tmp_path)
    (run / runlog.LAST_CKPT).unlink()
    (run / runlog.BEST_CKPT).unlink()
    train(TRAIN, dataset, run, device="cpu", resume=True, progress=False, log=quiet, keep="all")
    assert_same_run(run, run_a)


def test_a_resumed_checkpoint_is_read_on_the_cpu_whatever_the_device(run_b, dataset, tmp_path):
    """last.pt comes back mapped on the CPU (the engine copies it into the stack one trial at a time),
    not loaded onto the run's device beside the model."""
    from alexnet_tiny.runfolder import RunFolder
    run = copy_run(run_b, tmp_path)
    folder = RunFolder(TRAIN, dataset, run, torch.device("meta"), resume=True, log=quiet)
    ckpt = folder.resume_checkpoint()
    assert ckpt["epoch"] == 1 and folder.start_epoch == 2
    tensors = [*ckpt["model"].values(), *(s["momentum_buffer"] for s in ckpt["optimizer"]["state"].values())]
    assert tensors and all(t.device.type == "cpu" for t in tensors)


@pytest.mark.slow
def test_a_resume_takes_its_best_from_best_pt(run_b, dataset, tmp_path):
    """A kill after best.pt of epoch 2 was written but before last.pt: the resume starts again at
    epoch 2 and takes its best from best.pt, so config.json always names what best.pt holds. (Here
    that best.pt claims an unbeatable validation accuracy, so nothing may replace it.)"""
    run = copy_run(run_b, tmp_path)  # interrupted after epoch 1
    claimed = {"epoch": 2, "val_accuracy": 2.0, "test_accuracy": 0.5}
    best = torch.load(run / runlog.BEST_CKPT, weights_only=True)
    torch.save({**best, "epoch": 2, "best": claimed}, run / runlog.BEST_CKPT)
    rec = train(TRAIN, dataset, run, device="cpu", resume=True, progress=False, log=quiet)
    assert rec["status"] == runlog.STATUS_DONE and rec["epochs_done"] == 3
    assert (rec["best_epoch"], rec["best_val_accuracy"]) == (2, 2.0)
    assert torch.load(run / runlog.BEST_CKPT, weights_only=True)["best"] == claimed


def test_resume_with_a_cut_metrics_line(run_b, dataset, tmp_path):
    """A kill in the middle of writing metrics.jsonl leaves half a line: resume drops it."""
    run = copy_run(run_b, tmp_path)
    with open(run / runlog.METRICS_FILE, "a") as f:
        f.write('{"epoch": 2, "train_loss": 0.5')
    assert [r["epoch"] for r in runlog.read_metrics(run)] == [1]
    assert [r["epoch"] for r in runlog.truncate_metrics(run, 1)] == [1]
    assert (run / runlog.METRICS_FILE).read_text().count("\n") == 1


def test_resume_of_a_finished_run_does_nothing(run_a, dataset):
    before = {p.name: p.stat().st_mtime_ns for p in run_a.iterdir()}
    recorded = runlog.read_config(run_a)
    logged = []
    rec = train(TRAIN, dataset, run_a, device="cpu", resume=True, progress=False, log=logged.append)
    assert rec == recorded and (rec["status"], rec["epochs_done"]) == ("done", TRAIN.epochs)
    assert logged == [f"{run_a}: already finished (done), nothing to do"]
    assert {p.name: p.stat().st_mtime_ns for p in run_a.iterdir()} == before


def test_existing_run_folder_needs_resume(run_a, dataset):
    with pytest.raises(UserError, match="already exists; add --resume"):
        train(TRAIN, dataset, run_a, device="cpu", progress=False, log=quiet)


def test_resume_with_other_hyperparameters_is_refused(run_b, dataset, tmp_path):
    run = copy_run(run_b, tmp_path)
    with pytest.raises(UserError, match="holds a run with other hyperparameters"):
        train(TRAIN.replace(lr=0.03), dataset, run, device="cpu", resume=True, progress=False, log=quiet)
    assert [r["epoch"] for r in runlog.read_metrics(run)] == [1]


def test_resume_after_an_image_moved_between_splits_is_refused(run_b, small_data, tmp_path):
    """One test image moved by hand into train/: the folder holds the same classes, source and kind of
    split, but a resume would train on a test image; refused in one line naming the split, as is
    evaluating the checkpoint on it."""
    data, run = Path(shutil.copytree(small_data, tmp_path / "data")), copy_run(run_b, tmp_path)
    image = sorted((data / "test").rglob("*.JPEG"))[0]
    image.rename(data / "train" / image.parent.name / image.name)
    moved = load_dataset(data, progress=False)
    with pytest.raises(UserError, match=r"its train split holds other images than the run's") as e:
        train(TRAIN, moved, run, device="cpu", resume=True, progress=False, log=quiet)
    assert "\n" not in str(e.value)
    assert [r["epoch"] for r in runlog.read_metrics(run)] == [1]
    from alexnet_tiny.evaluate import evaluate_checkpoint
    with pytest.raises(UserError, match=r"its train split holds other images"):
        evaluate_checkpoint(run / runlog.LAST_CKPT, data=data, device="cpu", progress=False)


# ----------------------------------------------------------------------------- divergence, bad values

@pytest.mark.slow
def test_divergence_ends_the_run_cleanly(dataset, tmp_path):
    run = tmp_path / "diverged"
    logged = []
    rec = train(TRAIN.replace(lr=1e6), dataset, run, device="cpu", progress=False, log=logged.append)
    assert rec["status"] == runlog.STATUS_DIVERGED
    assert runlog.read_config(run) == rec
    assert "train loss became" in rec["reason"] and "epoch 1" in rec["reason"]
    assert rec["best_val_accuracy"] is None and rec["test_accuracy_at_best"] is None and rec["epochs_done"] == 0
    rows = runlog.read_metrics(run)
    assert rows[-1]["status"] == runlog.STATUS_DIVERGED and rows[-1]["reason"] == rec["reason"]
    assert any(m.startswith("diverged: ") for m in logged)
    # resuming a diverged run does not train it again
    assert train(TRAIN.replace(lr=1e6), dataset, run, device="cpu", resume=True, progress=False, log=quiet) == rec


INVALID = [("lr", 0.0), ("lr", -0.1), ("momentum", 1.0), ("momentum", -0.1), ("gamma", 0.0), ("gamma", 1.5),
           ("batch_size", 0), ("epochs", 0), ("step_size", 0), ("image_size", 63), ("weight_decay", -1.0),
           ("seed", -1), ("lr", float("nan"))]


@pytest.mark.parametrize("name,value", INVALID)
def test_invalid_values_are_refused_before_any_work(name, value, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    with pytest.raises(UserError) as e:
        train(TrainConfig().replace(**{name: value}), data, run, device="cpu", progress=False, log=quiet)
    message = str(e.value)
    assert message.startswith(f"{name} = ") and "expected" in message and "\n" not in message
    assert not data.exists() and not run.exists()  # nothing prepared, nothing written


def test_boundary_values_are_accepted():
    TrainConfig(lr=1e-9, momentum=0.0, gamma=1.0, step_size=1, batch_size=1, epochs=1, image_size=64).validate()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="--device tpu: expected auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")


def test_the_studys_scalars_are_in_tensorboard(run_a):
    """What the study asks for, read back from a real event file: train, validation and test loss and
    accuracy every epoch, and the learning rate."""
    scalars = runlog.read_scalars(run_a)
    for split in ("train", "val", "test"):
        for metric in ("loss", "accuracy"):
            assert [step for step, _ in scalars[f"{split}/{metric}"]] == [1, 2, 3]
    assert [v for _, v in scalars["lr"]] == pytest.approx([0.02, 0.01, 0.005])


def test_run_files_are_strict_json(run_a):
    """config.json and metrics.jsonl parse as strict JSON (no NaN or Infinity, which other tools reject)."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    rec = json.loads((run_a / runlog.CONFIG_FILE).read_text(), parse_constant=refuse)
    assert rec["status"] == runlog.STATUS_DONE
    rows = [json.loads(line, parse_constant=refuse) for line in (run_a / runlog.METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_bf16_forward_after_a_step_sees_the_updated_weights(dataset):
    """One autocast region spans an epoch: each forward in it must use the weights as the last SGD
    step left them (autocast's cache of bf16 weight copies would keep the epoch's first ones)."""
    from alexnet_tiny.device import autocast
    from alexnet_tiny.transforms import eval_batch
    state = TrialState(TRAIN, dataset.num_classes, "cpu")
    state.model.eval()  # no dropout: the same input gives the same logits unless the weights changed
    x, y = eval_batch(dataset.splits["train"].images[:8], TRAIN.image_size), dataset.splits["train"].labels[:8]
    with autocast("cpu", "bf16"):
        before = state.model(x)
        torch.nn.functional.cross_entropy(before.float(), y).backward()
        state.step(0.05)
        after = state.model(x)
    assert (after.float() - before.float()).abs().max() > 1e-3


def test_an_empty_train_split_is_refused(small_data, tmp_path):
    data = Path(shutil.copytree(small_data, tmp_path / "data"))
    shutil.rmtree(data / "train")
    with pytest.raises(UserError, match="its train split has no images to train on"):
        train(TRAIN, load_dataset(data, progress=False), tmp_path / "run", device="cpu", progress=False, log=quiet)
    assert not (tmp_path / "run").exists()


def test_resume_in_another_precision_is_refused(run_b, dataset, tmp_path):
    run = copy_run(run_b, tmp_path)
    with pytest.raises(UserError, match="its epochs were trained in fp32; resume it with --precision fp32 .not bf16."):
        train(TRAIN, dataset, run, device="cpu", resume=True, progress=False, log=quiet, precision="bf16")
    assert runlog.epochs_done(run) == 1
