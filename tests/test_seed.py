"""The `seed` preset is the original study as its code ran: the split by file number (test_data.py),
the 64 px image padded to 150 x 150, a 200-way head on 10 classes, plain SGD at a rate that never
moved, the 12-trial grid, and the published table beside ours in the report. Real data throughout:
the embedded archive, or the small generated dataset where a run is trained."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from alexnet_tiny import published, runlog
from alexnet_tiny.config import PRESETS, head_size
from alexnet_tiny.data import load_dataset, prepare
from alexnet_tiny.errors import UserError
from alexnet_tiny.evaluate import evaluate, evaluate_checkpoint, evaluation
from alexnet_tiny.grid import grid_trials
from alexnet_tiny.report import write_report
from alexnet_tiny.train import TrialState, train
from alexnet_tiny.transforms import MEAN, STD, Preprocessing, eval_batch, normalize
from alexnet_tiny.trial import epoch_batches, epoch_seed, lr_at
from conftest import FAST, quiet, run_cli, stop_after

GRIDS = Path(__file__).resolve().parents[1] / "grids"

SEED = PRESETS["seed"]


def test_the_preset_is_what_the_studys_code_ran():
    assert (SEED.lr, SEED.momentum, SEED.weight_decay, SEED.nesterov) == (0.001, 0.9, 0.0, False)
    assert (SEED.batch_size, SEED.epochs, SEED.image_size, SEED.input, SEED.outputs) == (12, 35, 150, "pad", 200)
    assert (SEED.schedule, SEED.step_size, SEED.init) == ("constant", 30, "torch")
    readme = PRESETS["readme"]  # the README's reading, kept under a name that does not claim the study
    assert (readme.image_size, readme.input, readme.schedule, readme.step_size, readme.outputs) == (224, "resize", "step", 7, 0)


# ----------------------------------------------------------------------------- the schedule

def studys_rates(gamma: float, losses_per_epoch: list[list[float]]) -> list[float]:
    """The rate of each epoch as the study's loop set it: StepLR(30, gamma) stepped with the loss."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=SEED.lr, momentum=SEED.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=gamma)
    rates = []
    for losses in losses_per_epoch:
        rates.append(optimizer.param_groups[0]["lr"])  # the rate this epoch's first step used
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # passing an epoch to step() is deprecated
            for loss in losses:
                scheduler.step(loss)
    return rates


@pytest.mark.parametrize("gamma", [0.1, 0.01])
def test_as_run_schedule_is_the_studys_steplr_stepped_with_the_loss(gamma):
    # three steps an epoch with losses falling from ln(200) to 0.2, as a trial's do
    losses = [[5.3 * 0.92 ** (3 * e + i) + 0.2 for i in range(3)] for e in range(35)]
    config = SEED.replace(gamma=gamma)
    ours = [lr_at(config, e) for e in range(35)]
    assert ours == studys_rates(gamma, losses) == [0.001] * 35  # the rate never moved: gamma had no effect


def test_step_schedule_is_the_studys_intent():
    config = SEED.replace(schedule="step", gamma=0.1)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    intended = []
    for _ in range(35):
        intended.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [lr_at(config, e) for e in range(35)] == pytest.approx(intended, rel=1e-12)
    assert intended[29] == 0.001 and intended[30] == pytest.approx(0.0001)


# ----------------------------------------------------------------------------- the input

@pytest.fixture(scope="module")
def embedded(embedded_data):
    return load_dataset(embedded_data, progress=False)


def test_padded_input_on_real_images(embedded):
    images = embedded.splits["val"].images[::25]  # 20 real images, two of each class
    x = eval_batch(images, Preprocessing.for_config(SEED))
    assert x.shape == (20, 3, 150, 150)
    border = torch.tensor([-m / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    centre = (slice(None), slice(None), slice(43, 107), slice(43, 107))  # (150 - 64) / 2 = 43 on each side
    outside = torch.ones(150, 150, dtype=torch.bool)
    outside[43:107, 43:107] = False
    assert torch.allclose(x[:, :, outside], border.view(1, 3, 1).expand(20, 3, int(outside.sum())), atol=1e-6)
    assert torch.allclose(x[centre], normalize(images), atol=1e-6)  # the image itself, not resized


def test_padded_training_input_only_flips(embedded):
    split = embedded.splits["train"]
    x, y, _ = next(epoch_batches(split, SEED, "cpu", epoch=1, progress=False))
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(epoch_seed(SEED.seed, 1)))
    canvas = eval_batch(split.images[order[:12]], Preprocessing.for_config(SEED))
    assert torch.equal(y, split.labels[order[:12]])
    same = [torch.allclose(a, c, atol=1e-6) for a, c in zip(x, canvas)]
    mirrored = [torch.allclose(a, c.flip(2), atol=1e-6) for a, c in zip(x, canvas)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)


# ----------------------------------------------------------------------------- the head

def test_initial_loss_is_that_of_200_outputs(embedded):
    state = TrialState(SEED, embedded.num_classes, "cpu")
    assert state.model.classifier[6].out_features == 200 == head_size(SEED, 10)
    ev = evaluate(state.model, embedded.splits["val"], Preprocessing.for_config(SEED), "cpu", 10)
    assert abs(ev.loss - math.log(200)) < 0.05  # a 10-way head would start at ln(10) = 2.30


def test_predictions_are_the_argmax_over_every_output():
    logits = torch.zeros(4, 200)
    logits[0, 0] = logits[1, 1] = 5  # right
    logits[2, 150] = 5  # an output that is no class: wrong
    logits[3, 2] = 5  # wrong class
    ev = evaluation(logits, torch.tensor([0, 1, 1, 1]), num_classes=3)
    assert ev.accuracy == 0.5
    assert ev.confusion.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]] and ev.other.tolist() == [0, 1, 0]
    assert ev.per_class_accuracy == [1.0, 1 / 3, 0.0] and ev.totals.tolist() == [1, 3, 0]


def test_fewer_outputs_than_classes_are_refused():
    with pytest.raises(UserError, match="outputs = 5: fewer than the dataset's 10 classes"):
        head_size(SEED.replace(outputs=5), 10)
    assert head_size(PRESETS["quick"], 10) == 10


# ----------------------------------------------------------------------------- the grid

def test_the_grid_is_six_configurations_trained_twice():
    name, trials = grid_trials("seed")
    assert name == "seed" and len(trials) == 12 and trials == grid_trials(config=GRIDS / "seed.toml")[1]
    assert {(t.lr, t.momentum) for t in trials} == {(lr, m) for lr in (0.0001, 0.001, 0.005) for m in (0.9, 0.5)}
    assert {(t.gamma, t.seed) for t in trials} == {(0.1, 0), (0.01, 1)}  # the inert gamma, with its own start
    assert all(t.replace(lr=SEED.lr, momentum=SEED.momentum, gamma=SEED.gamma, seed=0) == SEED for t in trials)


# ----------------------------------------------------------------------------- the published table

def test_published_table_ships_with_its_source():
    table = published.load_published()
    assert "ellaelu/alexnet-implementation" in table["source"] and len(table["rows"]) == 12
    best = max(table["rows"], key=lambda r: r["test"])
    assert (best["lr"], best["momentum"], best["gamma"], best["test"], best["val"]) == (0.001, 0.9, 0.1, 0.546, 0.538)


def test_comparison_says_what_500_images_allow():
    config = SEED.to_dict()
    ours = [{"trial": "a", "config": config, "epochs_done": 35, "final": {"train": 0.8, "val": 0.5, "test": 0.5},
             "best": {"epoch": 30, "val": 0.55, "test": 0.52}},
            {"trial": "b", "config": {**config, "lr": 0.0001}, "epochs_done": 35,
             "final": {"train": 0.2, "val": 0.2, "test": 0.3}, "best": {"epoch": 35, "val": 0.2, "test": 0.3}}]
    comparison = published.compare(ours)
    rows = {(r["lr"], r["momentum"], r["gamma"]): r for r in comparison["rows"]}
    top = rows[(0.001, 0.9, 0.1)]["difference"]["test"]
    assert top["ours_minus_published"] == pytest.approx(0.5 - 0.546)
    assert top["standard_error"] == pytest.approx(math.sqrt(0.25 / 500 + 0.546 * 0.454 / 500))
    assert top["within_two_se"]  # -4.6 points, 2 SE = 6.3
    low = rows[(0.0001, 0.9, 0.1)]["difference"]["test"]
    assert not low["within_two_se"]  # 30.0 against 16.6: 13.4 points, 2 SE = 5.3
    assert rows[(0.005, 0.5, 0.1)]["trial"] is None
    pair = next(p for p in comparison["pairs"] if (p["lr"], p["momentum"]) == (0.001, 0.9))
    assert pair["published_gap"] == pytest.approx(0.012) and pair["our_test"] == [0.5]
    assert published.is_seed_trial(config) and not published.is_seed_trial(PRESETS["readme"].to_dict())


@pytest.mark.usefixtures("narrow_alexnet")
def test_report_sets_the_published_table_beside_ours(small_data, tmp_path):
    grid = tmp_path / "seed"
    config = SEED.replace(momentum=0.5)  # published 0.001 / 0.5 / 0.1: 27.6% test
    record = train(config, small_data, grid / config.name(), device="cpu", progress=False, log=quiet, until=2)
    assert record["epochs_done"] == 2
    out = write_report(grid, progress=False, log=quiet, samples=3)
    comparison = json.loads((out / "report.json").read_text())["published"]
    row = next(r for r in comparison["rows"] if r["trial"] == config.name())
    assert (row["lr"], row["momentum"], row["gamma"], row["epochs_done"]) == (0.001, 0.5, 0.1, 2)
    assert row["published"] == {"train": 0.31725, "val": 0.314, "test": 0.276}
    metrics = [r for r in runlog.read_metrics(grid / config.name()) if "val_accuracy" in r]
    assert row["final"]["val"] == pytest.approx(metrics[-1]["val_accuracy"])
    assert row["final"]["test"] == pytest.approx(metrics[-1]["test_accuracy"])
    assert 0 <= row["final"]["train"] <= 1
    assert row["difference"]["test"]["ours_minus_published"] == pytest.approx(metrics[-1]["test_accuracy"] - 0.276)
    assert sum(r["trial"] is not None for r in comparison["rows"]) == 1
    page = (out / "index.html").read_text()
    assert 'id="published"' in page and "Gamma had no effect" in page and "by test accuracy" in page
    assert "| 0.001 | 0.5 | 0.1 | 31.7 / 31.4 / 27.6 |" in (out / "published.md").read_text()


# ----------------------------------------------------------------------------- the split is part of a run

@pytest.mark.usefixtures("narrow_alexnet")
def test_resume_and_evaluation_refuse_another_split(small_data, tiny_source, tmp_path):
    out = tmp_path / "run"
    config = FAST.replace(epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train(config, small_data, out, device="cpu", progress=False, log=quiet, callback=stop_after(1))
    hashed = prepare(tmp_path / "hashed", source=tiny_source, classes=3, split="hash", progress=False)
    with pytest.raises(UserError, match="split hash, seed 0, where the run used split number"):
        train(config, hashed, out, device="cpu", resume=True, progress=False, log=quiet)
    assert runlog.epochs_done(out) == 1  # nothing trained on the other split
    with pytest.raises(UserError, match="split hash, seed 0, where the run used split number"):
        evaluate_checkpoint(out / runlog.BEST_CKPT, data=hashed, device="cpu", progress=False)
    assert evaluate_checkpoint(out / runlog.BEST_CKPT, data=small_data, device="cpu", progress=False)["images"] == 60
    proc = run_cli("evaluate", out / runlog.BEST_CKPT, "--data", hashed, "--device", "cpu", "-q")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "split" in proc.stderr


def test_prepare_seed_needs_the_hashed_split(tmp_path):
    proc = run_cli("prepare", "--out", tmp_path / "d", "--seed", "3", "-q")
    assert proc.returncode == 2 and "--seed 3: only --split hash takes a seed" in proc.stderr
    assert not (tmp_path / "d").exists()
