"""checkpoint.load_checkpoint on real files that are not checkpoints: random bytes, a checkpoint cut
short, and pickles of foreign objects. Each is refused with a reason in our own words; none passes on
torch's advice to load with weights_only=False, and none is unpickled."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from PIL import Image

from alexnet_tiny.checkpoint import alexnet_shapes, load_checkpoint, model_from_checkpoint
from alexnet_tiny.errors import UserError
from conftest import run_cli

MMAP = pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])  # ids: no "False" in tmp_path
MMAP_FLAGS = st.booleans()


class Gadget:
    """A foreign object: unpickling it runs __setstate__, which leaves a marker file behind."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __setstate__(self, state):
        Path(state["marker"]).touch()
        self.__dict__.update(state)


def small_checkpoint() -> dict:
    """The fields load_checkpoint checks, with a small tensor for the weights."""
    return {"model": {"classifier.6.bias": torch.arange(3.0)}, "epoch": 1,
            "classes": {"wnids": ["n01", "n02", "n03"], "names": ["a", "b", "c"]},
            "preprocessing": {"image_size": 64}}


def refusal(path: Path, mmap: bool) -> str:
    """load_checkpoint's one-line message, less the path, with no trace of torch's unsafe advice."""
    with pytest.raises(UserError) as info:
        load_checkpoint(path, mmap=mmap)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    reason = message.removeprefix(f"{path}: ")
    assert "weights_only" not in reason and "False" not in reason and "Re-running" not in reason
    return reason


@MMAP
def test_random_bytes_are_not_a_checkpoint(tmp_path, mmap):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(5000))
    assert refusal(junk, mmap) == "not a PyTorch checkpoint (torch.save writes a zip archive; this file is not one)"


@MMAP
def test_a_checkpoint_cut_short_is_truncated(tmp_path, mmap):
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    torch.save(small_checkpoint(), whole)
    assert load_checkpoint(whole, mmap=mmap)["classes"]["names"] == ["a", "b", "c"]  # whole, it loads
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert refusal(cut, mmap).startswith("truncated or damaged (a zip archive")


@MMAP
def test_a_foreign_object_is_refused_and_never_unpickled(tmp_path, mmap):
    marker, path = tmp_path / "unpickled", tmp_path / "gadget.pt"
    torch.save({**small_checkpoint(), "preprocessing": Gadget(marker)}, path)
    assert refusal(path, mmap) == (f"holds a pickled {__name__}.Gadget, not only tensors and plain containers: "
                                   "refused, never unpickled")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what torch's advice would do: the marker shows the code ran
    assert marker.exists()


def test_a_whole_saved_module_is_refused(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 3), path)  # the model object instead of its state_dict
    assert refusal(path, False).startswith("holds a pickled torch.nn.modules.linear.Linear, not only tensors")


def test_predict_with_random_bytes_is_one_line_error(tmp_path):
    junk, photo = tmp_path / "junk.pt", tmp_path / "photo.png"
    junk.write_bytes(os.urandom(5000))
    Image.new("RGB", (80, 60), (200, 40, 40)).save(photo)
    proc = run_cli("predict", junk, photo, "--device", "cpu")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"alexnet-tiny predict: error: {junk}: not a PyTorch checkpoint "
                                        "(torch.save writes a zip archive; this file is not one)"]


@pytest.mark.parametrize("change, reason", [
    ({"model": {"w": 3}}, "its model entry is not a state_dict of named tensors"),
    ({"model": {}}, "its model entry is not a state_dict of named tensors"),
    ({"classes": {"wnids": "n01", "names": ["a"]}}, "its classes entry is not lists of wnids and names"),
    ({"classes": {"wnids": ["n01", "n02"], "names": ["a"]}},
     "its classes entry has no classes, or wnids and names of other lengths"),
    ({"preprocessing": [64]}, "its preprocessing entry is a list, expected a dict"),
    ({"epoch": "one"}, "its epoch entry is a str, expected a int"),
    ({"model": {"classifier.1.weight": torch.empty(10 ** 9, 0)}},  # built as it says: 36 TB
     "classifier.1.weight has shape (1000000000, 0), expected (hidden, 9216) with hidden 1 to 16384"),
    ({"model": {"classifier.1.weight": torch.empty(8, 9216), "classifier.6.weight": torch.empty(10 ** 6, 8)}},
     "classifier.6.weight has shape (1000000, 8), expected (outputs 1 to 100000, 8)"),
    ({"model": {"classifier.6.bias": torch.tensor([0.0, float("nan"), 1.0])}},
     "classifier.6.bias holds non-finite weights (NaN or infinity): a diverged or damaged run")])
def test_right_keys_with_wrong_contents_are_refused(change, reason, tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({**small_checkpoint(), **change}, path)
    assert refusal(path, mmap=False) == f"not an alexnet-tiny checkpoint ({reason})"
    proc = run_cli("evaluate", path, "--device", "cpu")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and reason in proc.stderr


@pytest.mark.parametrize("preprocessing", [
    {"image_size": 10 ** 6, "resize": 10 ** 6, "mean": [0.5] * 3, "std": [0.2] * 3},
    {"image_size": 60000, "resize": 64, "mean": [0.5] * 3, "std": [0.2] * 3, "input": "pad"}])
def test_a_preprocessing_that_asks_for_huge_images_is_refused(preprocessing, tmp_path):
    from alexnet_tiny.evaluate import checkpoint_preprocessing
    with pytest.raises(UserError, match=r"expected at most 1024 \(this tool trains at most 512\)"):
        checkpoint_preprocessing({"preprocessing": preprocessing}, tmp_path / "foreign.pt")


SHAPES = alexnet_shapes(8, 3)  # AlexNet with an 8-wide classifier and 3 outputs
DIMS = st.sampled_from([0, 1, 2, 3, 8, 11, 64, 256, 9216, 10 ** 6, 10 ** 9, 2 ** 40])


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(sorted(SHAPES) + ["features.1.weight"]), st.lists(DIMS, max_size=4), MMAP_FLAGS)
def test_a_checkpoint_with_one_shape_changed_is_refused_before_anything_is_built(tmp_path_factory, key, shape, mmap):
    """Every weight is an expanded tensor (one stored number, any shape: a foreign file's terabytes
    cost it nothing): with one parameter's shape changed, or a parameter AlexNet has not, the
    checkpoint is refused in one line naming a parameter, before anything of that size is built or
    read; with none changed, it loads."""
    assume(math.prod(d or 1 for d in shape) < 2 ** 62 and tuple(shape) != SHAPES.get(key))
    path = tmp_path_factory.mktemp("shapes") / "foreign.pt"
    model = {name: torch.zeros(()).expand(size) for name, size in SHAPES.items()}
    torch.save({**small_checkpoint(), "model": model}, path)
    assert tuple(model_from_checkpoint(load_checkpoint(path, mmap=mmap)).classifier[6].weight.shape) == (3, 8)
    model[key] = torch.zeros(()).expand(shape)
    torch.save({**small_checkpoint(), "model": model}, path)
    with pytest.raises(UserError) as info:
        model_from_checkpoint(load_checkpoint(path, mmap=mmap))
    assert "\n" not in str(info.value) and ("classifier." in str(info.value) or key in str(info.value))
