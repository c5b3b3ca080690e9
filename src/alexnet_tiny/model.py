"""AlexNet with torchvision's exact layer layout and state_dict keys.

Krizhevsky et al. (2012): five conv layers and three fully connected ones, overlapping max-pooling
(3x3, stride 2), ReLU after every conv and FC layer, dropout before FC1 and FC2. Like torchvision,
the single-GPU variant (64-192-384-256-256 channels) without local response normalisation, and an
adaptive average pool so that any input from 64x64 up reaches the classifier as 256 x 6 x 6.
Weights saved from it load unchanged into `torchvision.models.alexnet(num_classes=...)`.

Dropout masks are drawn by `dropout_mask`, the same call on every device, so that the stacked
engine (engine.py), which draws one mask for all the trials it advances, gives every trial exactly
the masks it would get trained alone. (`nn.Dropout` draws them so on the CPU, but on CUDA it uses
the fused `native_dropout` kernel, whose random stream is another.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import INITS


# The two hidden fully connected layers' width (the paper's 4096). Tests that train many trial-epochs
# but do not need the real width narrow it (tests/conftest.py: narrow_alexnet); a checkpoint's
# weights carry their width, so it loads whatever this is.
HIDDEN = 4096


def dropout_mask(shape, p: float, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Keep each unit with probability 1 - p, scaled by 1 / (1 - p): what `nn.Dropout` computes on the
    CPU (the same generator call), on any device. Drawn in fp32 (the same random stream in any
    precision), then given `dtype`, the activation's: a fp32 mask would promote a bf16 activation,
    and everything after it, to fp32."""
    if p >= 1:
        return torch.zeros(shape, device=device, dtype=dtype)
    return torch.empty(shape, device=device).bernoulli_(1 - p).div_(1 - p).to(dtype)


class Dropout(nn.Dropout):
    """nn.Dropout with its mask from `dropout_mask` (no parameters: state_dicts are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * dropout_mask(x.shape, self.p, x.device, x.dtype)


@torch.no_grad()
def initialize(model: "AlexNet", scheme: str) -> None:
    """The starting weights. "torch": PyTorch's layer defaults (torchvision's AlexNet; the original
    study's). Without normalisation layers they shrink the signal at every layer, and training sits
    at chance for the first epochs. "kaiming": He et al. (2015) normal weights, variance 2/fan-in, so
    every conv and hidden layer passes the signal on at its own scale, except two: the first fully
    connected layer's weights are 6x smaller in std (at 64 px its 9,216 inputs are 256 values seen 36
    times through the adaptive pool, and full scale there makes SGD blow up), and the last layer's
    std is 0.01, so the first logits are near zero (loss ln(classes)). Biases start at zero.
    "whiten": "kaiming" here; a trial then sets conv1 from its training images (start.starting_model)."""
    if scheme == "torch":
        return
    if scheme not in INITS:
        raise ValueError(f"init={scheme!r}: expected one of {INITS}")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(m.bias)
    first_fc = model.classifier[1]
    first_fc.weight.div_(6)
    nn.init.normal_(layers[-1].weight, 0, 0.01)


class AlexNet(nn.Module):
    fold_fc1 = True  # FC1 on the cells the pool repeats, where it may (repeats_cells); bench/fold.py turns it off

    def __init__(self, num_classes: int = 10, dropout: float = 0.5, hidden: int | None = None, init: str = "torch"):
        super().__init__()
        hidden = hidden or HIDDEN
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            Dropout(p=dropout), nn.Linear(256 * 6 * 6, hidden), nn.ReLU(inplace=True),
            Dropout(p=dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        initialize(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.repeats_cells(x):
            return self.classifier[2:](folded_fc1(self.classifier[1], x))
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def repeats_cells(self, features: torch.Tensor) -> bool:
        """Whether FC1 reads the feature map before the adaptive pool (`folded_fc1`): a 1x1 map (64 to
        95 px), which the pool repeats 36 times, and no dropout mask between the pool and FC1
        (evaluation, or dropout 0). 2x2 and 3x3 maps (96, 150 px) are repeated too, but summing their
        blocks' strided weights cost what the smaller matmul saved (bench/fold.py), so they pool."""
        if not self.fold_fc1 or features.shape[-2:] != (1, 1):
            return False
        return not self.training or self.classifier[0].p == 0


def folded_fc1(fc1: nn.Linear, features: torch.Tensor, pooled: tuple[int, int] = (6, 6)) -> torch.Tensor:
    """FC1 of the adaptive pool's output, computed from the h x w map it repeats. The pool turns each
    cell into a block of (6/h) x (6/w) equal values, so FC1's weights on a block act on one value: FC1
    is the same as a layer whose weights are each block's sum, on 256 h w inputs instead of 9,216.
    The same function, and, through the sum, the same gradient for every weight of a block (each gets
    the gradient its copy of the value gives): at 64 px FC1 costs a 36th of its matmul, and the
    weights and their state_dict are unchanged."""
    b, c, h, w = features.shape
    out_h, out_w = pooled
    weight = fc1.weight.view(fc1.out_features, c, h, out_h // h, w, out_w // w).sum((3, 5))
    return F.linear(features.flatten(1), weight.flatten(1), fc1.bias)


def initial_alexnet(seed: int, num_classes: int, init: str = "torch", dropout: float = 0.5,
                    hidden: int | None = None) -> AlexNet:
    """A run's starting weights, the one definition every driver and the report use: torch's global
    RNG seeded with the run's seed, then the network built and initialised (so a stacked trial starts
    from the weights it has alone, and a report can redo a run's start from its checkpoint)."""
    torch.manual_seed(seed)
    return AlexNet(num_classes, dropout=dropout, hidden=hidden, init=init)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_count(outputs: int) -> int:
    """AlexNet's parameters with `outputs` outputs, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return count_parameters(AlexNet(outputs))
