"""Evaluation, in one place: a model's logits on a split, loss, accuracy and confusion matrix, and a
saved checkpoint evaluated with its own preprocessing and in the precision it was trained in.

Test-time flip averaging (`flip=True`: the logits of each image and of its mirror image, averaged)
is an option of a saved checkpoint's evaluation only, always reported beside the plain accuracy; the
training loops select checkpoints on plain accuracy.

Both training loops, `evaluate`, `predict` and the report call these functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import MAX_IMAGE_SIZE
from .data import Dataset, Split, ensure_dataset, identity_difference
from .device import LEGACY_PRECISION, autocast, check_precision, resolve_device
from .errors import UserError
from .transforms import Preprocessing, eval_batch

EVAL_BATCH_SIZE = 100


@dataclass
class Evaluation:
    """A split's loss and accuracy. `confusion` counts [true, predicted] over the dataset's classes;
    a model with more outputs than classes (the study's 200-way head) can predict an output that is
    no class: such predictions are wrong, counted per true class in `other`."""
    loss: float
    accuracy: float
    confusion: torch.Tensor  # [true, predicted] counts
    other: torch.Tensor | None = None  # per true class: predictions of an output beyond the classes
    predicted: torch.Tensor | None = None  # each image's predicted output, in the split's order (on the host)
    labels: torch.Tensor | None = None  # each image's true class (on the host)

    @property
    def totals(self) -> torch.Tensor:
        """Images per true class."""
        return self.confusion.sum(1) + (self.other if self.other is not None else 0)

    @property
    def per_class_accuracy(self) -> list[float]:
        return (self.confusion.diag().double() / self.totals.clamp(min=1)).tolist()


def output_names(names: list[str], outputs: int) -> list[str]:
    """A name for each of a model's outputs: the class names, then "output k (no class)" for outputs
    beyond the classes."""
    return list(names) + [f"output {k} (no class)" for k in range(len(names), outputs)]


def predict_logits(model, images: torch.Tensor, prep: Preprocessing | int, device, batch_size: int = EVAL_BATCH_SIZE,
                   precision: str = "fp32", flip: bool = False) -> torch.Tensor:
    """Logits of uint8 images under the eval preset `prep` (a Preprocessing, or an image size for
    the default one), in float32; the forward pass runs under `precision`'s autocast. `flip`: the
    mean of the logits of the prepared batch and of its left-right mirror (as the image's mirror would
    give, except that the centre crop's whole-pixel offset moves it one pixel when the margin is odd)."""
    plain, averaged = logits_with_flip(model, images, prep, device, batch_size, precision, flip)
    return averaged if flip else plain


@torch.no_grad()
def logits_with_flip(model, images: torch.Tensor, prep: Preprocessing | int, device,
                     batch_size: int = EVAL_BATCH_SIZE, precision: str = "fp32",
                     flip: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(plain logits, flip-averaged logits) as `predict_logits` gives them, from one forward pass of each
    image and one of its mirror (the averaged ones are None without `flip`)."""
    model.eval()
    plain, averaged = [], []
    with autocast(device, precision):
        for i in range(0, len(images), batch_size):
            x = eval_batch(images[i:i + batch_size].to(device), prep)
            out = model(x).float()
            plain.append(out)
            if flip:
                averaged.append((out + model(x.flip(3)).float()) / 2)
    cat = lambda outs: torch.cat(outs) if outs else torch.zeros(0)  # noqa: E731
    return cat(plain), cat(averaged) if flip else None


def evaluation(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Evaluation:
    """Loss, accuracy and confusion matrix from a split's logits."""
    if len(labels) == 0:
        return Evaluation(float("nan"), float("nan"), torch.zeros(num_classes, num_classes, dtype=torch.int64),
                          torch.zeros(num_classes, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                          torch.zeros(0, dtype=torch.int64))
    logits, labels = logits.float().cpu(), labels.cpu()
    loss = F.cross_entropy(logits, labels, reduction="sum").item() / len(labels)
    pred = logits.argmax(1)  # over every output, as the study's code predicted
    inside = pred < num_classes
    confusion = torch.bincount(labels[inside] * num_classes + pred[inside],
                               minlength=num_classes ** 2).view(num_classes, -1)
    other = torch.bincount(labels[~inside], minlength=num_classes)
    return Evaluation(loss, (pred == labels).double().mean().item(), confusion, other, pred, labels)


def evaluate(model, split: Split, prep: Preprocessing | int, device, num_classes: int,
             precision: str = "fp32") -> Evaluation:
    return evaluation(predict_logits(model, split.images, prep, device, precision=precision), split.labels,
                      num_classes)


# ----------------------------------------------------------------------------- a saved checkpoint

def checkpoint_preprocessing(ckpt: dict, path) -> Preprocessing:
    """The eval preprocessing a checkpoint recorded (its resize, crop, mean and std), never recomputed."""
    try:
        prep = Preprocessing.from_dict(ckpt["preprocessing"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: its preprocessing entry is not image_size, resize, mean and std "
                        f"({str(ckpt.get('preprocessing'))[:200]})") from None
    sizes = (prep.image_size, prep.resize)
    if not all(isinstance(v, int) and 1 <= v <= MAX_IMAGE_SIZE * 2 for v in sizes):
        raise UserError(f"{path}: its preprocessing asks for image size {prep.image_size} and resize {prep.resize}; "
                        f"expected at most {MAX_IMAGE_SIZE * 2} (this tool trains at most {MAX_IMAGE_SIZE})")
    return prep


def checkpoint_precision(ckpt: dict, path) -> str:
    """The precision a checkpoint's trial was trained (and selected) in; fp32 for checkpoints older
    than the precision entry."""
    precision = ckpt.get("precision", LEGACY_PRECISION)
    try:
        return check_precision(precision)
    except UserError:
        raise UserError(f"{path}: unknown precision {precision!r} (expected fp32 or bf16)") from None


class SavedModel:
    """A checkpoint ready to evaluate: its model on the device, its preprocessing and precision."""

    def __init__(self, path: Path | str, device="cpu"):
        self.path = Path(path)
        self.ckpt = load_checkpoint(self.path)
        self.device = torch.device(device)
        self.model = model_from_checkpoint(self.ckpt, self.device)
        self.prep = checkpoint_preprocessing(self.ckpt, self.path)
        self.precision = checkpoint_precision(self.ckpt, self.path)

    @property
    def wnids(self) -> list[str]:
        return self.ckpt["classes"]["wnids"]

    def check_classes(self, dataset: Dataset) -> None:
        """Refuse a dataset other than the checkpoint's: other classes, or another split of them (its
        test images would then include training images)."""
        if dataset.wnids != self.wnids:
            raise UserError(f"{dataset.root}: its classes differ from those the checkpoint {self.path} was trained on")
        difference = identity_difference(self.ckpt.get("dataset") or {}, dataset.identity,
                                         same_source=False)
        if difference:
            raise UserError(f"{dataset.root}: {difference} (checkpoint {self.path}); "
                            f"prepare the data as the run did or pass its --data")

    def logits(self, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
        return predict_logits(self.model, images, self.prep, self.device, precision=self.precision, flip=flip)

    def logits_with_flip(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(plain, flip-averaged) logits from two forward passes of each image, not three."""
        return logits_with_flip(self.model, images, self.prep, self.device, precision=self.precision)

    def evaluate(self, split: Split, num_classes: int | None = None, flip: bool = False) -> Evaluation:
        """Accuracy, loss and per-class figures on `split`; num_classes defaults to the checkpoint's."""
        return evaluation(self.logits(split.images, flip), split.labels, num_classes or len(self.wnids))


def per_class_rows(dataset: Dataset, ev: Evaluation) -> list[dict]:
    return [{"wnid": w, "name": n, "accuracy": a, "images": int(c)} for w, n, a, c in
            zip(dataset.wnids, dataset.names, ev.per_class_accuracy, ev.totals.tolist())]


def checkpoint_dataset(ckpt_path: Path, data=None):
    """The dataset a checkpoint's run recorded (config.json beside it), or `data`, or the default."""
    if data is None:
        from .runlog import read_config
        rec = read_config(Path(ckpt_path).parent)
        data = rec["dataset"]["root"] if rec and Path(rec["dataset"]["root"]).exists() else None
    return data


def evaluate_checkpoint(path, data=None, split: str = "test", device: str = "auto", progress: bool = True,
                        flip: bool = False) -> dict:
    """A checkpoint on one split: loss, accuracy, per-class accuracy and confusion; with `flip`, also
    the flip-averaged accuracy and loss (`flip_accuracy`, `flip_loss`), beside the plain ones."""
    saved = SavedModel(path, resolve_device(device))
    dataset = ensure_dataset(checkpoint_dataset(path, data), progress=progress)
    saved.check_classes(dataset)
    if len(dataset.splits[split]) == 0:
        raise UserError(f"{dataset.root}: its {split} split has no images to evaluate")
    ev = saved.evaluate(dataset.splits[split], dataset.num_classes)
    result = {"checkpoint": str(path), "split": split, "epoch": saved.ckpt.get("epoch"),
              "images": len(dataset.splits[split]), "precision": saved.precision, "loss": ev.loss,
              "accuracy": ev.accuracy, "per_class": per_class_rows(dataset, ev), "confusion": ev.confusion.tolist()}
    if flip:
        flipped = saved.evaluate(dataset.splits[split], dataset.num_classes, flip=True)
        result.update(flip_accuracy=flipped.accuracy, flip_loss=flipped.loss)
    return result


def format_table(result: dict) -> str:
    width = max(len(r["name"]) for r in result["per_class"])
    lines = [f"{'class':<{width}}  {'wnid':<9}  accuracy  images"]
    for r in result["per_class"]:
        lines.append(f"{r['name']:<{width}}  {r['wnid']:<9}  {r['accuracy']:8.3f}  {r['images']:6d}")
    lines.append(f"{'all':<{width}}  {'':<9}  {result['accuracy']:8.3f}  {result['images']:6d}")
    return "\n".join(lines)
