"""Figures for evaluations and reports, rendered off-screen (matplotlib Agg) to PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def confusion_png(
    counts: Sequence[Sequence[int]],
    shares: Sequence[Sequence[float]],
    class_names: Sequence[str],
    title: str,
) -> bytes:
    """Heatmap coloured by `shares` (each count's share of its true class), each cell labelled with
    its count and share."""
    counts, shares = np.asarray(counts), np.asarray(shares)
    figure, axes = plt.subplots(figsize=(7, 6))
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for row in range(len(class_names)):
        for col in range(len(class_names)):
            colour = "white" if shares[row, col] > 0.5 else "black"
            text = f"{counts[row, col]}\n{shares[row, col]:.0%}"
            axes.text(col, row, text, ha="center", va="center", fontsize=7, color=colour)
    return _png(figure)


def training_curves_png(history: pd.DataFrame) -> bytes:
    """Loss, accuracy and learning rate per epoch, training next to validation."""
    panels = [("loss", "loss"), ("accuracy", "accuracy"), ("learning_rate", "learning rate")]
    figure, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    epochs = history["epoch"]
    for ax, (column, label) in zip(axes, panels, strict=True):
        if column in history:
            ax.plot(epochs, history[column], marker=".", label="train")
        if f"val_{column}" in history:
            ax.plot(epochs, history[f"val_{column}"], marker=".", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if ax.has_data() and column != "learning_rate":
            ax.legend()
    return _png(figure)


def mistakes_grid_png(faces: np.ndarray, captions: Sequence[str], columns: int = 6) -> bytes:
    """Grayscale faces in a grid, each captioned (true, predicted, probability)."""
    rows = max(1, -(-len(faces) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.2), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(faces):
            ax.imshow(faces[index], cmap="gray", vmin=0, vmax=255)
            ax.set_title(captions[index], fontsize=8)
    return _png(figure)


def reliability_png(reliability: Sequence[dict], ece: float, title: str) -> bytes:
    """Guo et al.'s reliability diagram: each confidence bin's accuracy against the diagonal a calibrated
    model would follow, over a histogram of how many images fall in each bin."""
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    lower = np.array([row["lower"] for row in reliability])
    width = reliability[0]["upper"] - reliability[0]["lower"]
    filled = [row["count"] > 0 for row in reliability]
    accuracy = np.array([row["accuracy"] if row["count"] else 0.0 for row in reliability])
    confidence = np.array([row["confidence"] if row["count"] else 0.0 for row in reliability])
    top.bar(lower, accuracy, width, align="edge", color="tab:blue", edgecolor="black", label="accuracy")
    gap = np.where(filled, confidence - accuracy, 0.0)
    top.bar(
        lower, gap, width, bottom=accuracy, align="edge", color="tab:red", alpha=0.3, hatch="//", label="gap"
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title}\nECE {ece:.4f} ({len(reliability)} bins)")
    top.legend(loc="upper left")
    bottom.bar(lower, [row["count"] for row in reliability], width, align="edge", color="gray")
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("images")
    return _png(figure)


def image_rows_png(
    rows: Sequence[tuple[str, Sequence[tuple[np.ndarray | None, str]]]], columns: int
) -> bytes:
    """RGB images in rows, each row labelled on its left and each image captioned; None leaves a
    captioned blank."""
    figure, axes = plt.subplots(len(rows), columns, figsize=(columns * 1.9, len(rows) * 2.1), squeeze=False)
    for (label, cells), row_axes in zip(rows, axes, strict=True):
        for index, ax in enumerate(row_axes):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_frame_on(False)
            if index < len(cells):
                image, caption = cells[index]
                if image is not None:
                    ax.imshow(image)
                ax.set_title(caption, fontsize=8)
        row_axes[0].set_ylabel(label, fontsize=10)
    return _png(figure)
