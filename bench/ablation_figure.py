"""Test accuracy against minutes for the rows of an ablation table (RESULTS.md), as one figure.

    python bench/ablation_figure.py bench/quick_ablation.json docs/quick_ablation.png

The JSON is a list of rows: {"row": label, "minutes": wall minutes, "test": [accuracies, one per seed],
"kept": true or false}. Each row is a point at its mean test accuracy with its standard deviation
over seeds as an error bar (none for a single seed, which the label then says), in table order, joined
by a line; rows that did not pay are drawn hollow.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source: str, out: str, target: float = 0.546) -> None:
    rows = json.loads(Path(source).read_text())
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    xs = [r["minutes"] for r in rows]
    means = [statistics.mean(r["test"]) for r in rows]
    ax.plot(xs, means, color="0.75", zorder=1)
    for i, (r, x, m) in enumerate(zip(rows, xs, means)):
        sd = statistics.stdev(r["test"]) if len(r["test"]) > 1 else 0.0
        face = "C0" if r.get("kept", True) else "white"
        ax.errorbar([x], [m], yerr=[sd], fmt="o", color="C0", mfc=face, capsize=3, zorder=2)
        seeds = f"{len(r['test'])} seeds" if len(r["test"]) > 1 else "1 seed"
        ax.annotate(f"{i + 1}. {r['row']} ({seeds})", (x, m), textcoords="offset points", xytext=(6, -4), fontsize=8)
    ax.axhline(target, color="C3", ls="--", lw=1)
    ax.text(min(xs), target, " the study's published best (54.6%)", color="C3", va="bottom", fontsize=8)
    ax.set_xlabel("minutes, wall (the main job)")
    ax.set_ylabel("test accuracy of the best trial")
    ax.set_title("The quick preset's ablation: each row adds one change to the previous")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    print(f"ablation_figure: {len(rows)} rows -> {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/ablation_figure.py ROWS.json OUT.png")
    main(sys.argv[1], sys.argv[2])
