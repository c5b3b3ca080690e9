"""The CPU fast path of train.py and allocator.py: fresh gradients reuse freed memory instead of
page-faulting, the glibc settings come back on exit, the retained heap changes no bit of what an
epoch computes, an epoch is reproducible bit for bit, the model leaves it in the usual layout, and
the fused SGD update equals PyTorch's default one up to rounding."""
from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
import torch

from alexnet_tiny import allocator
from alexnet_tiny.allocator import retained_heap
from alexnet_tiny.data import Split, load_dataset
from alexnet_tiny.model import AlexNet
from alexnet_tiny.train import make_optimizer, train_one_epoch
from conftest import FAST

glibc_only = pytest.mark.skipif(allocator._LIBC is None, reason="mallopt needs glibc (Linux)")

CONFIG = FAST.replace(batch_size=16, weight_decay=5e-4, nesterov=True)  # 12 steps an epoch on small_data
FC_GRADIENT_PAGES = 4096 * 256 * 6 * 6 * 4 // 4096  # the 151 MB gradient of the first FC layer, in 4 KiB pages


@pytest.fixture(scope="module")
def train_split(small_data):
    return load_dataset(small_data, progress=False).splits["train"]


def two_epochs(split, epoch_fn=train_one_epoch, optimizer_fn=make_optimizer) -> dict:
    """Metrics, final weights and page faults of each epoch of a fresh model."""
    torch.manual_seed(0)
    model = AlexNet(3)
    optimizer = optimizer_fn(model, CONFIG)
    metrics, faults = [], []
    for epoch in (1, 2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        m = epoch_fn(model, optimizer, split, CONFIG, "cpu", epoch, progress=False)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        metrics.append({k: m[k] for k in ("loss", "accuracy")})
    return {"metrics": metrics, "weights": model.state_dict(), "faults": faults}


@pytest.fixture(scope="module")
def retained_then_plain(train_split):
    """The same two epochs with the retained heap (train_one_epoch) and then, in the same process,
    without it (the undecorated function)."""
    return two_epochs(train_split), two_epochs(train_split, epoch_fn=train_one_epoch.__wrapped__)


@pytest.mark.slow
@glibc_only
def test_fresh_gradients_stop_page_faulting(retained_then_plain, train_split):
    steps = len(train_split) // CONFIG.batch_size
    # mapped afresh, the FC gradients alone would fault steps x FC_GRADIENT_PAGES times an epoch;
    # the second epoch reuses what the first one freed
    assert retained_then_plain[0]["faults"][1] < steps * FC_GRADIENT_PAGES / 50


def rss_kept_after_a_freed_block(nbytes: int) -> int:
    """Resident bytes still held after a block of `nbytes` was touched and freed. Free heap memory
    left by earlier tests (which may exceed nbytes) goes back to the kernel first, so that the block's
    pages are new ones whatever ran before."""
    allocator._LIBC.malloc_trim(0)
    before = resident_bytes()
    torch.empty(nbytes // 4).fill_(1.0)
    return resident_bytes() - before


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@glibc_only
def test_freed_memory_is_kept_inside_and_returned_after():
    """Sizes above anything freed before, so no free block can serve them."""
    with retained_heap():
        with retained_heap():  # re-entrant: leaving the inner one keeps the settings
            pass
        kept_inside = rss_kept_after_a_freed_block(512 << 20)
    kept_after = rss_kept_after_a_freed_block(1024 << 20)  # mmap and munmap again
    assert kept_inside > 256 << 20
    assert kept_after < 64 << 20


@pytest.mark.slow
def test_the_retained_heap_changes_no_bit_of_an_epoch(retained_then_plain):
    retained, plain = retained_then_plain
    assert retained["metrics"] == plain["metrics"]
    assert all(torch.equal(retained["weights"][k], plain["weights"][k]) for k in plain["weights"])


@pytest.mark.slow
def test_the_same_epoch_twice_is_bitwise_identical(retained_then_plain, train_split):
    again = two_epochs(train_split)
    assert again["metrics"] == retained_then_plain[0]["metrics"]
    assert all(torch.equal(again["weights"][k], v) for k, v in retained_then_plain[0]["weights"].items())


@pytest.mark.slow
def test_the_model_leaves_an_epoch_in_the_usual_layout(train_split):
    torch.manual_seed(0)
    model = AlexNet(3)
    one_batch = Split(train_split.images[:16], train_split.labels[:16], train_split.files[:16])
    train_one_epoch(model, make_optimizer(model, CONFIG), one_batch, CONFIG, "cpu", 1, progress=False)
    assert all(p.is_contiguous() for p in model.parameters())  # as evaluation and checkpoints expect


@pytest.mark.slow
def test_fused_sgd_equals_pytorchs_default_sgd_up_to_rounding(train_split):
    def default_sgd(model, config):
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
                  for g in make_optimizer(model, config).param_groups]
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)

    def one_epoch(optimizer_fn):
        torch.manual_seed(0)
        model = AlexNet(3)
        optimizer = optimizer_fn(model, CONFIG)
        train_one_epoch(model, optimizer, train_split, CONFIG, "cpu", 1, progress=False)
        return optimizer, model.state_dict()

    fused, fused_weights = one_epoch(make_optimizer)
    assert all(g["fused"] for g in fused.param_groups)
    plain, plain_weights = one_epoch(default_sgd)
    assert not any(g["fused"] for g in plain.param_groups)
    torch.manual_seed(0)
    initial = AlexNet(3).state_dict()
    for k, w in plain_weights.items():
        assert not torch.equal(w, initial[k])  # the epoch moved every tensor ...
        torch.testing.assert_close(fused_weights[k], w, rtol=1e-5, atol=1e-7)  # ... the same way


def test_retained_heap_nests_and_decorates():
    @retained_heap()
    def twice(x):
        with retained_heap():
            assert allocator._depth == (2 if allocator._LIBC is not None else 0)
        return 2 * x

    assert twice(21) == 42
    assert allocator._depth == 0
