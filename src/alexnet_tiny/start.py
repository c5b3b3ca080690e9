"""A trial's starting weights: `model.initial_alexnet` (its seed and init), and for init "whiten" the
first convolution computed from the training split (`whitening`). Every driver and the report (the
kernels it starts from) build a trial's first model here."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import Split
from .model import AlexNet, initial_alexnet
from .transforms import Preprocessing, eval_batch

WHITENING_IMAGES = 256  # training images whose conv1 patches set the whitening (every n-th one)
WHITENING_EPS = 1e-2  # added to each eigenvalue, as a fraction of the patches' mean variance


def starting_model(config: TrainConfig, outputs: int, train: Split | None, hidden: int | None = None) -> AlexNet:
    """A trial's starting weights: `model.initial_alexnet` (its seed and init), and for init "whiten"
    conv1 set to whiten the patches it sees in the training split (`whitening`). Every driver and the
    report start a trial here."""
    model = initial_alexnet(config.seed, outputs, config.init, config.dropout, hidden)
    if config.init == "whiten":
        if train is None:
            raise ValueError("init whiten: the first convolution is computed from the training images")
        conv = model.features[0]
        weight, bias = whitening(train, Preprocessing.for_config(config), conv)
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
    return model


@torch.no_grad()
def whitening(train: Split, prep: Preprocessing, conv: torch.nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1's weights and biases that whiten its input patches (PCA whitening): the patches conv1
    sees (its kernel, stride and padding) in the eval view of every n-th training image (about
    WHITENING_IMAGES), their covariance's top `out_channels` eigenvectors, each scaled by 1 /
    sqrt(eigenvalue + eps), and biases that centre them. On those patches the responses then have
    zero mean and a covariance near the identity (the eigenvalues of 11 x 11 patches fall from about
    200 to 0.2 at the 64th, so eps = 1% of the mean variance barely touches them). Only the training
    split is read. Deterministic: no random numbers are drawn."""
    step = max(1, len(train) // WHITENING_IMAGES)
    images = train.images[::step].cpu()
    size = conv.weight.shape[1] * conv.kernel_size[0] * conv.kernel_size[1]
    total, outer, count = torch.zeros(size, dtype=torch.float64), torch.zeros(size, size, dtype=torch.float64), 0
    for i in range(0, len(images), 64):
        x = eval_batch(images[i:i + 64], prep)
        patches = F.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)
        patches = patches.transpose(1, 2).reshape(-1, size)
        total += patches.sum(0).double()
        outer += (patches.T @ patches).double()  # fp32 within a batch, fp64 across them
        count += len(patches)
    mean = total / count
    covariance = outer / count - torch.outer(mean, mean)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    k = conv.out_channels
    top_values, top_vectors = eigenvalues.flip(0)[:k], eigenvectors.flip(1)[:, :k]
    eps = WHITENING_EPS * eigenvalues.mean()
    weight = top_vectors.T / (top_values.clamp(min=0) + eps).sqrt()[:, None]
    bias = -(weight @ mean)
    return weight.float().reshape(conv.weight.shape), bias.float()
