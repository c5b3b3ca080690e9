"""engine.py: trials trained together in one stack are the same trials as trained alone.

Trials that share a data stream but differ in lr, momentum, schedule, weight decay, nesterov and
label smoothing (and a second stream with random resized crops and mixup) are trained once stacked
and once each alone (train.py's loop, fp32 on the CPU). They must agree to rounding, where
"rounding" is measured in the same run: the same trials trained alone again through other
convolution kernels (contiguous weights; PyTorch's native convolutions), nothing else changed. Then the stack's run folders,
resume (also across engines), divergence of one trial in a stack, planning and the CLI."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alexnet_tiny.trial as trial_module
from alexnet_tiny import runlog
from alexnet_tiny.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet_tiny.data import load_dataset
from alexnet_tiny.engine import (StackedAlexNet, StackedSGD, plan_stacks, resolve_engine, stack_capacity,
                                 train_stack, trial_bytes)
from alexnet_tiny.errors import UserError
from alexnet_tiny.model import AlexNet, count_parameters
from alexnet_tiny.train import TrialState, train
from alexnet_tiny.trial import TrialLosses, momenta_from_state, stream_key

functional_sgd = trial_module._functional_sgd  # torch's, before a test wraps it to count its calls
from conftest import FAST, NARROW_ENV, quiet, run_cli, stop_after, without_timing

BASE = FAST.replace(lr=0.02, batch_size=16, epochs=2)  # 12 steps an epoch on small_data
TRIALS = [BASE,
          BASE.replace(lr=0.01, momentum=0.5, weight_decay=5e-4, nesterov=True, label_smoothing=0.1),
          BASE.replace(lr=0.03, schedule="cosine", warmup_epochs=1)]
RRC = BASE.replace(augment="rrc", crop_scale=0.35, mixup=0.4)  # another stream: crops, flips and mixup weights
RRC_TRIALS = [RRC, RRC.replace(lr=0.01, weight_decay=5e-4, label_smoothing=0.1)]
DIVERGING = BASE.replace(lr=1e6)
pytestmark = pytest.mark.usefixtures("narrow_alexnet")  # many trial-epochs; the real width is not needed
train_module = importlib.import_module("alexnet_tiny.train")  # the module (the package exports the function)
# Learns in epoch 1 (lr 0.15 in warmup), diverges in epoch 2 (lr 0.3): measured on small_data with the
# narrow AlexNet, the trial diverges at epoch 2 for any lr from 0.1 to 0.7, at epoch 1 from 1.0.
LATE_DIVERGING = BASE.replace(lr=0.3, schedule="cosine", warmup_epochs=1)


def free(folder: Path) -> None:
    """Empty a passing test's folder: its trials' checkpoints take 0.7 GB each."""
    shutil.rmtree(folder)
    folder.mkdir()


@pytest.fixture(scope="module")
def dataset(small_data):
    return load_dataset(small_data, progress=False)


def train_alone(trials, dataset, out: Path, layout=None) -> Path:
    """Each trial in train.py's loop; `layout`: train in that memory format instead of channels_last."""
    before = train_module.CPU_TRAINING_LAYOUT
    train_module.CPU_TRAINING_LAYOUT = layout or before
    try:
        for t in trials:
            train(t, dataset, out / t.name(), device="cpu", progress=False, log=quiet, engine="single", keep="all")
    finally:
        train_module.CPU_TRAINING_LAYOUT = before
    return out


@pytest.fixture(scope="module")
def stacked(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("engine") / "stacked"
    for trials in (TRIALS, RRC_TRIALS):
        train_stack(trials, dataset, [out / t.name() for t in trials], "cpu", progress=False, log=quiet,
                    checkpoint_seconds=0)
    yield out
    shutil.rmtree(out)  # 3 GB of checkpoints


@pytest.fixture(scope="module")
def alone(dataset, tmp_path_factory) -> Path:
    out = train_alone(TRIALS + RRC_TRIALS, dataset, tmp_path_factory.mktemp("engine") / "alone")
    yield out
    shutil.rmtree(out)


@pytest.fixture(scope="module")
def alone_again(dataset, tmp_path_factory) -> list[Path]:
    """The same trials alone through other convolution kernels, the same arithmetic otherwise: with
    contiguous instead of channels_last weights, and with PyTorch's native convolutions instead of
    oneDNN's. Which of the two perturbs a trial as much as the stack's grouped convolutions depends
    on the CPU (measured: the first on an AMX Xeon, the second with oneDNN limited to AVX2), so the
    drift is the larger of the two."""
    root = tmp_path_factory.mktemp("engine")
    contiguous = train_alone(TRIALS + RRC_TRIALS, dataset, root / "contiguous", torch.contiguous_format)
    torch.backends.mkldnn.enabled = False  # (its flags() context also sets TF32 and warns about it)
    try:
        native = train_alone(TRIALS + RRC_TRIALS, dataset, root / "native")
    finally:
        torch.backends.mkldnn.enabled = True
    yield [contiguous, native]
    shutil.rmtree(root)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def initial_weights(config) -> dict:
    return TrialState(config, 3, "cpu").model.state_dict()


def update_errors(run_a: Path, run_b: Path, config) -> dict[str, tuple[float, float]]:
    """Per tensor: how far apart two runs' weight updates (w - w0) and momenta are, relative to
    run_b's (norms)."""
    w0 = initial_weights(config)
    last_a, last_b = (load_checkpoint(r / runlog.LAST_CKPT) for r in (run_a, run_b))
    names = list(w0)
    m_a, m_b = (momenta_from_state(c["optimizer"], names) for c in (last_a, last_b))
    return {n: (relative_error(last_a["model"][n] - w0[n], last_b["model"][n] - w0[n]),
                relative_error(m_a[i], m_b[i]) if config.momentum > 0 else 0.0) for i, n in enumerate(names)}


METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy")


def metric_errors(run_a: Path, run_b: Path) -> dict[str, float]:
    """Per metric, the largest difference between two runs over their epochs (relative for losses)."""
    rows_a, rows_b = runlog.read_metrics(run_a), runlog.read_metrics(run_b)
    assert [r["epoch"] for r in rows_a] == [r["epoch"] for r in rows_b] and rows_a
    return {key: max(abs(a[key] - b[key]) / (b[key] if key.endswith("loss") else 1) for a, b in zip(rows_a, rows_b))
            for key in METRICS}


def assert_same_trial(run_a: Path, run_b: Path, drift: dict, factor: float = 10.0) -> None:
    """Two run folders of one trial agree to rounding: every tensor's update and momentum, and every
    logged metric, within `factor` times what other convolution kernels alone did to the same
    trial (`drift`, measured in this run; ReLU and argmax boundaries amplify last-bit differences
    over the 24 steps); accuracies may also differ by one image. The learning rates are equal."""
    for a, b in zip(runlog.read_metrics(run_a), runlog.read_metrics(run_b)):
        assert a["lr"] == b["lr"]  # one closed-form schedule for both loops
    for key, error in metric_errors(run_a, run_b).items():
        one_image = 1 / SPLIT_IMAGES[key.split("_")[0]] + 1e-12 if key.endswith("accuracy") else 1e-6
        assert error <= factor * drift["metrics"][key] + one_image, (key, error, drift["metrics"][key])
    config = load_checkpoint(run_b / runlog.LAST_CKPT)["config"]
    floor = 1e-6  # tensors that rounding left bitwise equal in the drift run
    for name, (update, momentum) in update_errors(run_a, run_b, BASE.from_dict(config)).items():
        update_drift, momentum_drift = drift["tensors"][name]
        assert update <= factor * max(update_drift, floor), (name, update, update_drift)
        assert momentum <= factor * max(momentum_drift, floor), (name, momentum, momentum_drift)


SPLIT_IMAGES = {"train": 192, "val": 60, "test": 60}  # small_data: 64 / 20 / 20 images a class, 3 classes


@pytest.fixture(scope="module")
def drift(alone, alone_again) -> dict[str, dict]:
    """trial name -> what other convolution kernels alone do to it: per-tensor (update, momentum)
    errors and per-metric differences, the larger of the two references in `alone_again`."""
    out = {}
    for t in TRIALS + RRC_TRIALS:
        tensors = [update_errors(again / t.name(), alone / t.name(), t) for again in alone_again]
        metrics = [metric_errors(again / t.name(), alone / t.name()) for again in alone_again]
        out[t.name()] = {"tensors": {n: tuple(map(max, zip(*(e[n] for e in tensors)))) for n in tensors[0]},
                         "metrics": {k: max(m[k] for m in metrics) for k in metrics[0]}}
    return out


# ----------------------------------------------------------------------------- the stacked model

@pytest.mark.parametrize("conv,smoothing", [("grouped", [0.0, 0.1, 0.2]), ("split", [0.0, 0.1, 0.2]),
                                            ("grouped", [0.1, 0.1, 0.1])])
def test_stacked_forward_and_gradients_equal_separate_models(conv, smoothing):
    torch.manual_seed(0)
    models = [AlexNet(5) for _ in range(3)]
    stack = StackedAlexNet(models[0], 3, conv=conv)
    for k, m in enumerate(models):
        stack.load_trial(k, m.state_dict())
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    losses = TrialLosses(smoothing)(stack(x), y)
    losses.sum().backward()
    for k, m in enumerate(models):
        torch.manual_seed(1)  # the same dropout masks: the stack draws one per layer, as each model does
        m.train()
        loss = torch.nn.functional.cross_entropy(m(x), y, label_smoothing=smoothing[k])
        loss.backward()
        assert torch.allclose(losses[k], loss, rtol=1e-5)
        for (name, p), sp in zip(m.named_parameters(), stack.params):
            assert torch.allclose(sp.grad[k], p.grad, atol=1e-6, rtol=1e-4), name
    stack.eval()
    with torch.no_grad():
        logits = stack(x)
        for k, m in enumerate(models):
            assert torch.allclose(logits[k], m.eval()(x), atol=1e-5)


def test_stack_weights_are_k_alexnets():
    """K copies of the model's weights, each trial's own: loading one trial changes no other."""
    base, other = AlexNet(10), AlexNet(10)
    stack = StackedAlexNet(base, 4)
    assert sum(p.numel() for p in stack.params) == 4 * count_parameters(base)
    stack.load_trial(2, other.state_dict())
    for k, expected in enumerate([base, base, other, base]):
        weights, ref = stack.trial_state_dict(k), expected.state_dict()
        assert weights.keys() == ref.keys()
        assert all(torch.equal(weights[n], ref[n]) for n in ref), k


# ----------------------------------------------------------------------------- stacked = alone

@pytest.mark.slow
def test_a_stacked_trial_matches_the_same_trial_trained_alone(stacked, alone, drift):
    for t in TRIALS + RRC_TRIALS:
        assert_same_trial(stacked / t.name(), alone / t.name(), drift[t.name()])
        first = [runlog.read_metrics(r / t.name())[0] for r in (stacked, alone)]
        assert first[0]["train_loss"] == pytest.approx(first[1]["train_loss"], rel=1e-5)  # before any drift


@pytest.mark.slow
def test_the_drift_reference_is_rounding_not_nothing(alone, alone_again, drift):
    """The references really change the rounding (else every tolerance would be the floor) and no
    more than rounding (updates agree to a few per cent)."""
    for t in TRIALS:
        updates = [u for u, _ in drift[t.name()]["tensors"].values()]
        assert max(updates) > 0 and max(updates) < 0.1, t.name()


def test_weight_decay_moves_weights_and_spares_biases_in_both_loops():
    """One SGD step with zero gradients: the update is exactly -lr * wd * w on weights (the first
    momentum buffer is the decayed gradient) and nothing on biases, alone and in a stack."""
    config = BASE.replace(lr=0.5, weight_decay=0.01, momentum=0.9)
    single = TrialState(config, 3, "cpu")
    w0 = {n: p.detach().clone() for n, p in single.model.named_parameters()}
    for p in single.model.parameters():
        p.grad = torch.zeros_like(p)
    single.step(config.lr)
    stack = StackedAlexNet(AlexNet(3), 2)
    for k in range(2):
        stack.load_trial(k, w0)
    sgd = StackedSGD(stack, [config, config.replace(weight_decay=0.0)])
    for p in stack.params:
        p.grad = torch.zeros_like(p)
    sgd.step()
    for (name, p), stacked_p in zip(single.model.named_parameters(), stack.params):
        expected = w0[name] * (1 - config.lr * config.weight_decay) if name.endswith("weight") else w0[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0)
        torch.testing.assert_close(stacked_p[0].detach(), expected, rtol=1e-6, atol=0)
        assert torch.equal(stacked_p[1].detach(), w0[name])  # no decay: zero gradient, no move
        if name.endswith("weight"):
            assert not torch.equal(p.detach(), w0[name])


def test_trials_sharing_their_update_share_one_fused_call(monkeypatch):
    """A step's fused SGD calls: one per set of trials with the same lr, momentum, nesterov and decay,
    weights and biases together without weight decay; each trial's update is the one it gets alone."""
    torch.manual_seed(0)
    stack = StackedAlexNet(AlexNet(3), 4)
    configs = [BASE, BASE.replace(seed=1), BASE.replace(lr=0.05), BASE.replace(weight_decay=5e-4)]
    sgd = StackedSGD(stack, configs)
    calls = []
    monkeypatch.setattr(trial_module, "_functional_sgd", lambda params, *a, **k: (
        calls.append(len(params)), functional_sgd(params, *a, **k)))
    grads = [torch.randn_like(p) for p in stack.params]
    w0 = [stack.trial_state_dict(k) for k in range(4)]
    for p, g in zip(stack.params, grads):
        p.grad = g.clone()
    sgd.step()
    # trials 0 and 1, with trial 3's biases (no decay on biases); trial 2 alone; trial 3's decayed weights
    n = len(stack.params)
    assert sorted(calls) == sorted([2 * n + n // 2, n, n // 2])
    for k, config in enumerate(configs):
        single = TrialState(config, 3, "cpu")
        single.model.load_state_dict(w0[k])
        for p, g in zip(single.model.parameters(), grads):
            p.grad = g[k].clone()
        single.step(config.lr)
        for (name, p), stacked in zip(single.model.named_parameters(), stack.params):
            assert torch.equal(stacked[k].detach(), p.detach()), (k, name)
    sgd.deactivate(1)  # diverged: frozen from now on, its stack mates go on as before
    frozen = {k: v.clone() for k, v in stack.trial_state_dict(1).items()}
    calls.clear()
    sgd.step()
    assert len(calls) == 3 and sum(calls) == 3 * n
    assert all(torch.equal(v, stack.trial_state_dict(1)[k]) for k, v in frozen.items())


@pytest.mark.slow
def test_stacked_run_folders_are_what_train_writes(stacked, alone, dataset):
    for t in TRIALS:
        run = stacked / t.name()
        rec, ref = runlog.read_config(run), runlog.read_config(alone / t.name())
        assert rec["status"] == "done" and rec["config"] == t.to_dict() and rec["epochs_done"] == 2
        assert rec.keys() == ref.keys() and rec["best_epoch"] == ref["best_epoch"]
        scalars = runlog.read_scalars(run)
        assert all([s for s, _ in scalars[tag]] == [1, 2] for tag in runlog.TAGS.values())
        assert scalars[runlog.HPARAM_METRICS["best_val_accuracy"]][0][1] == pytest.approx(rec["best_val_accuracy"])
        best = load_checkpoint(run / runlog.BEST_CKPT)
        assert best["epoch"] == rec["best_epoch"] and "optimizer" not in best
        for name in (runlog.LAST_CKPT, runlog.BEST_CKPT):  # one trial's tensors, not views of the whole stack
            size, alone_size = ((r / t.name() / name).stat().st_size for r in (stacked, alone))
            assert abs(size - alone_size) < 0.01 * alone_size, (name, size, alone_size)
        model_from_checkpoint(best)  # loads into a plain AlexNet


@pytest.mark.slow
def test_resume_of_an_interrupted_stack(stacked, dataset, drift, tmp_path):
    out = tmp_path / "interrupted"
    outs = [out / t.name() for t in TRIALS]
    with pytest.raises(KeyboardInterrupt):
        train_stack(TRIALS, dataset, outs, "cpu", progress=False, log=quiet, checkpoint_seconds=0,
                    callback=stop_after(1))
    assert [load_checkpoint(o / runlog.LAST_CKPT)["epoch"] for o in outs] == [1, 1, 1]
    assert plan_stacks([*TRIALS, TRIALS[0]], [*outs, tmp_path / "fresh"], torch.device("cpu"), 3) == [[0, 1, 2], [3]]
    # one trial continues alone in train.py's loop, from the engine's checkpoint
    moved = Path(shutil.copytree(outs[1], tmp_path / "alone" / TRIALS[1].name()))
    train(TRIALS[1], dataset, moved, device="cpu", resume=True, progress=False, log=quiet, engine="single",
          keep="all")
    assert_same_trial(moved, stacked / TRIALS[1].name(), drift[TRIALS[1].name()])
    # the stack continues: exactly the uninterrupted runs
    logged = []
    train_stack(TRIALS, dataset, outs, "cpu", progress=False, log=logged.append)
    assert logged[0] == f"continuing {outs[0]} at epoch 2/2 from its last checkpoint"
    for t, o in zip(TRIALS, outs):
        assert without_timing(runlog.read_metrics(o)) == without_timing(runlog.read_metrics(stacked / t.name()))
        assert [s for s, _ in runlog.read_scalars(o)["val/accuracy"]] == [1, 2]
    free(tmp_path)  # 3 GB of checkpoints, needed no more


@pytest.mark.slow
def test_a_diverging_trial_leaves_its_stack_mates_alone(alone, dataset, drift, tmp_path):
    logged = []
    records = train_stack([DIVERGING, TRIALS[0]], dataset, [tmp_path / "d", tmp_path / "ok"], "cpu",
                          progress=False, log=logged.append)
    assert [r["status"] for r in records] == ["diverged", "done"]
    assert records[0]["reason"].startswith("train loss became") and records[0]["best_val_accuracy"] is None
    assert any(m.startswith("diverged: train loss became") for m in logged)
    assert not (tmp_path / "d" / runlog.LAST_CKPT).exists()
    assert_same_trial(tmp_path / "ok", alone / TRIALS[0].name(), drift[TRIALS[0].name()])
    # checkpoints written once, at the end: best.pt still says which epoch its weights are from
    assert load_checkpoint(tmp_path / "ok" / runlog.BEST_CKPT)["epoch"] == records[1]["best_epoch"]
    free(tmp_path)


@pytest.mark.slow
def test_a_trial_that_diverges_mid_stack_has_its_best_weights_on_disk(dataset, tmp_path):
    """No checkpoint is due (checkpoint_seconds is long), so the best epoch's weights are only on the
    device when the trial diverges: they are written then, and config.json names that epoch."""
    out = tmp_path / "late"
    records = train_stack([LATE_DIVERGING, BASE], dataset, [out, tmp_path / "mate"], "cpu", progress=False,
                          log=quiet, checkpoint_seconds=3600)
    assert records[0]["status"] == "diverged" and records[0]["reason"].endswith("at epoch 2")
    rec = runlog.read_config(out)
    assert rec == records[0] and rec["best_epoch"] == 1
    best = load_checkpoint(out / runlog.BEST_CKPT)
    assert best["epoch"] == 1 and best["best"]["val_accuracy"] == rec["best_val_accuracy"]
    # they are the epoch-1 weights: evaluated again by a plain AlexNet, they give the logged validation
    # accuracy (up to one image whose argmax the stack's other convolution rounding could flip)
    from alexnet_tiny.evaluate import evaluate
    val = evaluate(model_from_checkpoint(best), dataset.splits["val"], BASE.image_size, "cpu", dataset.num_classes)
    n = len(dataset.splits["val"])
    assert abs(val.accuracy - runlog.read_metrics(out)[0]["val_accuracy"]) * n <= 1 + 1e-9
    free(tmp_path)


# ----------------------------------------------------------------------------- planning

def test_plan_groups_by_data_stream_and_chunks(tmp_path):
    trials = [BASE.replace(lr=lr) for lr in (0.1, 0.2, 0.3)] + [BASE.replace(seed=1), BASE.replace(lr=0.4)]
    outs = [tmp_path / t.name() for t in trials]
    cpu = torch.device("cpu")
    assert plan_stacks(trials, outs, cpu, 10) == [[0, 1, 2, 4], [3]]
    assert plan_stacks(trials, outs, cpu, 10, max_stack=2) == [[0, 1], [2, 4], [3]]
    assert stream_key(BASE.replace(lr=9, momentum=0.1, nesterov=True, label_smoothing=0.2)) == stream_key(BASE)
    assert stream_key(BASE.replace(mixup=0.2)) != stream_key(BASE)
    assert stream_key(BASE.replace(init="kaiming")) != stream_key(BASE)  # a stack starts from one set of weights
    assert stream_key(BASE.replace(dropout=0.25)) != stream_key(BASE)  # one set of dropout masks per stack


@pytest.mark.parametrize("init", ["kaiming", "whiten"])
def test_a_stacked_trial_starts_from_the_weights_it_starts_from_alone(dataset, tmp_path, init):
    from alexnet_tiny.engine import Stack
    from alexnet_tiny.runfolder import RunFolder
    from alexnet_tiny.train import TrialState
    configs = [BASE.replace(init=init, lr=lr) for lr in (0.1, 0.2)]
    runs = [RunFolder(c, dataset, tmp_path / c.name(), "cpu", False) for c in configs]
    stack = Stack(runs, dataset, torch.device("cpu"))
    alone = TrialState(configs[1], dataset.num_classes, "cpu", dataset.splits["train"]).model.state_dict()
    assert all(torch.equal(stack.model.trial_state_dict(1)[n], alone[n]) for n in alone)
    if init == "whiten":  # conv1 is the whitening, not kaiming's
        kaiming = TrialState(configs[1].replace(init="kaiming"), dataset.num_classes, "cpu").model.state_dict()
        assert not torch.equal(alone["features.0.weight"], kaiming["features.0.weight"])
        assert torch.equal(alone["features.3.weight"], kaiming["features.3.weight"])
        return
    assert [kind for kind in stack.model.plan if kind[0] == "dropout"] == [("dropout", 0.5)] * 2
    lighter = Stack([RunFolder(c.replace(dropout=0.25), dataset, tmp_path / "d" / c.name(), "cpu", False)
                     for c in configs], dataset, torch.device("cpu"))
    assert [kind for kind in lighter.model.plan if kind[0] == "dropout"] == [("dropout", 0.25)] * 2
    assert TrialState(configs[0].replace(dropout=0.25), 3, "cpu").model.classifier[3].p == 0.25
    torch.manual_seed(configs[1].seed)
    assert not torch.equal(alone["features.0.weight"], AlexNet(dataset.num_classes).state_dict()["features.0.weight"])


def test_memory_estimate_and_capacity():
    """A trial costs its weights four times over (weights, gradients, momenta, best) plus activations that
    grow with the batch and image; a stack fits in the free memory with a workspace to spare, without
    leaving most of it unused."""
    params = count_parameters(AlexNet(10))
    small, large = trial_bytes(BASE, 10), trial_bytes(BASE.replace(image_size=224, batch_size=128), 10)
    assert 16 * params < small < large < 16 * params + (4 << 30)
    for gib in (4, 8, 24, 80, 141):
        free = gib << 30
        k = stack_capacity(BASE, 10, free)
        assert k * small + (1 << 30) <= free  # fits, with a GiB of workspace
        assert (k + 1) * small > 0.6 * free  # one more would take most of the memory
    assert stack_capacity(BASE, 10, 0) == 1  # one trial at a time when nothing seems free: the loop still runs


@pytest.mark.slow
def test_bf16_precision_in_both_loops(alone, dataset, tmp_path):
    """bf16 autocast trains the same trial as fp32 to bf16's precision, and is recorded; weights and
    momenta stay fp32."""
    config = BASE.replace(epochs=1)
    single = train(config, dataset, tmp_path / "single", device="cpu", progress=False, log=quiet, engine="single",
                   precision="bf16", keep="all")
    stacked = train_stack([config, config.replace(lr=0.01)], dataset, [tmp_path / "a", tmp_path / "b"], "cpu",
                          progress=False, log=quiet, precision="bf16")
    for rec, run in ((single, tmp_path / "single"), (stacked[0], tmp_path / "a")):
        assert rec["precision"] == "bf16" and rec["status"] == "done"
        fp32 = runlog.read_metrics(alone / BASE.name())[0]  # the same first epoch (its lr is the same)
        assert runlog.read_metrics(run)[0]["train_loss"] == pytest.approx(fp32["train_loss"], abs=0.01)
        last = load_checkpoint(run / runlog.LAST_CKPT)
        assert all(w.dtype == torch.float32 for w in last["model"].values())
        assert all(s["momentum_buffer"].dtype == torch.float32 for s in last["optimizer"]["state"].values())
    assert single["engine"] == "single" and stacked[0]["engine"] == "stacked (2 trials)"
    with pytest.raises(UserError, match="--precision fp16: expected one of fp32, bf16, auto"):
        train(config, dataset, tmp_path / "c", device="cpu", precision="fp16")
    assert not (tmp_path / "c").exists()
    free(tmp_path)


def test_precision_auto_is_bf16_only_where_the_hardware_runs_it(dataset, tmp_path):
    """--precision auto: bf16 on a CPU with AVX512-BF16 or AMX whose kernels are not restricted below
    AVX-512, fp32 elsewhere (this process, and a process restricted to AVX2); a run records what ran."""
    from alexnet_tiny.device import resolve_precision
    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    native = hardware and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert [resolve_precision(p, "cpu") for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    code = "from alexnet_tiny.device import resolve_precision; print(resolve_precision('auto', 'cpu'))"
    restricted = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"})
    assert restricted.stdout.strip() == "fp32", restricted.stderr
    rec = train(BASE.replace(epochs=1), dataset, tmp_path / "auto", device="cpu", progress=False, log=quiet,
                precision="auto")
    assert rec["precision"] == resolve_precision("auto", "cpu")
    assert load_checkpoint(tmp_path / "auto" / runlog.BEST_CKPT)["precision"] == rec["precision"]


@pytest.mark.ray
def test_ray_backend_refuses_bf16(small_data, tmp_path, capsys):
    from alexnet_tiny import cli
    assert cli.main(["grid", "--preset", "quick", "--backend", "ray", "--precision", "bf16", "--data",
                     str(small_data), "--out", str(tmp_path / "g")]) == 2
    assert "--precision bf16: the Ray backend trains in fp32 only" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_engine_choice():
    cpu = torch.device("cpu")
    assert resolve_engine("auto", cpu) == "single" and resolve_engine("stacked", cpu) == "stacked"
    assert resolve_engine("auto", torch.device("cuda")) == "stacked"
    noted = []
    assert resolve_engine("stacked", torch.device("meta"), noted.append) == "single" and noted
    with pytest.raises(UserError, match="--engine fast: expected one of auto, stacked, single"):
        resolve_engine("fast", cpu)


@pytest.mark.slow
def test_grid_cli_with_the_stacked_engine(small_data, tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('preset = "quick"\nlr = [0.004, 0.002]\nmomentum = [0.9, 0.5]\nepochs = 1\nbatch_size = 32\n')
    proc = run_cli("grid", "--config", grid, "--data", small_data, "--out", tmp_path / "g", "--device", "cpu",
                   "--engine", "stacked", "--max-stack", "3", "--no-report", "-q", check=True, env=NARROW_ENV)
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("grid: 4 trials (0 already finished), estimated ")  # measured on a stack of 3
    assert lines[1] == "stacked engine: 4 trials in 2 stack(s) of 3, 1"
    assert "stack of 3 trials: epochs 1-1 in " in proc.stderr and "peak memory" in proc.stderr
    assert proc.stdout.startswith(f"grid {tmp_path / 'g'}: 4 trials (4 done) in ")
    for name in (p.name for p in (tmp_path / "g").iterdir() if p.is_dir()):
        assert runlog.read_config(tmp_path / "g" / name)["status"] == "done"
    bad = run_cli("grid", "--config", grid, "--data", small_data, "--out", tmp_path / "h", "--engine", "fast")
    assert bad.returncode == 2 and "invalid choice: 'fast'" in bad.stderr
    free(tmp_path)
