"""Classify new pictures with a saved checkpoint.

A photo of any size, format and mode is brought to what the model was trained on by the function
`prepare` uses too (data.image_array): upright (EXIF orientation), RGB (16-bit and float scaled,
transparency flattened onto white), centre-cropped to a square and resized to 64 x 64, the native
size of the training images in the decoded cache. The checkpoint's own eval
preprocessing (resize and centre crop to its image_size, normalisation) then runs on that.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from .data import image_array
from .device import resolve_device
from .errors import UserError
from .checkpoint import checkpoint_outputs
from .evaluate import EVAL_BATCH_SIZE, SavedModel, output_names
from .transforms import eval_batch

# Far above any camera's default output; decompression bombs declare far more than this.
MAX_PIXELS = 50_000_000


def load_image(path: Path | str, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """An image file -> uint8 (3, 64, 64): upright, RGB, centre square, resized like the cache."""
    if isinstance(path, str) and "://" in path:  # a Path would fold it to "https:/..."
        raise UserError(f"{path}: a URL; predict reads local image files (download it first)")
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():  # is_file follows links: /dev/zero is none
        raise UserError(f"{path}: not a regular file (a FIFO, device or socket), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise UserError(f"{path}: refused, {width} x {height} is over the limit of {max_pixels:,} "
                                    f"pixels (a decompression bomb? downscale real photos first)")
                im.load()
                array = image_array(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{path}: refused, over the limit of {max_pixels:,} pixels (a decompression bomb?)") from None
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({str(e).strip() or e.__class__.__name__})") from None
    return torch.from_numpy(array)


def predict(checkpoint: Path | str, images: list[Path | str], topk: int = 5, device: str = "auto",
            cam: Path | str | None = None) -> list[dict]:
    """One result per image, in order: {"image", "top": [{"class", "wnid", "probability"}]} or
    {"image", "error"} for a file that could not be read. A bad checkpoint raises UserError. `cam`: also
    write there a PNG of each readable image under its Grad-CAM map for its most probable class."""
    if topk < 1:
        raise UserError(f"--topk {topk}: expected 1 or more")
    if cam is not None and Path(cam).suffix.lower() != ".png":
        raise UserError(f"--cam {cam}: expected a file name ending in .png")
    saved = SavedModel(checkpoint, resolve_device(device))
    outputs = checkpoint_outputs(saved.ckpt)
    names = output_names(saved.ckpt["classes"]["names"], outputs)
    wnids = saved.wnids + [""] * (outputs - len(saved.wnids))
    results, loaded = [], []
    for path in images:
        try:
            loaded.append(load_image(path))
            results.append({"image": str(path)})
        except UserError as e:
            results.append({"image": str(path), "error": str(e)})
    if not loaded:
        return results
    logits = saved.logits(torch.stack(loaded)).cpu()
    probs, indices = logits.softmax(1).topk(min(topk, len(names)), dim=1)
    good = iter(zip(probs.tolist(), indices.tolist()))
    for result in results:
        if "error" not in result:
            ps, ks = next(good)
            result["top"] = [{"class": names[k], "wnid": wnids[k], "probability": p} for p, k in zip(ps, ks)]
    if cam is not None:
        write_cam(saved, torch.stack(loaded), indices[:, 0], [r for r in results if "error" not in r], Path(cam))
    return results


def write_cam(saved: SavedModel, images: torch.Tensor, classes: torch.Tensor, results: list[dict], out: Path) -> Path:
    """Grad-CAM of each image for its first prediction (the output `classes` holds), drawn over what the
    model saw, into `out`."""
    from . import explain, figures
    x = eval_batch(images.to(saved.device), saved.prep)
    cams = torch.cat([explain.grad_cam(saved.model, x[i:i + EVAL_BATCH_SIZE], classes[i:i + EVAL_BATCH_SIZE])
                      for i in range(0, len(x), EVAL_BATCH_SIZE)])
    captions = [f"{Path(r['image']).name}: {r['top'][0]['class']} {r['top'][0]['probability']:.0%}" for r in results]
    figures.class_activation_maps(explain.shown(x, saved.prep), cams.numpy(), captions, [None] * len(results),
                                  "Grad-CAM for the most probable class", out)
    for r in results:
        r["cam"] = str(out)
    return out


def format_result(result: dict) -> str:
    lines = [result["image"]]
    width = max(len(t["class"]) for t in result["top"])
    lines += [f"  {t['probability']:6.1%}  {t['class']:<{width}}  {t['wnid']}" for t in result["top"]]
    return "\n".join(lines)
