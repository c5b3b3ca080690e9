"""The CPU fast path of train.py and allocator.py: fresh gradients reuse freed memory instead of
page-faulting, the glibc settings come back on exit, the retained heap changes no bit of what an
epoch computes, an epoch is reproducible bit for bit, the model leaves it in the usual layout, and
the fused SGD update (trial.sgd_step) equals PyTorch's default torch.optim.SGD up to rounding."""
from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
import torch

from alexnet_tiny import allocator
from alexnet_tiny.allocator import retained_heap
from alexnet_tiny.data import Split, load_dataset
from alexnet_tiny.train import TrialState, train_one_epoch
from alexnet_tiny.trial import sgd_groups
from conftest import FAST

glibc_only = pytest.mark.skipif(allocator._LIBC is None, reason="mallopt needs glibc (Linux)")

CONFIG = FAST.replace(batch_size=16, weight_decay=5e-4, nesterov=True)  # 12 steps an epoch on small_data
FC_GRADIENT_PAGES = 4096 * 256 * 6 * 6 * 4 // 4096  # the 151 MB gradient of the first FC layer, in 4 KiB pages


@pytest.fixture(scope="module")
def train_split(small_data):
    return load_dataset(small_data, progress=False).splits["train"]


def two_epochs(split, epoch_fn=train_one_epoch) -> dict:
    """Metrics, final weights and page faults of each epoch of a fresh model."""
    state = TrialState(CONFIG, 3, "cpu")
    metrics, faults = [], []
    for epoch in (1, 2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        m = epoch_fn(state, split, "cpu", epoch, progress=False)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        metrics.append({k: m[k] for k in ("loss", "accuracy")})
    return {"metrics": metrics, "weights": state.model.state_dict(), "faults": faults}


@pytest.fixture(scope="module")
def retained_then_plain(train_split):
    """The same two epochs with the retained heap (train_one_epoch) and then, in the same process,
    without it (the undecorated function)."""
    return two_epochs(train_split), two_epochs(train_split, epoch_fn=train_one_epoch.__wrapped__)


@pytest.mark.slow
@glibc_only
def test_fresh_gradients_stop_page_faulting(retained_then_plain, train_split):
    steps = len(train_split) // CONFIG.batch_size
    # mapped afresh, the FC gradients alone would fault steps x FC_GRADIENT_PAGES times an epoch
    # (442,368 here); the second epoch reuses what the first one freed. What else faults depends on
    # the heap earlier tests in this process left (16,439 once on a fresh CI venv, where the bound was
    # a fiftieth, 8,847): the bound is a tenth.
    assert retained_then_plain[0]["faults"][1] < steps * FC_GRADIENT_PAGES / 10


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
    state = TrialState(CONFIG, 3, "cpu")
    one_batch = Split(train_split.images[:16], train_split.labels[:16], train_split.files[:16])
    train_one_epoch(state, one_batch, "cpu", 1, progress=False)
    assert all(p.is_contiguous() for p in state.model.parameters())  # as evaluation and checkpoints expect
    train_one_epoch(state, one_batch, "cpu", 2, progress=False)  # the momenta follow the weights' layout again
    assert all(p.is_contiguous() for p in state.model.parameters())


class DefaultSGD(TrialState):
    """The same trial stepped by torch.optim.SGD with PyTorch's default (unfused, for-loop) update."""

    def __init__(self, config, num_classes, device):
        super().__init__(config, num_classes, device)
        params = list(self.model.parameters())
        groups = [{"params": [params[i] for i in group], "weight_decay": decay}
                  for group, decay in zip(sgd_groups(self.names), (config.weight_decay, 0.0))]
        self.sgd = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                                   foreach=False)

    def layout(self, memory_format):
        self.model.to(memory_format=memory_format)

    def step(self, lr: float | None = None) -> None:
        for g in self.sgd.param_groups:
            g["lr"] = self.lr if lr is None else lr
        self.sgd.step()


@pytest.mark.slow
def test_fused_sgd_equals_pytorchs_default_sgd_up_to_rounding(train_split):
    def one_epoch(state_class):
        state = state_class(CONFIG, 3, "cpu")
        initial = {k: v.clone() for k, v in state.model.state_dict().items()}
        train_one_epoch(state, train_split, "cpu", 1, progress=False)
        return initial, state.model.state_dict()

    initial, fused = one_epoch(TrialState)
    initial_plain, plain = one_epoch(DefaultSGD)
    for k, w in plain.items():
        assert torch.equal(initial[k], initial_plain[k])
        update, plain_update = fused[k] - initial[k], w - initial[k]
        assert plain_update.norm() > 0  # the epoch moved every tensor ...
        assert (update - plain_update).norm() <= 1e-3 * plain_update.norm(), k  # ... the same way


@glibc_only
def test_retained_heap_nests_and_decorates():
    """As a decorator, with a nested use that ends first: memory is still kept until the outer use ends."""
    @retained_heap()
    def kept_after_a_nested_use_ended() -> int:
        with retained_heap():
            pass
        return rss_kept_after_a_freed_block(512 << 20)

    assert kept_after_a_nested_use_ended() > 256 << 20
    assert rss_kept_after_a_freed_block(1024 << 20) < 64 << 20
