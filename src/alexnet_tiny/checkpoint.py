"""Checkpoints: plain dicts of tensors and primitives, loaded with weights_only=True.

    {"model", "optimizer", "lr_scheduler", "epoch", "config", "best", "classes", "preprocessing",
     "elapsed_seconds"}   (best.pt leaves out the optimizer and scheduler)
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .errors import UserError
from .model import AlexNet


def load_checkpoint(path: Path | str, map_location="cpu", mmap: bool = False) -> dict:
    """mmap: map the tensors instead of reading them (to look at the header fields cheaply)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 164" from a foreign file: the error says it
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - foreign bytes fail the weights-only unpickler in many ways
        # (UnpicklingError, KeyError, IndexError, struct.error, zip errors ...); none may run code
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise UserError(f"{path}: not a readable alexnet-tiny checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or not {"model", "classes", "preprocessing"} <= ckpt.keys():
        raise UserError(f"{path}: not an alexnet-tiny checkpoint (expected model, classes and preprocessing)")
    return ckpt


def model_from_checkpoint(ckpt: dict, device="cpu") -> AlexNet:
    model = AlexNet(num_classes=len(ckpt["classes"]["wnids"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit AlexNet ({str(e).splitlines()[0]})") from None
    return model.to(device).eval()
