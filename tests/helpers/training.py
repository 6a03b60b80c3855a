"""In-process training set-up: a quiet CPU trainer, a synthetic data module, the small classifier, and the
comparison of two checkpoints (exact resume)."""

from pathlib import Path

import lightning as L
import torch

from convnext_pl.data import SyntheticDataModule
from convnext_pl.models import create_model
from convnext_pl.tasks.classification import ImageClassifier


def quiet_trainer(tmp_path: str | Path, **overrides) -> L.Trainer:
    """A one-process CPU ``Trainer`` that writes nothing (no logger, no checkpoints) and prints no bar or summary.

    Defaults to one epoch with one validation batch; ``overrides`` are ``Trainer`` arguments (``max_steps=2``,
    ``limit_val_batches=0``, ``callbacks=[...]``, ``enable_checkpointing=True`` ...).
    """
    args = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**args, **overrides})


def synthetic_data(**overrides) -> SyntheticDataModule:
    """Random 32x32 images of 10 classes, 64 for training and 16 for validation, in batches of 8."""
    args = dict(num_classes=10, image_size=32, train_size=64, val_size=16, batch_size=8)
    return SyntheticDataModule(**{**args, **overrides})


def atto_classifier(num_classes: int = 10, **overrides) -> ImageClassifier:
    """``ImageClassifier`` around convnext_atto with the small-image stem (patch 2), as the digits demo uses."""
    return ImageClassifier(create_model("convnext_atto", num_classes=num_classes, patch_size=2), **overrides)


def _tensors(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Every tensor a resumed run must reproduce: weights and buffers, and each optimizer state entry."""
    tensors = {f"state_dict.{name}": value for name, value in checkpoint["state_dict"].items()}
    for optimizer, state in enumerate(checkpoint["optimizer_states"]):
        for param, entries in state["state"].items():
            tensors |= {f"optimizer{optimizer}.{param}.{key}": value for key, value in entries.items()}
    return {name: torch.as_tensor(value) for name, value in tensors.items()}


def max_difference(resumed: dict, reference: dict) -> tuple[float, str]:
    """The largest |resumed - reference| over every tensor of :func:`_tensors`, and the tensor it is in."""
    got, want = _tensors(resumed), _tensors(reference)
    assert got.keys() == want.keys()
    differences = {name: (got[name].double() - want[name].double()).abs().max().item() for name in want}
    name = max(differences, key=differences.get)
    return differences[name], name
