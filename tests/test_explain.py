"""explain: conv1 kernels, initial weights, FC2 features and nearest neighbours, Grad-CAM (on a model
and images built so that the answer is known), and `predict --cam`."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from alexnet_tiny import explain, figures
from alexnet_tiny.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet_tiny.data import load_dataset
from alexnet_tiny.train import TrialState, train

from conftest import FAST, run_cli

pytestmark = pytest.mark.usefixtures("narrow_alexnet")


@pytest.fixture(scope="module")
def checkpoint(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "run"
    train(FAST.replace(epochs=1, init="kaiming", lr=0.004), data=small_data, out=out, device="cpu", progress=False,
          log=lambda m: None)
    return out / "best.pt"


def test_a_training_image_is_its_own_nearest_neighbour(checkpoint, small_data):
    ckpt = load_checkpoint(checkpoint)
    model, size = model_from_checkpoint(ckpt), ckpt["preprocessing"]["image_size"]
    train_split = load_dataset(small_data, progress=False).splits["train"]
    features = explain.fc2_features(model, train_split.images, size, "cpu")
    assert features.shape == (len(train_split), model.classifier[4].out_features)
    assert features.min() >= 0 and (features > 0).any()  # after FC2's ReLU, and alive
    queries = torch.arange(0, len(train_split), 17)
    distances, indices = explain.nearest(features[queries], features, 3)
    assert torch.equal(indices[:, 0], queries)
    assert distances[:, 0].abs().max() < 1e-3 and (distances[:, 1] > distances[:, 0]).all()
    assert (distances.diff(dim=1) >= 0).all()  # nearest first
    # a batch of features at a time with a running top-k (bounded memory): the same answer
    batched = explain.nearest_images(model, features[queries], train_split.images, size, "cpu", 3, batch_size=16)
    assert torch.equal(batched[1], indices) and torch.allclose(batched[0], distances, atol=1e-4)

    # the same features through a hook on FC2's ReLU in an ordinary forward pass
    captured = []
    handle = model.classifier[5].register_forward_hook(lambda m, i, o: captured.append(o.clone()))
    from alexnet_tiny.evaluate import predict_logits
    predict_logits(model, train_split.images[:10], size, "cpu")
    handle.remove()
    assert torch.allclose(captured[0], features[:10], atol=1e-5)


def test_initial_weights_are_the_runs_own(checkpoint, small_data):
    ckpt = load_checkpoint(checkpoint)
    config = FAST.replace(epochs=1, init="kaiming", lr=0.004)
    started = TrialState(config, 3, "cpu").model
    redone = explain.initial_model(ckpt)
    for (name, a), b in zip(started.state_dict().items(), redone.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(redone.features[0].weight, ckpt["model"]["features.0.weight"])  # training moved them
    # init whiten: conv1 came from the training images, which the report hands over (it has the dataset)
    train_split = load_dataset(small_data, progress=False).splits["train"]
    whitened = {**ckpt, "config": {**ckpt["config"], "init": "whiten"}}
    started = TrialState(config.replace(init="whiten"), 3, "cpu", train_split).model
    assert torch.equal(explain.initial_model(whitened, train_split).features[0].weight, started.features[0].weight)
    assert not torch.equal(started.features[0].weight, redone.features[0].weight)
    with pytest.raises(ValueError, match="training images"):
        explain.initial_model(whitened)


def test_kernels_figure_follows_the_weights(checkpoint, tmp_path):
    weight = load_checkpoint(checkpoint)["model"]["features.0.weight"]
    kernels = explain.conv1_kernels(weight)
    assert kernels.shape == (64, 11, 11, 3)
    assert kernels.reshape(64, -1).min(1).max() == 0 and kernels.reshape(64, -1).max(1).min() == pytest.approx(1)
    changed = weight.clone()
    changed[5] = torch.linspace(-1, 1, 11).view(1, 1, 11).expand(3, 11, 11)  # one kernel becomes a ramp
    paths = [figures.conv1_kernels([("k", explain.conv1_kernels(w))], "kernels", tmp_path / f"{i}.png")
             for i, w in enumerate((weight, weight.clone(), changed))]
    pixels = [Image.open(p).convert("RGB").tobytes() for p in paths]
    assert pixels[0] == pixels[1] and pixels[0] != pixels[2]
    ramp = torch.from_numpy(explain.conv1_kernels(changed)[5][:, :, 0])
    assert torch.allclose(ramp, torch.linspace(0, 1, 11).expand(11, 11), atol=1e-6)  # scaled to its own range


class OneColourNet(nn.Module):
    """Class 0's evidence is red (channel 0 of the conv), class 1's is green; the rest is nothing."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 2, 3, padding=1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1], conv.weight[0, 1, 1, 1] = 1.0, -1.0  # red minus green
            conv.weight[1, 1, 1, 1], conv.weight[1, 0, 1, 1] = 1.0, -1.0  # green minus red
            conv.bias.zero_()
        self.features = nn.Sequential(conv, nn.ReLU())
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def patch_image(top: int, left: int, size: int = 32, patch: int = 8) -> torch.Tensor:
    x = torch.full((3, size, size), 0.3)
    x[0, top:top + patch, left:left + patch] = 1.0  # a red square on grey
    x[1, top:top + patch, left:left + patch] = 0.0
    return x


@pytest.mark.parametrize("top,left", [(2, 3), (20, 22), (4, 21)])
def test_grad_cam_peaks_where_the_evidence_is(top, left):
    x = torch.stack([patch_image(top, left)])
    cam = explain.grad_cam(OneColourNet(), x, torch.tensor([0]))[0]
    assert cam.shape == (32, 32) and cam.max() == pytest.approx(1)
    row, col = divmod(int(cam.argmax()), 32)
    assert top <= row < top + 8 and left <= col < left + 8
    inside = cam[top:top + 8, left:left + 8].mean()
    outside = (cam.sum() - cam[top:top + 8, left:left + 8].sum()) / (32 * 32 - 64)
    assert inside > 0.5 and outside < 0.1
    # for the other class the red patch is evidence against: nothing positive anywhere near it
    other = explain.grad_cam(OneColourNet(), x, torch.tensor([1]))[0]
    assert other[top:top + 8, left:left + 8].max() < 0.5


def test_grad_cam_on_alexnet_has_the_input_shape(checkpoint, small_data):
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    from alexnet_tiny.transforms import Preprocessing, eval_batch
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    test = load_dataset(small_data, progress=False).splits["test"]
    x = eval_batch(test.images[:4], prep)
    cams = explain.grad_cam(model, x, torch.tensor([0, 1, 2, 0]))
    assert cams.shape == (4, *x.shape[-2:]) and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    assert explain.last_conv_activation(model) is model.features[11]
    assert all(p.grad is None for p in model.parameters())  # the model's own gradients are untouched
    assert explain.shown(x, prep).shape == (4, 3, *x.shape[-2:])


def test_predict_draws_the_cam_of_a_photo(checkpoint, tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (120, 90), (200, 60, 40)).save(photo)
    out = tmp_path / "cam.png"
    proc = run_cli("predict", checkpoint, photo, "--cam", out, "--device", "cpu", check=True)
    assert proc.stdout.strip().splitlines()[-1] == f"Grad-CAM of 1 image(s) for the most probable class: {out}"
    blue, blue_out = tmp_path / "blue.jpg", tmp_path / "blue.png"
    Image.new("RGB", (120, 90), (40, 60, 200)).save(blue)
    run_cli("predict", checkpoint, blue, "--cam", blue_out, "--device", "cpu", check=True)
    with Image.open(out) as im, Image.open(blue_out) as other:
        assert im.format == "PNG" and im.width > 200
        assert len(im.convert("RGB").getcolors(1 << 24)) > 16  # drawn, not blank
        assert im.size == other.size and im.tobytes() != other.tobytes()  # it shows the photo it was given
    proc = run_cli("predict", checkpoint, photo, "--cam", tmp_path / "cam.jpg")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"alexnet-tiny predict: error: --cam {tmp_path / 'cam.jpg'}: expected a file name " \
                                  "ending in .png"
