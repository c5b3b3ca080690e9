"""model.py: torchvision's AlexNet layer layout, state_dict names and parameter counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet_tiny.model import AlexNet, count_parameters, dropout_mask

# torchvision.models.alexnet(num_classes=10).state_dict(): names and shapes, written out.
TORCHVISION_SHAPES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (10, 4096), "classifier.6.bias": (10,),
}


@pytest.fixture(scope="module")
def model() -> AlexNet:
    torch.manual_seed(0)
    return AlexNet(10)


def test_parameter_counts(model):
    assert count_parameters(model) == 57_044_810
    assert count_parameters(AlexNet(1000)) == 61_100_840


def test_state_dict_keys_and_shapes_are_torchvisions(model):
    sd = model.state_dict()
    assert list(sd) == list(TORCHVISION_SHAPES)  # no buffers: nothing but the 16 weight and bias tensors
    assert {k: tuple(v.shape) for k, v in sd.items()} == TORCHVISION_SHAPES


def test_layers(model):
    f, c = model.features, model.classifier
    convs = [(0, 3, 64, 11, 4, 2), (3, 64, 192, 5, 1, 2), (6, 192, 384, 3, 1, 1), (8, 384, 256, 3, 1, 1),
             (10, 256, 256, 3, 1, 1)]
    for i, cin, cout, k, stride, pad in convs:
        conv = f[i]
        assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (cin, cout)
        assert (conv.kernel_size, conv.stride, conv.padding) == ((k, k), (stride, stride), (pad, pad))
        assert isinstance(f[i + 1], nn.ReLU)  # ReLU after every conv
    for i in (2, 5, 12):  # overlapping max-pooling
        assert isinstance(f[i], nn.MaxPool2d) and f[i].kernel_size == 3 and f[i].stride == 2
    assert len(f) == 13
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and model.avgpool.output_size == (6, 6)
    kinds = [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    assert len(c) == len(kinds) and all(isinstance(m, kind) for m, kind in zip(c, kinds))
    assert c[0].p == 0.5 and c[3].p == 0.5  # dropout before FC1 and FC2
    assert (c[1].out_features, c[4].out_features) == (4096, 4096)


def test_dropout_draws_what_nn_dropout_draws_on_the_cpu(model):
    """model.Dropout takes its mask from dropout_mask (the one call the stacked engine also makes, on
    every device); on the CPU that is bitwise what nn.Dropout computes from the same seed, so runs
    trained before and after the change agree."""
    x = torch.randn(12, 9216)
    outs = []
    for layer in (model.classifier[0], nn.Dropout(0.5)):
        torch.manual_seed(7)
        outs.append(layer.train()(x))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(7)
    assert torch.equal(outs[0], x * dropout_mask(x.shape, 0.5, "cpu"))
    assert (outs[0] == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(model.classifier[0].eval()(x), x)  # evaluation: no dropout
    assert torch.equal(dropout_mask((3, 4), 1.0, "cpu"), torch.zeros(3, 4))  # p = 1 drops everything, as nn.Dropout


def test_no_normalisation_layers(model):
    norms = (nn.modules.batchnorm._BatchNorm, nn.LocalResponseNorm, nn.GroupNorm, nn.LayerNorm,
             nn.modules.instancenorm._InstanceNorm)
    assert not [m for m in model.modules() if isinstance(m, norms)]


@pytest.mark.parametrize("size", [64, 96, 224])
def test_input_sizes(model, size):
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_dropout_only_in_training(model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
    model.eval()
    assert not torch.equal(a, b)


def test_num_classes_sets_the_last_layer():
    assert AlexNet(3).classifier[6].out_features == 3


def test_weights_load_into_torchvision(model):
    models = pytest.importorskip("torchvision.models")  # an optional extra, not installed by default
    tv = models.alexnet(num_classes=10)
    tv.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 224, 224)
    model.eval(), tv.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x))
