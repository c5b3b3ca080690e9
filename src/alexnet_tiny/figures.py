"""The report's figures: matplotlib (Agg) functions that take plain data and write one PNG each.

Every figure has a title, labelled axes and class names, sized to be legible at 100 % zoom.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 110
BEST_COLOUR = "#d62728"
RIGHT, WRONG = "#1a7f37", "#cf222e"


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


def results_table(header: list[str], cells: list[list[str]], best: int | None, title: str, subtitle: str,
                  path: Path) -> Path:
    """The results table as an image; row `best` is shaded and bold."""
    width = max(6.0, 0.9 * sum(max(len(str(c)) for c in col) for col in zip(header, *cells)) / 7)
    fig, ax = plt.subplots(figsize=(width, 0.35 * (len(cells) + 1)))
    ax.axis("off")
    ax.set_title(title + ("\n" if subtitle else ""), fontsize=12, fontweight="bold", loc="left", pad=12 + 14 * subtitle.count("\n"))
    if subtitle:
        ax.text(0, 1.02, subtitle, transform=ax.transAxes, fontsize=10, va="bottom", color="#333")
    if not cells:
        ax.text(0.5, 0.5, "no trials", ha="center", va="center", fontsize=12)
        return _save(fig, path)
    table = ax.table(cellText=cells, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    table.auto_set_column_width(list(range(len(header))))
    table.scale(1, 1.4)
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_facecolor("#e8ecf1")
            cell.set_text_props(fontweight="bold")
        elif best is not None and row == best + 1:
            cell.set_facecolor("#fff1c2")
            cell.set_text_props(fontweight="bold")
    return _save(fig, path)


def learning_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], best: str | None, path: Path,
                    stopped: dict[str, int] | None = None) -> Path:
    """2 x 2 panels (train/val x loss/accuracy) per epoch; `curves` maps a trial label to
    {"train_loss": [(epoch, value)], "val_loss": ..., "train_accuracy": ..., "val_accuracy": ...}.
    `stopped` maps the labels of trials stopped early to their last epoch: their curves end in a
    cross there and their legend entry says so."""
    stopped = stopped or {}
    panels = [("train_loss", "Training loss", "cross-entropy loss"),
              ("val_loss", "Validation loss", "cross-entropy loss"),
              ("train_accuracy", "Training accuracy", "accuracy"),
              ("val_accuracy", "Validation accuracy", "accuracy")]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True, sharey="row")
    colours = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    # the best trial last, so it is drawn on top
    order = sorted(curves, key=lambda label: label == best)
    last_epoch = max((e for c in curves.values() for series in c.values() for e, _ in series), default=1)
    for ax, (key, title, ylabel) in zip(axes.flat, panels):
        for i, label in enumerate(order):
            points = curves[label].get(key, [])
            if not points:
                continue
            epochs, values = zip(*points)
            is_best = label == best
            text = ("best: " + label) if is_best else label
            if label in stopped:
                text += f" (stopped at epoch {stopped[label]})"
            colour = BEST_COLOUR if is_best else colours(i % colours.N)
            ax.plot(epochs, values, label=textwrap.fill(text, 60), color=colour, linewidth=3 if is_best else 1.3,
                    alpha=1 if is_best else 0.7, marker="o" if len(points) <= 15 else None,
                    markersize=5 if is_best else 3, zorder=3 if is_best else 2)
            if label in stopped:
                ax.plot(epochs[-1], values[-1], marker="X", markersize=11, color=colour, markeredgecolor="black",
                        linestyle="none", zorder=4)
        ax.set_title(title, fontsize=12)
        if key.startswith("train"):
            ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if key.endswith("accuracy"):
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0.5, last_epoch + 0.5)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        ncol = 1 if len(labels) <= 3 else 2 if len(labels) <= 8 else 3
        fig.legend(handles[::-1], labels[::-1], loc="lower center", ncol=ncol, fontsize=9, frameon=False,
                   bbox_to_anchor=(0.5, -0.01))
        rows = -(-len(labels) // ncol)
        fig.subplots_adjust(bottom=0.08 + 0.03 * rows)
    else:
        fig.text(0.5, 0.5, "no scalars found in any trial", ha="center", fontsize=14)
    title = "Learning curves (every trial; best by validation accuracy in red"
    title += "; X: stopped early by the scheduler)" if stopped else ")"
    fig.suptitle(title, fontsize=14, fontweight="bold")
    return _save(fig, path)


def per_class_accuracy(names: list[str], accuracies: list[float], counts: list[int], overall: float,
                       title: str, path: Path) -> Path:
    """Horizontal bars, best class on top, with the value and the number of test images."""
    order = np.argsort(accuracies, kind="stable")  # ascending: barh draws bottom-up, so best ends on top
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.42 * len(names)))
    ys = np.arange(len(names))
    values = [accuracies[i] for i in order]
    ax.barh(ys, values, color=plt.get_cmap("RdYlGn")(np.clip(values, 0, 1) * 0.8 + 0.1), edgecolor="#444")
    ax.set_yticks(ys, [names[i] for i in order], fontsize=10)
    for y, i in zip(ys, order):
        ax.text(min(accuracies[i], 1) + 0.01, y, f"{accuracies[i]:.0%}  ({counts[i]} images)", va="center", fontsize=9,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.85}, zorder=3)
    ax.axvline(overall, color="#333", linestyle="--", linewidth=1.2)
    ax.text(overall + 0.01, len(names) - 0.45, f"overall {overall:.1%}", ha="left", va="bottom", fontsize=9)
    ax.set_xlim(0, 1.25)
    ax.set_ylim(-0.6, len(names) - 0.4 + 0.5)
    ax.set_xticks(np.linspace(0, 1, 6), [f"{v:.0%}" for v in np.linspace(0, 1, 6)])
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("class")
    ax.set_title(title, fontsize=12, fontweight="bold")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def confusion_matrix(confusion: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    """Counts annotated in each cell, coloured by the fraction of the true class (row)."""
    confusion = np.asarray(confusion)
    k = len(names)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = max(5.5, 0.62 * k + 3)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for t in range(k):
        for p in range(k):
            if confusion[t, p]:
                ax.text(p, t, str(int(confusion[t, p])), ha="center", va="center", fontsize=9,
                        color="white" if rates[t, p] > 0.55 else "#222")
    ax.set_xticks(range(k), names, rotation=40, ha="right", fontsize=9)
    ax.set_yticks(range(k), names, fontsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=12, fontweight="bold")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    return _save(fig, path)


def sample_predictions(images: np.ndarray, predicted: list[str], true: list[str], title: str, path: Path,
                       columns: int = 6) -> Path:
    """uint8 (N, 3, H, W) images in a grid, each captioned "predicted / true", green when right,
    red when wrong. The 64 x 64 images are drawn about 3x larger (bicubic) so they are legible."""
    n = len(images)
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.25 * columns, 2.6 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, p, t in zip(axes.flat, images, predicted, true):
        right = p == t
        ax.imshow(np.asarray(image).transpose(1, 2, 0), interpolation="bicubic")
        caption = f"{p} / {t}" if len(p) + len(t) <= 24 else f"{p}\n/ {t}"
        ax.set_title(caption, fontsize=9, color=RIGHT if right else WRONG, fontweight="bold")
        for side in ax.spines.values():
            side.set_visible(True)
            side.set_color(RIGHT if right else WRONG)
            side.set_linewidth(3)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
    correct = sum(p == t for p, t in zip(predicted, true))
    fig.suptitle(f"{title}: {correct}/{n} right  (caption: predicted / true; green right, red wrong)",
                 fontsize=12, fontweight="bold")
    fig.tight_layout()
    return _save(fig, path)
