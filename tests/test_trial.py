"""trial.py, what a trial is: the SGD update against torch.optim.SGD on the installed torch, the momenta
in torch.optim.SGD's state_dict layout, the learning rate of each epoch, the epochs a call runs within a
budget, one training step of a plain model and of a stack, the whitened start (init whiten)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torch.nn.functional as F

from alexnet_tiny.config import PRESETS
from alexnet_tiny.data import Split, load_dataset
from alexnet_tiny.start import WHITENING_IMAGES, starting_model
from alexnet_tiny.transforms import Preprocessing, eval_batch
from alexnet_tiny.trial import (Budget, TrialLosses, epochs_to_run, lr_at, momenta_from_state,
                                optimizer_state, sgd_step, train_step)

from conftest import FAST


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


@pytest.mark.parametrize("momentum, nesterov, weight_decay", [(0.9, False, 0.0), (0.9, True, 5e-4), (0.5, False, 1e-2)])
def test_the_sgd_step_is_torch_optim_sgds(momentum, nesterov, weight_decay):
    """Three steps of sgd_step against torch.optim.SGD(fused=True) with the same two parameter groups
    (decay on weights, none on biases): the same weights and momenta, bit for bit."""
    config = FAST.replace(momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    ours, theirs = small_model(), small_model()
    names = [n for n, _ in ours.named_parameters()]
    weights = [p for n, p in theirs.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in theirs.named_parameters() if not n.endswith("weight")]
    sgd = torch.optim.SGD([{"params": weights, "weight_decay": weight_decay}, {"params": biases, "weight_decay": 0.0}],
                          lr=0.05, momentum=momentum, nesterov=nesterov, fused=True)
    momenta = [torch.zeros_like(p) for p in ours.parameters()]
    x, y = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 5
    for _ in range(3):
        for model in (ours, theirs):
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
        params = list(ours.parameters())
        sgd_step(names, params, [p.grad for p in params], momenta, config, 0.05)
        sgd.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    saved = optimizer_state(names, momenta, config, 0.05)
    for got, want in zip(momenta_from_state(saved, names), momenta_from_state(sgd.state_dict(), names)):
        assert torch.equal(got, want)
    sgd.load_state_dict(saved)  # the checkpoint's momenta load into torch.optim.SGD as they are


def test_the_rate_of_each_epoch():
    step = FAST.replace(lr=0.1, schedule="step", step_size=2, gamma=0.5)
    assert [lr_at(step, e) for e in range(5)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert [lr_at(step.replace(schedule="constant"), e) for e in range(5)] == [0.1] * 5
    cosine = FAST.replace(lr=0.1, schedule="cosine", epochs=6, warmup_epochs=2)
    rates = [lr_at(cosine, e) for e in range(6)]
    assert rates[:2] == pytest.approx([0.1 / 3, 0.2 / 3]) and rates[2] == pytest.approx(0.1)
    assert rates[2:] == sorted(rates[2:], reverse=True) and rates[-1] == pytest.approx(0.1 * (1 + math.cos(0.75 * math.pi)) / 2)


def test_the_epochs_a_call_runs():
    config = FAST.replace(epochs=5)
    assert list(epochs_to_run(2, config, None, Budget(None))) == [2, 3, 4, 5]
    assert list(epochs_to_run(1, config, 3, Budget(None))) == [1, 2, 3]  # a rung ends the call there
    budget = Budget(3600)
    ran = []
    for epoch in epochs_to_run(1, config, None, budget):
        ran.append(epoch)
        budget.spent(7200 if epoch == 2 else 1)  # epoch 2 says an epoch takes two hours
    assert ran == [1, 2] and budget.reached


def test_one_step_of_a_plain_model_and_of_a_stack_of_two():
    """train_step: a plain model's logits count as a stack of one; a stack's loss is each trial's own
    (its own label smoothing), and each trial is updated from its own loss alone."""
    class Plain:
        def __init__(self, model):
            self.model = model
            self.sgd = torch.optim.SGD(model.parameters(), lr=0.1)

        def zero_grad(self):
            self.sgd.zero_grad()

        def step(self):
            self.sgd.step()

    x, y = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2)), torch.arange(8) % 5
    a, b = small_model(), small_model()
    out, losses = train_step(a, Plain(a), TrialLosses([0.0]), x, y, 1.0)
    expected = nn.functional.cross_entropy(b(x), y)
    assert out.shape == (8, 5) and losses.shape == (1,) and torch.allclose(losses[0], expected)
    expected.backward()
    with torch.no_grad():
        for p in b.parameters():
            p -= 0.1 * p.grad
    assert all(torch.allclose(p, q) for p, q in zip(a.parameters(), b.parameters()))

    stacked = torch.stack([small_model(0)(x), small_model(1)(x)])
    losses = TrialLosses([0.0, 0.1])(stacked, y)
    assert torch.allclose(losses[0], nn.functional.cross_entropy(stacked[0], y))
    assert torch.allclose(losses[1], nn.functional.cross_entropy(stacked[1], y, label_smoothing=0.1))


def conv1_covariance(conv: nn.Conv2d, images: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and covariance of conv1's responses (before its ReLU) at every position of `images`."""
    x = eval_batch(images, Preprocessing.for_config(config))
    with torch.no_grad():
        r = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
    r = r.permute(0, 2, 3, 1).reshape(-1, conv.out_channels).double()
    return r.mean(0), torch.cov(r.T)


@pytest.mark.parametrize("image_size", [64, 96])
def test_init_whiten_whitens_the_patches_conv1_sees(embedded_data, image_size):
    """init whiten: on the training patches it was computed from, conv1's responses have zero mean and
    a covariance near the identity (each variance shrunk a little by eps); on validation images, which
    it never read, they stay close; kaiming's conv1 is nowhere near; only the training split is read."""
    dataset = load_dataset(embedded_data, progress=False)
    train, val = dataset.splits["train"], dataset.splits["val"]
    config = PRESETS["quick"].replace(init="whiten", image_size=image_size)
    conv = starting_model(config, 10, train).features[0]
    mean, cov = conv1_covariance(conv, train.images[::len(train) // WHITENING_IMAGES], config)
    off_diagonal = cov - torch.diag(cov.diag())
    assert mean.abs().max() < 1e-3
    assert off_diagonal.abs().max() < 1e-3
    assert 0.85 < cov.diag().min() and cov.diag().max() < 1.0 + 1e-3
    _, held_out = conv1_covariance(conv, val.images, config)
    assert 0.5 < held_out.diag().min() and held_out.diag().max() < 1.6
    assert (held_out - torch.diag(held_out.diag())).abs().max() < 0.3
    kaiming = starting_model(config.replace(init="kaiming"), 10, train).features[0]
    _, k_cov = conv1_covariance(kaiming, train.images[::len(train) // WHITENING_IMAGES], config)
    assert (k_cov - torch.eye(64, dtype=k_cov.dtype)).abs().max() > 1.0
    other = Split(val.images, val.labels, val.files)  # other "training" images: another whitening
    assert not torch.equal(starting_model(config, 10, other).features[0].weight, conv.weight)
    with pytest.raises(ValueError, match="training images"):
        starting_model(config, 10, None)
