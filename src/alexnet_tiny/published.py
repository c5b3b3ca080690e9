"""Published results beside ours: the original study's table for trials of the `seed` preset, and
public results of AlexNet-style networks trained from scratch on the full Tiny ImageNet (200 classes).

The authors' results.csv ships as assets/published_seed.json (its source named there): each of their
12 trials' final train, validation and test accuracy after epoch 35. `compare` matches our trials of
the seed preset to its rows by (lr, momentum, gamma) and says how far apart the two are against what
500 test (or validation) images allow: the difference of two accuracies measured on n images each
has a binomial standard error of sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n), about 3.2 points at 50%.

Their rate never moved (config.PRESETS["seed"]), so the two gammas of a (lr, momentum) pair are the
same configuration trained twice: the pair's two results show the run-to-run spread, for them and
(trained from seeds 0 and 1) for us.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .config import is_seed_trial  # noqa: F401 - the report asks published which trials it compares

PUBLISHED = Path(__file__).parent / "assets" / "published_seed.json"
MATCHED = ("lr", "momentum", "gamma")  # how a published row finds our trial
SPLIT_IMAGES = {"train": 4000, "val": 500, "test": 500}  # images per split, in the study and in ours


def load_published() -> dict:
    """The published table: {"source", "measured", "selection", "rows": [{lr, momentum, gamma, minutes,
    train, val, test}]}."""
    table = json.loads(PUBLISHED.read_text())
    table["rows"] = [dict(zip(table["columns"], row)) for row in table["rows"]]
    return table


def difference_error(p1: float, p2: float, n: int) -> float:
    """Standard error of p1 - p2, two accuracies measured on n images each."""
    return math.sqrt(p1 * (1 - p1) / n + p2 * (1 - p2) / n)


def compare(ours: list[dict], table: dict | None = None) -> dict:
    """The published rows with ours beside them. `ours`: one dict per trial of the seed preset,
    {"trial", "config", "epochs_done", "final": {"train", "val", "test"} (values may be None),
    "best": {"epoch", "val", "test"}}. Returns {"rows": one per published row, "pairs": the spread of
    each (lr, momentum) pair, "source", "selection"}."""
    table = table or load_published()
    rows = []
    for pub in table["rows"]:
        mine = next((t for t in ours if all(t["config"].get(k) == pub[k] for k in MATCHED)), None)
        row = {**{k: pub[k] for k in MATCHED}, "published": {s: pub[s] for s in SPLIT_IMAGES},
               "published_minutes": pub["minutes"], "trial": None}
        if mine is not None:
            row.update(trial=mine["trial"], seed=mine["config"].get("seed"), epochs_done=mine["epochs_done"],
                       epochs=mine["config"].get("epochs"), final=mine["final"], best=mine["best"])
            row["difference"] = {}
            for split, n in SPLIT_IMAGES.items():
                value = mine["final"].get(split)
                if value is None:
                    continue
                se = difference_error(value, pub[split], n)
                row["difference"][split] = {"ours_minus_published": value - pub[split], "standard_error": se,
                                            "within_two_se": abs(value - pub[split]) <= 2 * se}
        rows.append(row)
    return {"rows": rows, "pairs": pair_spreads(rows), "source": table["source"], "measured": table["measured"],
            "selection": table["selection"]}


def pair_spreads(rows: list[dict]) -> list[dict]:
    """For each (lr, momentum): the test accuracies of its two trials (the two gammas), published and
    ours, and the gap within each pair."""
    pairs: dict[tuple, list[dict]] = {}
    for r in rows:
        pairs.setdefault((r["lr"], r["momentum"]), []).append(r)
    out = []
    for (lr, momentum), members in pairs.items():
        published = [m["published"]["test"] for m in members]
        ours = [m["final"]["test"] for m in members if m["trial"] and m["final"].get("test") is not None]
        out.append({"lr": lr, "momentum": momentum, "published_test": published,
                    "published_gap": max(published) - min(published) if len(published) > 1 else None,
                    "our_test": ours, "our_gap": max(ours) - min(ours) if len(ours) > 1 else None})
    return out


def format_markdown(comparison: dict) -> str:
    """The comparison as a Markdown table (accuracies in percent)."""
    pct = lambda v: "" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| lr | momentum | gamma | published train / val / test | ours, final: train / val / test (epoch) "
             "| test: ours - published (2 SE) | ours at best val: val / test (epoch) |",
             "|---|---|---|---|---|---|---|"]
    for r in comparison["rows"]:
        pub = " / ".join(pct(r["published"][s]) for s in SPLIT_IMAGES)
        if r["trial"] is None:
            lines.append(f"| {r['lr']} | {r['momentum']} | {r['gamma']} | {pub} | not run | | |")
            continue
        final = " / ".join(pct(r["final"].get(s)) for s in SPLIT_IMAGES) + f" ({r['epochs_done']})"
        d = r["difference"].get("test")
        diff = (f"{100 * d['ours_minus_published']:+.1f} (±{200 * d['standard_error']:.1f})"
                f"{'' if d['within_two_se'] else ' **outside**'}") if d else ""
        best = f"{pct(r['best'].get('val'))} / {pct(r['best'].get('test'))} ({r['best'].get('epoch')})"
        lines.append(f"| {r['lr']} | {r['momentum']} | {r['gamma']} | {pub} | {final} | {diff} | {best} |")
    return "\n".join(lines) + "\n"


# Public results of AlexNet-style networks trained from scratch on the full Tiny ImageNet (200 classes),
# set beside a 200-class run's best checkpoint. Protocols differ (epochs, input size, augmentation,
# evaluation split; the challenge's test labels were never public), so they are a range, not a target.
TINY_IMAGENET_200 = [
    {"source": "L. Yao and J. Miller, Tiny ImageNet Classification with Convolutional Neural Networks "
               "(Stanford CS231n project report, 2015)",
     "model": "best single model: 5 conv, 3 max-pool, 3 fully connected layers, dropout and weight decay",
     "split": "challenge test set (10,000 images)", "top1": 0.418},
    {"source": "L. Hansen, Tiny ImageNet Challenge Submission (Stanford CS231n project report)",
     "model": "AlexNet with parametric ReLUs", "split": "validation set (preliminary)", "top1": 0.45},
    {"source": "Training AlexNet from Scratch (aandyw.github.io/blog/2024/alexnet, 2024)",
     "model": "AlexNet with LRN, SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 128, about 30 epochs",
     "split": "test split", "top1": 0.3175},
]
TINY_IMAGENET_CLASSES = 200


def tiny_imagenet_200(classes: int, official_val: float | None, test: float | None) -> dict | None:
    """A 200-class run's accuracies beside TINY_IMAGENET_200 (None at other class counts)."""
    if classes != TINY_IMAGENET_CLASSES:
        return None
    tops = [r["top1"] for r in TINY_IMAGENET_200]
    return {"rows": TINY_IMAGENET_200, "range": (min(tops), max(tops)),
            "ours": {"official_val": official_val, "test": test}}
