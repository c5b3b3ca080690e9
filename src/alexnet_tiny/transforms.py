"""Batched preprocessing on uint8 image tensors, the same code on CPU and GPU.

Eval preset: resize to round(S * 256 / 224) (256 for S = 224), centre crop S.
Train preset: the same resize, a random S x S crop and a random horizontal flip per image.
Both then normalise with the ImageNet mean and std.

Resize-then-crop is done in one `grid_sample` per batch: each output pixel samples the 64x64
source bilinearly at exactly the position that resizing the whole image and then cropping would
sample (align_corners=False, border clamping, as `F.interpolate` does), so no 256x256
intermediate is ever built and per-image crops cost nothing extra.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def resize_size(image_size: int) -> int:
    return round(image_size * 256 / 224)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32, scaled to [0, 1] then normalised per channel."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def crop_resize(images: torch.Tensor, size: int, offsets: torch.Tensor, flips: torch.Tensor,
                resize: int) -> torch.Tensor:
    """Resize each image to resize x resize, crop size x size at `offsets` (B, 2: x, y, in resized
    pixels), mirror where `flips`; returns normalised float (B, 3, size, size)."""
    b = images.shape[0]
    x = normalize(images)
    scale = size / resize
    offsets = offsets.to(x.device, x.dtype)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = torch.where(flips.to(x.device), -scale, scale)
    theta[:, 1, 1] = scale
    theta[:, :, 2] = (size + 2 * offsets) / resize - 1
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def eval_batch(images: torch.Tensor, image_size: int) -> torch.Tensor:
    resize = resize_size(image_size)
    b = images.shape[0]
    offsets = torch.full((b, 2), (resize - image_size) / 2)
    return crop_resize(images, image_size, offsets, torch.zeros(b, dtype=torch.bool), resize)


def train_batch(images: torch.Tensor, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop and flip; the random draws come from `generator` (CPU) so runs are reproducible."""
    resize = resize_size(image_size)
    b = images.shape[0]
    offsets = torch.randint(0, resize - image_size + 1, (b, 2), generator=generator).float()
    flips = torch.rand(b, generator=generator) < 0.5
    return crop_resize(images, image_size, offsets, flips, resize)
