"""Batched preprocessing on uint8 image tensors, the same code on CPU and GPU.

Two ways to bring a 64 px image to the network's S x S input (TrainConfig.input):
- "resize": eval resizes to round(S * 256 / 224) (256 for S = 224) and crops the centre S; training
  takes a random S x S crop of the same resize (or a random resized crop) and flips half the images.
- "pad": the image in the centre of an S x S black canvas, what torchvision's CenterCrop(S) does to an
  image smaller than S (the study's code: CenterCrop(150) on 64 px images); training flips half the
  canvases. Black is 0 before normalisation, so the border is -mean/std after it.
Both then normalise with the ImageNet mean and std.

Resize-then-crop is done in one `grid_sample` per batch: each output pixel samples the 64x64
source bilinearly at exactly the position that resizing the whole image and then cropping would
sample (align_corners=False, border clamping, as `F.interpolate` does), so no 256x256
intermediate is ever built and per-image crops cost nothing extra.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .config import INPUTS
from .data import CACHE_SIZE as IMAGE_SIZE  # the decoded images' size

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def resize_size(image_size: int) -> int:
    return round(image_size * 256 / 224)


@dataclass(frozen=True)
class Preprocessing:
    """The eval preset's parameters, as a checkpoint records them: input "resize" resizes to `resize`
    and crops the centre `image_size`; "pad" places the image in the centre of an `image_size` canvas
    (`resize` is then the image's own size, 64); both normalise with `mean` and `std`."""
    image_size: int
    resize: int
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    input: str = "resize"

    @classmethod
    def for_size(cls, image_size: int, input: str = "resize") -> "Preprocessing":
        return cls(image_size, resize_size(image_size) if input == "resize" else IMAGE_SIZE, input=input)

    @classmethod
    def for_config(cls, config) -> "Preprocessing":
        """A TrainConfig's eval preprocessing."""
        return cls.for_size(config.image_size, config.input)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """From a checkpoint's "preprocessing" (input "resize" when absent: checkpoints from before the
        choice); KeyError/TypeError/ValueError when malformed."""
        prep = cls(int(d["image_size"]), int(d["resize"]), tuple(map(float, d["mean"])), tuple(map(float, d["std"])),
                   str(d.get("input", "resize")))
        if (len(prep.mean) != 3 or len(prep.std) != 3 or min(prep.std) <= 0 or prep.input not in INPUTS
                or not 0 < prep.image_size <= (prep.resize if prep.input == "resize" else 1 << 16)):
            raise ValueError(f"{d}")
        return prep

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@functools.lru_cache(maxsize=16)
def _cached_channel_values(values: tuple, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, device=device).view(1, 3, 1, 1)


def _channel_values(values, device) -> torch.Tensor:
    """Per-channel constants as a (1, 3, 1, 1) tensor on `device`, built once per device: building them
    at every call would copy them host-to-device at every step (a wait for the GPU each time)."""
    return _cached_channel_values(tuple(float(v) for v in values), torch.device(device))


def normalize(images: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32, scaled to [0, 1] then normalised per channel."""
    return (images.float() / 255 - _channel_values(mean, images.device)) / _channel_values(std, images.device)


def sample_boxes(images: torch.Tensor, size: int, centres: torch.Tensor, extents: torch.Tensor,
                 flips: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """Bilinearly sample a size x size view of each image: the box with centre `centres` (B, 2: x, y)
    and half-extent `extents` (B, 2) in normalised [-1, 1] image coordinates, mirrored where `flips`.
    Returns normalised float (B, 3, size, size)."""
    b = images.shape[0]
    x = normalize(images, mean, std)
    centres, extents = centres.to(x.device, x.dtype), extents.to(x.device, x.dtype)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = torch.where(flips.to(x.device), -extents[:, 0], extents[:, 0])
    theta[:, 1, 1] = extents[:, 1]
    theta[:, :, 2] = centres
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def crop_boxes(size: int, offsets: torch.Tensor, resize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres and half-extents of the size x size crops at `offsets` (B, 2: x, y, in pixels of the
    image resized to resize x resize)."""
    return (size + 2 * offsets) / resize - 1, torch.full_like(offsets, size / resize)


def pad_batch(images: torch.Tensor, size: int, flips: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """Each uint8 image in the centre of a size x size black canvas, as torchvision's CenterCrop(size)
    pads an image smaller than size (left and top margins rounded down), the canvas mirrored where
    `flips` (after padding, as RandomHorizontalFlip after CenterCrop), then normalised: the border is
    -mean/std. An image larger than size is cropped to its centre instead."""
    h, w = images.shape[-2:]
    if h >= size and w >= size:
        top, left = round((h - size) / 2), round((w - size) / 2)
        x = images[..., top:top + size, left:left + size].float() / 255
    else:
        top, left = (size - h) // 2, (size - w) // 2
        x = F.pad(images.float() / 255, (left, size - w - left, top, size - h - top))
    x = torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
    return (x - _channel_values(mean, x.device)) / _channel_values(std, x.device)


def eval_batch(images: torch.Tensor, prep: Preprocessing | int) -> torch.Tensor:
    """The eval preset: `prep` (a checkpoint's own), or the default one for an image size."""
    prep = prep if isinstance(prep, Preprocessing) else Preprocessing.for_size(prep)
    b, size, resize = images.shape[0], prep.image_size, prep.resize
    if prep.input == "pad":
        return pad_batch(images, size, torch.zeros(b, dtype=torch.bool, device=images.device), prep.mean, prep.std)
    # whole pixels, as torchvision's CenterCrop
    offsets = torch.full((b, 2), float(round((resize - size) / 2)), device=images.device)
    return sample_boxes(images, size, *crop_boxes(size, offsets, resize),
                        torch.zeros(b, dtype=torch.bool, device=images.device), prep.mean, prep.std)


def random_boxes(b: int, image_size: int, generator: torch.Generator, augment: str = "crop",
                 crop_scale: float = 0.25, input: str = "resize") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random part of `train_batch` for b images: centres, half-extents and flips, drawn on the
    CPU from `generator` so that runs are reproducible on any device. input "pad" draws flips only
    (its boxes are the whole image, unused by `train_view`)."""
    if input == "pad":
        flips = torch.rand(b, generator=generator) < 0.5
        return torch.zeros(b, 2), torch.ones(b, 2), flips
    if augment == "rrc":
        centres, extents = random_resized_boxes(b, crop_scale, generator)
        return centres, extents, torch.rand(b, generator=generator) < 0.5
    resize = resize_size(image_size)
    offsets = torch.randint(0, resize - image_size + 1, (b, 2), generator=generator).float()
    flips = torch.rand(b, generator=generator) < 0.5
    return (*crop_boxes(image_size, offsets, resize), flips)


def train_view(images: torch.Tensor, image_size: int, centres: torch.Tensor, extents: torch.Tensor,
               flips: torch.Tensor, input: str = "resize") -> torch.Tensor:
    """The training input from `random_boxes`' draws: the boxes sampled (input "resize"), or the
    padded canvases, mirrored where `flips` (input "pad")."""
    if input == "pad":
        return pad_batch(images, image_size, flips)
    return sample_boxes(images, image_size, centres, extents, flips)


def train_batch(images: torch.Tensor, image_size: int, generator: torch.Generator, augment: str = "crop",
                crop_scale: float = 0.25, input: str = "resize") -> torch.Tensor:
    """Random crop and flip. augment="crop": resize + random crop; "rrc": random resized crop (area in
    [crop_scale, 1], aspect ratio in [3/4, 4/3], as torchvision's RandomResizedCrop) resized to
    image_size. input="pad": the padded canvas, flipped at random (no crop)."""
    boxes = random_boxes(images.shape[0], image_size, generator, augment, crop_scale, input)
    return train_view(images, image_size, *boxes, input)


def random_resized_boxes(b: int, min_area: float, generator: torch.Generator):
    """Centres and half-extents (normalised coordinates) of random boxes of area fraction
    U(min_area, 1) and log-uniform aspect ratio in [3/4, 4/3], clamped to the image."""
    area = min_area + (1 - min_area) * torch.rand(b, generator=generator)
    log_ratio = math.log(3 / 4) + math.log(16 / 9) * torch.rand(b, generator=generator)
    ratio = torch.exp(log_ratio)
    extents = torch.stack([torch.sqrt(area * ratio), torch.sqrt(area / ratio)], 1).clamp(max=1.0)
    centres = (2 * torch.rand(b, 2, generator=generator) - 1) * (1 - extents)
    return centres, extents
