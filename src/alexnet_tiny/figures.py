"""The report's figures: matplotlib (Agg) functions that take plain data and write one PNG each.

Every figure has a title, labelled axes and class names, sized to be legible at 100 % zoom.
"""
from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from .files import atomic_path  # noqa: E402

DPI = 110
BEST_COLOUR = "#d62728"
RIGHT, WRONG = "#1a7f37", "#cf222e"


def plain_text(draw):
    """Draw with every text as it is: a `$` in a class or trial name is a dollar sign, not the start of
    matplotlib's mathtext (which fails on what it cannot parse). Only while the figure is drawn: a
    notebook's own plots keep their setting."""
    @functools.wraps(draw)
    def drawn(*args, **kwargs):
        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return drawn


def _save(fig, path: Path) -> Path:
    """Write the figure as a PNG, atomically (temporary file, then rename), and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    finally:
        plt.close(fig)
    return path


@plain_text
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


@plain_text
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


MANY_CLASSES = 30  # above this, figures show the extremes and the structure, not every class by name
SHOWN = 15  # classes named at each end of a many-class per-class chart; pairs listed beside its confusion


def shown_classes(accuracies: list[float]) -> list[int]:
    """Class indices ordered by accuracy, ascending: all of them, or for many classes the SHOWN worst
    and the SHOWN best."""
    order = [int(i) for i in np.argsort(accuracies, kind="stable")]
    return order if len(order) <= MANY_CLASSES else order[:SHOWN] + order[-SHOWN:]


@plain_text
def per_class_accuracy(names: list[str], accuracies: list[float], counts: list[int], overall: float,
                       title: str, path: Path) -> Path:
    """Horizontal bars, best class on top, with the value and the number of test images; for many
    classes the SHOWN worst and SHOWN best, a dotted line between them."""
    order = shown_classes(accuracies)  # ascending: barh draws bottom-up, so best ends on top
    many = len(order) < len(names)
    if many:
        title += f"\nthe {SHOWN} worst and {SHOWN} best of {len(names)} classes"
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.42 * len(order)))
    ys = np.arange(len(order))
    values = [accuracies[i] for i in order]
    ax.barh(ys, values, color=plt.get_cmap("RdYlGn")(np.clip(values, 0, 1) * 0.8 + 0.1), edgecolor="#444")
    ax.set_yticks(ys, [names[i] for i in order], fontsize=10)
    for y, i in zip(ys, order):
        ax.text(min(accuracies[i], 1) + 0.01, y, f"{accuracies[i]:.0%}  ({counts[i]} images)", va="center", fontsize=9,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.85}, zorder=3)
    if many:
        ax.axhline(SHOWN - 0.5, color="#666", linestyle=":", linewidth=1.5)
    ax.axvline(overall, color="#333", linestyle="--", linewidth=1.2)
    ax.text(overall + 0.01, len(order) - 0.45, f"overall {overall:.1%}", ha="left", va="bottom", fontsize=9)
    ax.set_xlim(0, 1.25)
    ax.set_ylim(-0.6, len(order) - 0.4 + 0.5)
    ax.set_xticks(np.linspace(0, 1, 6), [f"{v:.0%}" for v in np.linspace(0, 1, 6)])
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("class")
    ax.set_title(title, fontsize=12, fontweight="bold")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def most_confused(confusion: np.ndarray, n: int = SHOWN) -> list[tuple[int, int, int]]:
    """The n largest off-diagonal counts as (true, predicted, count), largest first (ties: row order)."""
    confusion = np.asarray(confusion)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:n]
    return [(int(t), int(p), int(off[t, p])) for t, p in zip(*np.unravel_index(flat, off.shape)) if off[t, p]]


@plain_text
def confusion_matrix(confusion: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    """Counts annotated in each cell, coloured by the fraction of the true class (row). For many
    classes: the matrix as a picture of its structure (no counts, no names), beside the most
    confused pairs by name."""
    confusion = np.asarray(confusion)
    k = len(names)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    if k > MANY_CLASSES:
        return _many_class_confusion(confusion, rates, names, title, path)
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


def _many_class_confusion(confusion: np.ndarray, rates: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    fig, (ax, side) = plt.subplots(1, 2, figsize=(17, 9), gridspec_kw={"width_ratios": [1.1, 1]})
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel(f"predicted class (index, 0-{len(names) - 1})")
    ax.set_ylabel("true class (index)")
    ax.set_title(title, fontsize=12, fontweight="bold")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    side.axis("off")
    pairs = most_confused(confusion)
    lines = [f"{count:>4}  {textwrap.shorten(names[t], 28)} -> {textwrap.shorten(names[p], 28)}"
             for t, p, count in pairs]
    side.set_title(f"the {len(pairs)} most confused pairs (true -> predicted)", fontsize=11, loc="left")
    side.text(0, 1, "\n".join(lines) or "no test image was confused", va="top", ha="left", family="monospace",
              fontsize=10, transform=side.transAxes)
    return _save(fig, path)


def _image_grid(n: int, columns: int, width: float, height: float):
    """A figure of n cells in rows of `columns` (fewer for small n), every axis off until drawn on."""
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


@plain_text
def sample_predictions(images: np.ndarray, predicted: list[str], true: list[str], rights: list[bool], title: str,
                       path: Path, columns: int = 6) -> Path:
    """uint8 (N, 3, H, W) images in a grid, each captioned "predicted / true", green when right,
    red when wrong (`rights`, decided by class index: two classes may share a name). The 64 x 64
    images are drawn about 3x larger (bicubic) so they are legible."""
    n = len(images)
    fig, axes = _image_grid(n, columns, 2.25, 2.6)
    for ax, image, p, t, right in zip(axes.flat, images, predicted, true, rights):
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
    correct = sum(rights)
    fig.suptitle(f"{title}: {correct}/{n} right  (caption: predicted / true; green right, red wrong)",
                 fontsize=12, fontweight="bold")
    fig.tight_layout()
    return _save(fig, path)


@plain_text
def accuracy_vs_minutes(groups: list[dict], title: str, path: Path) -> Path:
    """One point per configuration (results.seed_groups): mean test accuracy against mean minutes, with
    bars of one standard deviation across its seeds both ways, each seed as a small dot; the legend
    names each configuration's colour with its mean and seed count (labels beside clustered points
    would overlap)."""
    fig, ax = plt.subplots(figsize=(10, 6.5))
    colours = plt.get_cmap("tab10")
    for i, g in enumerate(groups):
        colour = colours(i % colours.N)
        x, y, n = g["minutes"]["mean"], g["test_accuracy_at_best"]["mean"], len(g["runs"])
        ax.errorbar(x, y, xerr=g["minutes"]["sd"] or 0, yerr=g["test_accuracy_at_best"]["sd"] or 0, fmt="o",
                    markersize=9, color=colour, capsize=4, linewidth=1.5, zorder=3,
                    label=f"{textwrap.fill(g['label'], 44)}: {y:.1%}, {n} seed{'s' if n > 1 else ''}, {x:.1f} min")
        ax.scatter([r["minutes"] for r in g["runs"]], [r["test_accuracy_at_best"] for r in g["runs"]], s=14,
                   color=colour, alpha=0.5, zorder=2)
    ax.legend(loc="lower right", fontsize=8.5, framealpha=0.9)
    ax.set_xlabel("minutes per run (training and evaluation, mean over seeds)")
    ax.set_ylabel("test accuracy at the best validation epoch")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ys = [g["test_accuracy_at_best"]["mean"] for g in groups] or [0.5]
    right = max((g["minutes"]["mean"] + (g["minutes"]["sd"] or 0) for g in groups), default=1)
    ax.set_xlim(0, right * 1.05)
    ax.set_ylim(max(0, min(ys) - 0.08 - 0.02 * len(groups)), min(1, max(ys) + 0.04))  # room for the legend
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=12, fontweight="bold")
    return _save(fig, path)


def _kernel_mosaic(kernels: np.ndarray, columns: int = 8, gap: int = 1) -> np.ndarray:
    """(n, k, k, 3) kernels tiled in a grid with white gaps, as one RGB image."""
    n, k = len(kernels), kernels.shape[1]
    rows = -(-n // columns)
    mosaic = np.ones((rows * (k + gap) - gap, columns * (k + gap) - gap, 3))
    for i, kernel in enumerate(kernels):
        r, c = divmod(i, columns)
        mosaic[r * (k + gap):r * (k + gap) + k, c * (k + gap):c * (k + gap) + k] = kernel
    return mosaic


@plain_text
def conv1_kernels(panels: list[tuple[str, np.ndarray]], title: str, path: Path) -> Path:
    """One panel per (caption, (64, 11, 11, 3) kernels in [0, 1]): the kernels in an 8 x 8 grid,
    drawn with square pixels (the AlexNet paper's figure 3)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 5.4), squeeze=False)
    for ax, (caption, kernels) in zip(axes.flat, panels):
        ax.imshow(_kernel_mosaic(kernels), interpolation="nearest")
        ax.set_title(textwrap.fill(caption, 44), fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, path)


@plain_text
def top5_bars(images: np.ndarray, rows: list[dict], title: str, path: Path, columns: int = 2) -> Path:
    """Each uint8 (3, H, W) image beside horizontal bars of its top-k classes (rows: {"true": name,
    "true_index": its class, "classes": [names], "indices": [classes], "probabilities": [p]}), the true
    class's bar green and a wrong first guess red (the AlexNet paper's figure 4, left)."""
    n = len(images)
    grid_rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(grid_rows, 2 * columns, figsize=(6.2 * columns, 2.3 * grid_rows + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.9] * columns})
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, row) in enumerate(zip(images, rows)):
        r, c = divmod(i, columns)
        image_ax, bar_ax = axes[r, 2 * c], axes[r, 2 * c + 1]
        right = row["indices"][0] == row["true_index"]
        image_ax.imshow(np.asarray(image).transpose(1, 2, 0), interpolation="bicubic")
        image_ax.set_title(textwrap.fill(f"true: {row['true']}", 24), fontsize=9, color=RIGHT if right else WRONG,
                           fontweight="bold")
        bar_ax.axis("on")
        ys = np.arange(len(row["classes"]))[::-1]
        colours = [RIGHT if index == row["true_index"] else (WRONG if k == 0 else "#8c959f")
                   for k, index in enumerate(row["indices"])]
        bar_ax.barh(ys, row["probabilities"], color=colours)
        bar_ax.set_yticks(ys, [textwrap.shorten(name, 26) for name in row["classes"]], fontsize=8)
        bar_ax.set_xlim(0, 1)
        bar_ax.tick_params(axis="x", labelsize=7)
        for y, p in zip(ys, row["probabilities"]):
            bar_ax.text(min(p + 0.02, 0.8), y, f"{p:.0%}", va="center", fontsize=7)
        if row["true_index"] not in row["indices"]:
            bar_ax.set_title("true class not in the top 5", fontsize=8, color=WRONG)
    fig.suptitle(f"{title} (bars: top-5 probabilities; green: the true class, red: a wrong first guess)",
                 fontsize=11, fontweight="bold")
    fig.tight_layout()
    return _save(fig, path)


def _bordered(ax, image: np.ndarray, colour: str) -> None:
    ax.imshow(np.asarray(image).transpose(1, 2, 0), interpolation="bicubic")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_color(colour)
        side.set_linewidth(3)


@plain_text
def nearest_neighbours(queries: np.ndarray, query_names: list[str], neighbours: list[np.ndarray],
                       neighbour_names: list[list[str]], distances: list[list[float]], same_class: list[list[bool]],
                       title: str, path: Path) -> Path:
    """One row per test image: the image, then its nearest training images in feature space, each
    captioned with its class and distance, green when its class is the test image's (`same_class`,
    by class index), red when not (the AlexNet paper's figure 4, right)."""
    k = max((len(n) for n in neighbours), default=1)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.75 * (k + 1), 2.0 * len(queries) + 0.6), squeeze=False)
    for r, (query, name) in enumerate(zip(queries, query_names)):
        _bordered(axes[r, 0], query, "#1f2328")
        axes[r, 0].set_title(textwrap.fill(f"test: {name}", 20), fontsize=8, fontweight="bold")
        for c in range(k):
            ax = axes[r, c + 1]
            if c >= len(neighbours[r]):
                ax.axis("off")
                continue
            same = same_class[r][c]
            _bordered(ax, neighbours[r][c], RIGHT if same else WRONG)
            ax.set_title(textwrap.fill(f"{neighbour_names[r][c]} ({distances[r][c]:.0f})", 20), fontsize=7,
                         color=RIGHT if same else WRONG)
    fig.suptitle(f"{title} (green: same class as the test image, red: another; Euclidean distance in brackets)",
                 fontsize=11, fontweight="bold")
    fig.tight_layout()
    return _save(fig, path)


@plain_text
def class_activation_maps(images: np.ndarray, cams: np.ndarray, captions: list[str], correct: list[bool | None],
                          title: str, path: Path, columns: int = 4) -> Path:
    """Each uint8 (3, H, W) image under its (H, W) map in [0, 1], with its caption, framed green when
    `correct` is True, red when False and dark when unknown (a user's photo)."""
    fig, axes = _image_grid(len(images), columns, 2.6, 2.9)
    for ax, image, cam, caption, ok in zip(axes.flat, images, cams, captions, correct):
        h, w = np.asarray(image).shape[1:]
        colour = "#1f2328" if ok is None else RIGHT if ok else WRONG
        ax.axis("on")
        _bordered(ax, image, colour)
        ax.imshow(cam, cmap="jet", alpha=0.45, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear",
                  vmin=0, vmax=1)
        ax.set_title(textwrap.fill(caption, 26), fontsize=8, color=colour, fontweight="bold")
    fig.suptitle(title, fontsize=11, fontweight="bold")
    fig.tight_layout()
    return _save(fig, path)


@plain_text
def grid_heatmap(panels: list[dict], xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """One heatmap per panel ({"title", "x": values, "y": values, "values": rows of y x x, None for
    no finished trial}), each cell annotated; a shared colour scale."""
    cells = [v for p in panels for row in p["values"] for v in row if v is not None]
    low, high = (min(cells), max(cells)) if cells else (0, 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + 1.15 * len(panels[0]["x"]) * len(panels) + 1.2,
                                                      1.6 + 0.75 * len(panels[0]["y"])), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        data = np.array([[np.nan if v is None else v for v in row] for row in panel["values"]], dtype=float)
        im = ax.imshow(data, cmap="viridis", vmin=low, vmax=high if high > low else low + 1e-9, aspect="auto")
        for (r, c), v in np.ndenumerate(data):
            ax.text(c, r, "–" if np.isnan(v) else f"{v:.1%}", ha="center", va="center", fontsize=9,
                    color="white" if not np.isnan(v) and v < (low + high) / 2 else "black")
        ax.set_xticks(range(len(panel["x"])), [str(x) for x in panel["x"]])
        ax.set_yticks(range(len(panel["y"])), [str(y) for y in panel["y"]])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel["title"], fontsize=10)
    fig.colorbar(im, ax=list(axes.flat), fraction=0.03, pad=0.02, label="best validation accuracy")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    return _save(fig, path)


VAL_COLOUR, TEST_COLOUR, PUBLISHED_COLOUR = "#1f77b4", "#ff7f0e", "#7f7f7f"


def _value_axis(ax, values: list) -> list:
    """x positions for a hyperparameter's values: evenly spaced and labelled (values such as
    learning rates span decades, strings have no scale)."""
    ax.set_xticks(range(len(values)), [f"{v:g}" if isinstance(v, float) else str(v) for v in values])
    return list(range(len(values)))


@plain_text
def effects(found: list[dict], published: dict[str, list[tuple]], interaction: dict | None, steps: dict | None,
            published_steps: list[tuple[float, float]], title: str, path: Path) -> Path:
    """One panel per hyperparameter that varies (findings.effects): mean validation and test accuracy
    at each value, bars from the lowest to the highest trial, with the published study's test means
    where given ({name: [(value, mean)]}); then the two largest effects' interaction, and accuracy
    against lr / (1 - momentum) with the published points."""
    panels = found[:4] + ([interaction] if interaction else []) + ([steps] if steps else [])
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, e in zip(axes.flat, found[:4]):
        if e.get("continuous"):  # drawn values (random search): one point per value on the value's own scale
            xs = [b["value"] for b in e["values"]]
            if min(xs) > 0 and max(xs) / min(xs) >= 20:
                ax.set_xscale("log")
        else:
            xs = _value_axis(ax, [b["value"] for b in e["values"]])
        for split, colour, shift in (("val", VAL_COLOUR, -0.06), ("test", TEST_COLOUR, 0.06)):
            shift = 0 if e.get("continuous") else shift
            stats = [b.get(split) for b in e["values"]]
            if any(s is None for s in stats):
                continue
            means = [s["mean"] for s in stats]
            low = [m - s["min"] for m, s in zip(means, stats)]
            high = [s["max"] - m for m, s in zip(means, stats)]
            ax.errorbar([x + shift for x in xs], means, yerr=[low, high], fmt="o" if e.get("continuous") else "o-",
                        color=colour, capsize=4, label=f"{split} (mean, trials' range)")
        if published.get(e["hyperparameter"]):
            pub = dict(published[e["hyperparameter"]])
            ax.plot(xs, [pub.get(b["value"], np.nan) for b in e["values"]], "s--", color=PUBLISHED_COLOUR,
                    label="published test (mean)")
        note = {"inert": "inert", "none": "no effect", "within noise": "within noise"}.get(e["verdict"], "")
        star = "*" if e.get("with_stopped") else ""  # measured with trials stopped early (findings.find)
        trend = f", rho {e['rho']:.2f}" if e.get("rho") is not None else ""
        ax.set_title(f"{e['hyperparameter']}{star}: {100 * e['size']:.1f} points{trend}" + (f" ({note})" if note else ""),
                     fontsize=11)
        ax.set_xlabel(e["hyperparameter"])
    if interaction:
        ax = axes.flat[len(found[:4])]
        xs = _value_axis(ax, interaction["xs"])
        for i, line in enumerate(interaction["lines"]):
            ax.plot(xs, [np.nan if v is None else v for v in line["val"]], "o-", color=plt.get_cmap("tab10")(i),
                    label=f"{interaction['line']} = {line['value']:g}" if isinstance(line["value"], float)
                    else f"{interaction['line']} = {line['value']}")
        ax.set_title(f"interaction: {interaction['x']} x {interaction['line']} (val)", fontsize=11)
        ax.set_xlabel(interaction["x"])
    if steps:
        ax = axes.flat[len(panels) - 1]
        ax.scatter([p["step"] for p in steps["points"]], [p["val"] for p in steps["points"]], color=VAL_COLOUR,
                   label="val (each trial)", zorder=3)
        tests = [(p["step"], p["test"]) for p in steps["points"] if p["test"] is not None]
        if tests:
            ax.scatter(*zip(*tests), color=TEST_COLOUR, marker="x", label="test (each trial)", zorder=3)
        if published_steps:
            ax.scatter(*zip(*published_steps), color=PUBLISHED_COLOUR, marker="s", facecolors="none",
                       label="published test")
        ax.set_xscale("log")
        ax.set_title("accuracy against lr / (1 - momentum)", fontsize=11)
        ax.set_xlabel("lr / (1 - momentum)")
    for ax in axes.flat[:len(panels)]:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout()
    return _save(fig, path)
