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
        undropped = model.classifier[6](model.classifier[5](model.classifier[4](model.classifier[2](
            model.classifier[1](torch.flatten(model.avgpool(model.features(x)), 1))))))
        assert torch.allclose(model(x), undropped, atol=1e-6)  # eval mode: the layers without dropout
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


# ----------------------------------------------------------------------------- initialisation

def layer_output_stds(model: AlexNet, x: torch.Tensor) -> list[float]:
    """The std of every conv and linear layer's output (before its ReLU) on the batch x."""
    stds = []
    hooks = [m.register_forward_hook(lambda m, a, out: stds.append(out.std().item()))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return stds


def test_kaiming_initialisation_keeps_the_signal_that_the_default_loses(embedded_data):
    """On real images (64 px, normalised), PyTorch's default initialisation shrinks the signal at
    every layer (conv5's output is 25x smaller than conv1's); the kaiming scheme keeps every conv at
    the scale of its input (std about 1.4-2.6 here) and starts the logits small but alive."""
    from alexnet_tiny.data import load_dataset
    from alexnet_tiny.transforms import eval_batch
    images = load_dataset(embedded_data, progress=False).splits["train"].images
    x = eval_batch(images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:128]], 64)
    torch.manual_seed(0)
    default = layer_output_stds(AlexNet(10), x)
    torch.manual_seed(0)
    kaiming = layer_output_stds(AlexNet(10, init="kaiming"), x)
    assert default[4] < 0.05 * default[0] and default[-1] < 0.05 * default[0]
    assert all(0.5 < s < 4 for s in kaiming[:5])  # the five convs
    assert 0.1 < kaiming[5] < 2 and 0.1 < kaiming[6] < 2 and 0.05 < kaiming[-1] < 1
    assert kaiming[4] > 20 * default[4] and kaiming[-1] > 10 * default[-1]


def test_kaiming_initialisation_draws():
    torch.manual_seed(0)
    model = AlexNet(10, init="kaiming")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    fc1, fc2, fc3 = (m for m in model.classifier if isinstance(m, nn.Linear))
    for m in convs + [fc2]:
        fan_in = m.weight[0].numel()
        assert m.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
    assert fc1.weight.std().item() == pytest.approx((2 / 9216) ** 0.5 / 6, rel=0.02)
    assert fc3.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert all(m.bias.abs().max().item() == 0 for m in convs + [fc1, fc2, fc3])
    torch.manual_seed(0)
    again = AlexNet(10, init="kaiming")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    torch.manual_seed(0)
    default = AlexNet(10, init="torch")
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), AlexNet(10).state_dict().values()))
    with pytest.raises(ValueError, match="init='xavier'"):
        AlexNet(10, init="xavier")


def test_dropout_keeps_the_activation_dtype():
    """Under bf16 autocast the classifier stays in bf16: the mask takes the activation's dtype, with
    the same values (0 or 2 at p = 0.5) and the same random stream as in fp32."""
    from alexnet_tiny.model import Dropout
    layer = Dropout(0.5).train()
    x = torch.ones(4, 64)
    torch.manual_seed(3)
    full = layer(x)
    torch.manual_seed(3)
    half = layer(x.bfloat16())
    assert half.dtype == torch.bfloat16 and torch.equal(half.float(), full)
    assert set(full.unique().tolist()) == {0.0, 2.0}


@pytest.mark.parametrize("size, cells", [(64, 1), (96, 2), (150, 3), (224, None)])
def test_fc1_reads_the_cells_the_pool_repeats(size, cells):
    """Where the adaptive pool only repeats cells (1x1, 2x2 or 3x3 maps), FC1 on the map itself with
    each block's weights summed gives the same logits, and the same gradients for every weight, as
    the pooled path (torchvision's). The model takes that path for a 1x1 map (where it pays) when no
    dropout mask falls before FC1; with dropout in training, at 96 and 150 px, and at 224 px (6x6:
    nothing repeated) it pools."""
    from alexnet_tiny.model import folded_fc1
    torch.manual_seed(1)
    x = torch.randn(3, 3, size, size)
    for dropout, training in ((0.0, True), (0.5, False), (0.5, True)):
        torch.manual_seed(0)
        model = AlexNet(10, dropout=dropout, init="kaiming").train(training)
        features = model.features(x)
        assert model.repeats_cells(features) == (cells == 1 and (dropout == 0 or not training))
        assert features.shape[-1] == (cells or 6)
        if cells is None or (training and dropout):
            continue
        pooled = model.classifier[1](torch.flatten(model.avgpool(features), 1))
        folded = folded_fc1(model.classifier[1], features)
        assert torch.allclose(folded, pooled, rtol=1e-4, atol=1e-5)
        (g_pooled,) = torch.autograd.grad(pooled.square().sum(), model.classifier[1].weight)
        (g_folded,) = torch.autograd.grad(folded.square().sum(), model.classifier[1].weight)
        assert ((g_folded - g_pooled).norm() / g_pooled.norm()).item() < 1e-5
        reference = model.classifier(torch.flatten(model.avgpool(features), 1))  # no mask here: deterministic
        assert torch.allclose(model(x), reference, rtol=1e-4, atol=1e-5)
