"""transforms.py against the plain recipe it implements: F.interpolate (bilinear) to
round(S * 256 / 224), then a centre crop (eval) or a random crop and flip (train), then normalise."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alexnet_tiny.transforms import MEAN, STD, eval_batch, normalize, resize_size, train_batch

SIZES = [64, 96, 128, 224]


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def resized(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """The reference: normalised images resized with F.interpolate to round(S * 256 / 224)."""
    r = resize_size(image_size)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (F.interpolate(x.float(), size=(r, r), mode="bilinear", align_corners=False) / 255 - mean) / std


def test_resize_size():
    assert [resize_size(s) for s in (224, 64, 96, 128)] == [256, 73, 110, 146]


@pytest.mark.parametrize("size", SIZES)
def test_eval_is_resize_then_centre_crop(size):
    x = images()
    big = resized(x, size)
    top = int(round((big.shape[-1] - size) / 2))  # torchvision's CenterCrop offset
    expected = big[:, :, top:top + size, top:top + size]
    out = eval_batch(x, size)
    assert out.shape == (6, 3, size, size) and out.dtype == torch.float32
    assert (out - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("size", [64, 96])
def test_train_is_resize_then_some_crop_and_flip(size):
    """Every training image equals one crop (whole pixels) of the resized image, mirrored or not;
    over a batch the crops and flips vary."""
    x = images(32, seed=1)
    big = resized(x, size)
    out = train_batch(x, size, torch.Generator().manual_seed(5))
    assert out.shape == (32, 3, size, size) and out.dtype == torch.float32
    span = big.shape[-1] - size + 1
    found = []
    for i in range(len(x)):
        matches = [(top, left, flip) for top in range(span) for left in range(span) for flip in (False, True)
                   if ((big[i, :, top:top + size, left:left + size].flip(-1) if flip else
                        big[i, :, top:top + size, left:left + size]) - out[i]).abs().max() < 1e-4]
        assert len(matches) == 1, f"image {i}: {matches}"
        found.append(matches[0])
    assert len({f[2] for f in found}) == 2  # both flipped and unflipped images
    assert len({f[:2] for f in found}) > 8  # many different crops


def test_train_draws_come_from_the_generator():
    x = images(16)
    a = train_batch(x, 64, torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG plays no part
    b = train_batch(x, 64, torch.Generator().manual_seed(3))
    c = train_batch(x, 64, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_eval_is_per_image():
    """An image's eval input does not depend on the rest of its batch (no batch statistics, no
    per-batch randomness): a batch equals its images prepared one by one."""
    x = images(8)
    full = eval_batch(x, 64)
    alone = torch.cat([eval_batch(x[i:i + 1], 64) for i in range(8)])
    assert torch.allclose(full, alone, atol=1e-6)
    assert not torch.allclose(full[0], full[1])  # the images differ, so must their inputs


def test_normalisation_values():
    for value in (0, 128, 255):
        x = torch.full((1, 3, 64, 64), value, dtype=torch.uint8)
        expected = [(value / 255 - m) / s for m, s in zip(MEAN, STD)]
        for out in (normalize(x), eval_batch(x, 64), eval_batch(x, 224), train_batch(x, 96, torch.Generator())):
            for c in range(3):
                assert torch.allclose(out[0, c], torch.tensor(expected[c]), atol=1e-5)
    assert MEAN == (0.485, 0.456, 0.406) and STD == (0.229, 0.224, 0.225)

