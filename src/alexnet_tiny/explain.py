"""What a trained AlexNet learned, as data for the report's figures (the paper's own figures 3 and 4,
and class-activation maps): first-layer kernels, top-k predictions, nearest neighbours in the last
hidden layer's feature space, and Grad-CAM.

    conv1_kernels(weight)       the 64 conv1 kernels as (64, 11, 11, 3) images, each scaled to its own range
    initial_model(ckpt)         the weights a checkpoint's run started from (its seed and init, redone)
    fc2_features(model, ...)    the 4,096 outputs of FC2 after its ReLU, per image
    nearest(queries, keys, k)   Euclidean k nearest neighbours
    grad_cam(model, x, classes) Grad-CAM on the last conv layer (Selvaraju et al., 2017)
    shown(x, prep)              a prepared batch back to the pixels the model saw (what the maps lie over)
    learned(saved, dataset, ..) all of it for a checkpoint's test images, as the report shows it

Grad-CAM is a forward hook and one `torch.autograd.grad` call: the gradient of each image's class
score with respect to the last conv layer's activations (after its ReLU), averaged over positions,
weights those activations; the weighted sum, clipped at zero, is upsampled to the input. PyPI's
grad-cam 1.5.7 (pytorch-grad-cam) requires torchvision, which does not import beside the CPU torch
wheel, and opencv, scikit-learn, scipy and ttach, for these few lines.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import checkpoint_outputs
from .config import HYPERPARAMETERS, TrainConfig
from .data import Dataset, Split
from .evaluate import EVAL_BATCH_SIZE, SavedModel, output_names
from .model import AlexNet
from .start import starting_model
from .transforms import Preprocessing, eval_batch


def conv1_kernels(weight: torch.Tensor) -> np.ndarray:
    """conv1's (64, 3, 11, 11) weight as RGB images, (64, 11, 11, 3) in [0, 1], each kernel scaled
    from its own minimum to its own maximum (as the paper's figure 3)."""
    w = weight.detach().float().cpu()
    low = w.amin((1, 2, 3), keepdim=True)
    span = (w.amax((1, 2, 3), keepdim=True) - low).clamp(min=1e-12)
    return ((w - low) / span).permute(0, 2, 3, 1).numpy()


def initial_model(ckpt: dict, train: Split | None = None) -> AlexNet:
    """The weights the checkpoint's run started from (start.starting_model: its seed and init, and
    for init whiten the whitening of `train`, its training split), redone with the checkpoint's
    classes and hidden width."""
    config = TrainConfig.from_dict({k: v for k, v in ckpt["config"].items() if k in HYPERPARAMETERS})
    hidden = ckpt["model"]["classifier.1.weight"].shape[0]
    return starting_model(config, checkpoint_outputs(ckpt), train, hidden)


@torch.no_grad()
def fc2_features(model: AlexNet, images: torch.Tensor, prep: Preprocessing | int, device,
                 batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """(N, hidden) float32: the second fully connected layer's outputs after its ReLU (the paper's
    "last, 4096-dimensional hidden layer"), under the eval preprocessing, dropout off."""
    model.eval()
    hidden_layers = model.classifier[:6]  # dropout, FC1, ReLU, dropout, FC2, ReLU
    outs = []
    for i in range(0, len(images), batch_size):
        x = model.avgpool(model.features(eval_batch(images[i:i + batch_size].to(device), prep)))
        outs.append(hidden_layers(torch.flatten(x, 1)).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0, hidden_layers[4].out_features)


def nearest(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices), each (len(queries), k): the k keys nearest each query in Euclidean
    distance, nearest first."""
    distances = torch.cdist(queries.double(), keys.double())
    d, i = distances.topk(min(k, len(keys)), dim=1, largest=False)
    return d.float(), i


def nearest_images(model: AlexNet, queries: torch.Tensor, images: torch.Tensor, prep: Preprocessing | int, device,
                   k: int, batch_size: int = EVAL_BATCH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """`nearest(queries, fc2_features(model, images, ...), k)`, exactly, with `images`' features made a
    batch at a time and a running top-k: memory for one batch of features, not for all of them (the
    80,000 training images of Tiny ImageNet-200 have 1.3 GB of them)."""
    best_d = torch.zeros(len(queries), 0)
    best_i = torch.zeros(len(queries), 0, dtype=torch.int64)
    for start in range(0, len(images), batch_size):
        d, i = nearest(queries, fc2_features(model, images[start:start + batch_size], prep, device, batch_size), k)
        d, i = torch.cat([best_d, d], 1), torch.cat([best_i, i + start], 1)  # this batch's k nearest, and the best so far
        kept = d.topk(min(k, d.shape[1]), dim=1, largest=False)
        best_d, best_i = kept.values, i.gather(1, kept.indices)
    return best_d, best_i


def last_conv_activation(model: nn.Module) -> nn.Module:
    """The module whose output Grad-CAM weighs: the ReLU after the last conv layer."""
    modules = list(model.features) if hasattr(model, "features") else list(model.modules())
    last_conv = max(i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d))
    follower = modules[last_conv + 1] if last_conv + 1 < len(modules) else None
    return follower if isinstance(follower, nn.ReLU) else modules[last_conv]


def grad_cam(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, layer: nn.Module | None = None) -> torch.Tensor:
    """(N, H, W) in [0, 1]: Grad-CAM maps of the prepared batch `x` (N, 3, H, W) for `classes` (N,),
    each scaled by its own maximum (all zero where no position has positive evidence)."""
    layer = layer or last_conv_activation(model)
    model.eval()
    captured = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        with torch.enable_grad():
            logits = model(x)
            score = logits.gather(1, classes.view(-1, 1).to(logits.device)).sum()
            (grads,) = torch.autograd.grad(score, captured[0])
    finally:
        handle.remove()
    activations = captured[0].detach()
    weights = grads.mean((2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (cam / peak).float().cpu()


def shown(x: torch.Tensor, prep: Preprocessing) -> np.ndarray:
    """A prepared batch back to uint8 (N, 3, H, W) pixels: exactly what the model saw (the crop that
    Grad-CAM's maps lie over)."""
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (prep.mean, prep.std))
    return (x.float() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


# ----------------------------------------------------------------------------- for the report

TOP5_IMAGES, NEIGHBOUR_QUERIES, NEIGHBOURS, CAM_IMAGES = 8, 6, 6, 8


def right_and_wrong(predicted: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> list[int]:
    """n indices in a seeded order, half of them predicted right and half wrong where there are enough
    of each (right ones first)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    right = [i for i in order if predicted[i] == labels[i]]
    wrong = [i for i in order if predicted[i] != labels[i]]
    n_right = max(n // 2, n - len(wrong))
    return right[:n_right] + wrong[:n - min(n_right, len(right))]


def learned(saved: SavedModel, dataset: Dataset, test_logits: torch.Tensor, seed: int) -> dict:
    """What the best checkpoint learned, as numbers (top-5 predictions, nearest training images in
    FC2's feature space, Grad-CAM peaks) and the pictures drawn from them."""
    names = output_names(dataset.names, test_logits.shape[1])  # predictions may name an output beyond the classes
    test, train = dataset.splits["test"], dataset.splits["train"]
    probabilities = test_logits.softmax(1).cpu()
    predicted = probabilities.argmax(1)
    k = min(5, dataset.num_classes)
    top = right_and_wrong(predicted, test.labels, TOP5_IMAGES, seed)
    top5 = []
    for i in top:
        p, c = probabilities[i].topk(k)
        top5.append({"file": test.files[i], "true": names[test.labels[i]], "true_index": int(test.labels[i]),
                     "classes": [names[j] for j in c.tolist()], "indices": c.tolist(),
                     "probabilities": p.tolist()})
    queries = right_and_wrong(predicted, test.labels, NEIGHBOUR_QUERIES, seed + 1)
    query_features = fc2_features(saved.model, test.images[queries], saved.prep, saved.device)
    distances, indices = nearest_images(saved.model, query_features, train.images, saved.prep, saved.device,
                                        NEIGHBOURS)
    neighbours = [{"file": test.files[q], "true": names[test.labels[q]],
                   "neighbours": [{"file": train.files[j], "class": names[train.labels[j]], "distance": d,
                                   "same_class": bool(train.labels[j] == test.labels[q])}
                                  for j, d in zip(row.tolist(), dist.tolist())]}
                  for q, row, dist in zip(queries, indices, distances)]
    cam_images = right_and_wrong(predicted, test.labels, CAM_IMAGES, seed + 2)
    x = eval_batch(test.images[cam_images].to(saved.device), saved.prep)
    cams = grad_cam(saved.model, x, predicted[cam_images])
    cam = [{"file": test.files[i], "true": names[test.labels[i]], "predicted": names[predicted[i]],
            "right": bool(predicted[i] == test.labels[i]),
            "peak": list(divmod(int(m.argmax()), m.shape[1]))} for i, m in zip(cam_images, cams)]
    pictures = {"top5": test.images[top].numpy(), "queries": test.images[queries].numpy(),
                "neighbours": [train.images[row].numpy() for row in indices],
                "cam_images": shown(x, saved.prep), "cams": cams.numpy()}
    return {"top5": top5, "neighbours": neighbours, "cam": cam, "pictures": pictures}
