"""Evaluate a saved checkpoint on one split of a prepared dataset."""
from __future__ import annotations

from pathlib import Path

from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import DEFAULT_DATA_DIR, ensure_dataset
from .errors import UserError
from .train import evaluate, resolve_device


def checkpoint_dataset(ckpt_path: Path, data=None):
    """The dataset a checkpoint's run recorded (config.json beside it), or `data`, or the default."""
    if data is None:
        from .runlog import read_config
        rec = read_config(Path(ckpt_path).parent)
        data = rec["dataset"]["root"] if rec and Path(rec["dataset"]["root"]).exists() else DEFAULT_DATA_DIR
    return data


def evaluate_checkpoint(path, data=None, split: str = "test", device: str = "auto", progress: bool = True) -> dict:
    dev = resolve_device(device)
    ckpt = load_checkpoint(path)
    dataset = ensure_dataset(checkpoint_dataset(path, data), progress=progress)
    if dataset.wnids != ckpt["classes"]["wnids"]:
        raise UserError(f"{dataset.root}: its classes differ from those the checkpoint {path} was trained on")
    if len(dataset.splits[split]) == 0:
        raise UserError(f"{dataset.root}: its {split} split has no images to evaluate")
    model = model_from_checkpoint(ckpt, dev)
    ev = evaluate(model, dataset.splits[split], ckpt["preprocessing"]["image_size"], dev, dataset.num_classes)
    per_class = [{"wnid": w, "name": n, "accuracy": a, "images": int(c)} for w, n, a, c in
                 zip(dataset.wnids, dataset.names, ev.per_class_accuracy, ev.confusion.sum(1).tolist())]
    return {"checkpoint": str(path), "split": split, "epoch": ckpt.get("epoch"), "images": len(dataset.splits[split]),
            "loss": ev.loss, "accuracy": ev.accuracy, "per_class": per_class,
            "confusion": ev.confusion.tolist()}


def format_table(result: dict) -> str:
    width = max(len(r["name"]) for r in result["per_class"])
    lines = [f"{'class':<{width}}  {'wnid':<9}  accuracy  images"]
    for r in result["per_class"]:
        lines.append(f"{r['name']:<{width}}  {r['wnid']:<9}  {r['accuracy']:8.3f}  {r['images']:6d}")
    lines.append(f"{'all':<{width}}  {'':<9}  {result['accuracy']:8.3f}  {result['images']:6d}")
    return "\n".join(lines)
