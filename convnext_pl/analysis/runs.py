"""A run as the user sees it: its CSV log as curves, and the trained network's predictions as a grid of images
and a confusion matrix."""

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

from convnext_pl.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def project_file(relative: str) -> Path:
    """A file of the repository (``configs/...``), found from the package so that any working directory works.

    Raises:
        UserError: the package is not run from a checkout (a wheel install ships no ``configs/``).
    """
    path = PROJECT_ROOT / relative
    if not path.exists():
        raise UserError(f"{path} does not exist; run from a checkout of convnext-pl (pip install -e .).")
    return path


# ------------------------------------------------------------------------------------------ run logs
@dataclass
class Series:
    """One logged metric: its values and the optimizer step and epoch each was logged at."""

    steps: np.ndarray
    epochs: np.ndarray
    values: np.ndarray


def read_metrics(run: str | Path) -> dict[str, Series]:
    """Every metric of a run's ``metrics.csv`` (Lightning's ``CSVLogger``), keyed by its logged name.

    Args:
        run: the run's version folder, e.g. ``runs/digits/version_0`` (``trainer.log_dir``), or its ``metrics.csv``.
    """
    path = Path(run)
    path = path / "metrics.csv" if path.is_dir() else path
    if not path.is_file():
        raise UserError(
            f"No metrics.csv at {run}; pass a run's version folder (runs/<name>/version_N) or its CSV."
        )
    # The CSV logger writes one row per logging call with empty cells for the metrics not logged in it.
    collected: dict[str, list[tuple[int, int, float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            epoch = int(row["epoch"]) if row.get("epoch") else -1  # lr-monitor rows carry no epoch
            for name, cell in row.items():
                if name not in ("step", "epoch") and cell:
                    collected.setdefault(name, []).append((step, epoch, float(cell)))
    return {
        name: Series(*(np.array(column) for column in zip(*rows, strict=True)))
        for name, rows in collected.items()
    }


def plot_training_curves(metrics: Mapping[str, Series]) -> Figure:
    """Loss (training per logged step, validation per epoch) and validation accuracy, against the step."""
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for name, style in (("train/loss", "-"), ("val/loss", "o-"), ("val_ema/loss", "s--")):
        if name in metrics:
            loss_ax.plot(metrics[name].steps, metrics[name].values, style, label=name)
    for name, style in (("val/acc1", "o-"), ("val_ema/acc1", "s--")):
        if name in metrics:
            acc_ax.plot(metrics[name].steps, 100 * metrics[name].values, style, label=name)
    loss_ax.set(xlabel="optimizer step", ylabel="cross-entropy", title="loss")
    acc_ax.set(xlabel="optimizer step", ylabel="top-1 %", title="validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


# ------------------------------------------------------------------------------------------ predictions
@torch.no_grad()
def predict(net: nn.Module, batches: Iterable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``net`` in eval mode over ``(images, targets)`` batches.

    Returns:
        ``(images (N, C, H, W), targets (N,), predicted classes (N,))``, on the CPU.
    """
    net.eval()
    device = next(net.parameters()).device
    images, targets, preds = [], [], []
    for x, y in batches:
        images.append(x)
        targets.append(y)
        preds.append(net(x.to(device)).argmax(dim=-1).cpu())
    return torch.cat(images), torch.cat(targets), torch.cat(preds)


def plot_prediction_grid(
    images: torch.Tensor,
    targets: torch.Tensor,
    preds: torch.Tensor,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    columns: int = 8,
) -> Figure:
    """The images with their predicted and true labels, mistakes titled in red.

    Args:
        images: normalised (N, C, H, W) batch, as the loaders yield it.
        targets: true classes (N,).
        preds: predicted classes (N,).
        class_names: name of each class index.
        mean: normalisation mean the loader used (undone for display).
        std: normalisation std the loader used.
        columns: images per row.
    """
    rows = math.ceil(len(images) / columns)
    fig = Figure(figsize=(1.4 * columns, 1.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    pixels = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    for ax in axes:
        ax.axis("off")
    for ax, image, target, pred in zip(axes, pixels, targets, preds, strict=False):
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())  # (C, H, W) -> (H, W, C)
        ok = pred == target
        ax.set_title(f"{class_names[pred]} ({class_names[target]})", fontsize=9, color="k" if ok else "red")
    fig.suptitle("predicted (true)")
    return fig


def plot_confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, class_names: Sequence[str]) -> Figure:
    """scikit-learn's confusion matrix display: rows are true classes, columns predicted ones."""
    matrix = confusion_matrix(targets.numpy(), preds.numpy(), labels=range(len(class_names)))
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ConfusionMatrixDisplay(matrix, display_labels=class_names).plot(ax=fig.subplots(), colorbar=False)
    return fig
