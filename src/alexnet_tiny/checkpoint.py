"""Checkpoints: plain dicts of tensors and primitives, loaded with weights_only=True.

    {"model", "optimizer", "epoch", "config", "best", "classes", "preprocessing", "precision",
     "elapsed_seconds"}   (best.pt leaves out the optimizer; runfolder.checkpoint_dict writes them)

"optimizer" is in torch.optim.SGD's state_dict layout; there is no scheduler state (the learning rate
is a function of the epoch, trial.lr_at). Checkpoints from before the precision entry are fp32.
"""
from __future__ import annotations

import contextlib
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path

import torch

from .config import MAX_OUTPUTS
from .errors import UserError
from .model import AlexNet


def load_checkpoint(path: Path | str, map_location="cpu", mmap: bool = False) -> dict:
    """mmap: map the tensors instead of reading them (to look at the header fields cheaply).
    A file the weights-only load refuses is refused here too, with the reason in our own words: torch's
    message for it advises weights_only=False, which would run whatever code the file carries."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 164" from a foreign file: the error says it
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except OSError as e:
        raise UserError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - foreign bytes fail the weights-only unpickler in many ways
        # (UnpicklingError, KeyError, IndexError, struct.error, zip errors ...); none may run code
        with path.open("rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
        refused, found = False, None  # found: the first name the pickle imports besides tensor machinery
        with contextlib.suppress(Exception), zipfile.ZipFile(path) as z:
            refused = isinstance(e, pickle.UnpicklingError) and z.testzip() is None  # torch skips the checksums
            pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
            tensors_and_containers = {"torch", "torch._utils", "collections", "_codecs"}
            found = next(arg.replace(" ", ".").replace("__builtin__.", "builtins.")  # parsed, not unpickled
                         for op, arg, _ in pickletools.genops(pkl)
                         if op.name == "GLOBAL" and arg.split(" ")[0] not in tensors_and_containers)
        if refused:
            what = f"a pickled {found}" if found else "pickled objects"
            why = f"holds {what}, not only tensors and plain containers: refused, never unpickled"
        elif zip_start:
            why = "truncated or damaged (a zip archive, as torch.save writes, that does not read back whole)"
        else:
            why = "not a PyTorch checkpoint (torch.save writes a zip archive; this file is not one)"
        raise UserError(f"{path}: {why}") from None
    if not isinstance(ckpt, dict) or not {"model", "classes", "preprocessing"} <= ckpt.keys():
        raise UserError(f"{path}: not an alexnet-tiny checkpoint (expected model, classes and preprocessing)")
    problem = contents_problem(ckpt, values=not mmap)  # mapped: for its header fields, left unread
    if problem:
        raise UserError(f"{path}: not an alexnet-tiny checkpoint ({problem})")
    return ckpt


def contents_problem(ckpt: dict, values: bool = True) -> str | None:
    """What is wrong inside a checkpoint whose top-level keys are right (None when nothing is);
    `values`: also read every weight (non-finite ones)."""
    model, classes = ckpt["model"], ckpt["classes"]
    if not isinstance(model, dict) or not model or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        return "its model entry is not a state_dict of named tensors"
    if not isinstance(classes, dict) or not all(
            isinstance(classes.get(k), list) and all(isinstance(w, str) for w in classes[k]) for k in ("wnids", "names")):
        return "its classes entry is not lists of wnids and names"
    if not classes["wnids"] or len(classes["wnids"]) != len(classes["names"]):
        return "its classes entry has no classes, or wnids and names of other lengths"
    for key, kind in (("preprocessing", dict), ("config", dict), ("best", dict), ("dataset", dict), ("epoch", int)):
        if key in ckpt and not isinstance(ckpt[key], kind):
            return f"its {key} entry is a {type(ckpt[key]).__name__}, expected a {kind.__name__}"
    return shape_problem(model) or (finite_problem(model) if values else None)


MAX_HIDDEN = 16_384  # AlexNet's fully connected width is 4,096; the tests' narrow one 256
FC1_INPUTS = 256 * 6 * 6


def shape_problem(model: dict) -> str | None:
    """Shapes that are not AlexNet's, checked before any layer is built or any weight read (a foreign
    file could ask for terabytes, an expanded tensor costs its file nothing): the fully connected
    layers' widths within bounds (FC1 reading the 9,216 features of the pooled 6 x 6 x 256 map), then
    every tensor the shape of AlexNet's parameter of its name, at that width and head."""
    def shape(name: str) -> tuple | None:
        return tuple(model[name].shape) if name in model else None
    fc1, fc2, head = shape("classifier.1.weight"), shape("classifier.4.weight"), shape("classifier.6.weight")
    if fc1 is not None and (len(fc1) != 2 or fc1[1] != FC1_INPUTS or not 1 <= fc1[0] <= MAX_HIDDEN):
        return f"classifier.1.weight has shape {fc1}, expected (hidden, {FC1_INPUTS}) with hidden 1 to {MAX_HIDDEN}"
    hidden = fc1[0] if fc1 is not None else None
    if head is not None and (len(head) != 2 or not 1 <= head[0] <= MAX_OUTPUTS):
        return f"classifier.6.weight has shape {head}, expected (outputs 1 to {MAX_OUTPUTS}, {hidden})"
    hidden = hidden or (fc2[0] if fc2 and 1 <= fc2[0] <= MAX_HIDDEN else None) or (head[1] if head else None)
    outputs = head[0] if head else (shape("classifier.6.bias") or (1,))[0]
    expected = alexnet_shapes(hidden, outputs if 1 <= outputs <= MAX_OUTPUTS else 1)
    for name, tensor in model.items():
        if name not in expected:
            return f"{name}: AlexNet has no such parameter"
        if tuple(tensor.shape) != expected[name]:
            return f"{name} has shape {tuple(tensor.shape)}, expected {expected[name]}"
    return None


def alexnet_shapes(hidden: int | None, outputs: int) -> dict[str, tuple]:
    """Each parameter's shape in AlexNet of this width and head, from a model on the meta device (no
    memory)."""
    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in AlexNet(num_classes=outputs, hidden=hidden).state_dict().items()}


def finite_problem(model: dict) -> str | None:
    bad = next((name for name, t in model.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    return f"{bad} holds non-finite weights (NaN or infinity): a diverged or damaged run" if bad else None


def checkpoint_outputs(ckpt: dict) -> int:
    """The width of the checkpoint's last layer, as its weights say: one per class, or more (the study's
    code trained a 200-way head on 10 classes)."""
    last = ckpt["model"].get("classifier.6.weight")
    classes = len(ckpt["classes"]["wnids"])
    return last.shape[0] if last is not None and last.ndim == 2 and last.shape[0] >= classes else classes


def model_from_checkpoint(ckpt: dict, device="cpu") -> AlexNet:
    fc1 = ckpt["model"].get("classifier.1.weight")  # its hidden width, as the checkpoint's weights say
    model = AlexNet(num_classes=checkpoint_outputs(ckpt), hidden=fc1.shape[0] if fc1 is not None else None)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit AlexNet ({str(e).splitlines()[0]})") from None
    return model.to(device).eval()
