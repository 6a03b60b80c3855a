"""Callbacks: EMA validated next to the raw weights, and the top-k prediction CSV writer."""

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.nn as nn
from jsonargparse.typing import OpenUnitInterval, PositiveInt
from lightning.pytorch.callbacks import BasePredictionWriter, EMAWeightAveraging
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info

from convnext_pl.errors import UserError

# Where a checkpoint whose state_dict holds the raw weights keeps the EMA weights (see store_raw_weights).
EMA_STATE_KEY = "ema_state_dict"

# Strategies that shard the weights across ranks; the EMA copy below would be a full, unsharded model per rank.
SHARDED_STRATEGIES = (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy)


class EMA(EMAWeightAveraging):
    """Exponential moving average of the weights (paper: decay 0.9999, evaluated alongside the raw model).

    Lightning's ``EMAWeightAveraging`` swaps the averaged weights in for validation, so only one of the two
    models would be measured. Here the raw weights stay in place and ``ImageClassifier`` also runs
    :attr:`averaged_net`, logging ``val_ema/*`` next to ``val/*``. Everything else is Lightning's: checkpoints
    store the EMA weights as ``state_dict`` (the raw ones in ``current_model_state``), resuming restores both,
    and when training ends the EMA weights are copied into the model.

    The averaged copy is a full, unsharded model on every rank. That is what DDP holds anyway, but it defeats
    sharded strategies (FSDP, FSDP2, DeepSpeed), so with those the callback refuses to start (a
    :class:`UserError`) instead of quietly holding a full copy of the model on each device.

    Args:
        decay: EMA decay per update, in (0, 1) (paper: 0.9999 at batch 4096; use less for short runs).
        update_every_n_steps: update after every n-th optimizer step (positive).
        update_starting_at_step: first optimizer step that updates the average.
        device: where to keep the averaged copy (default: the model's device; "cpu" saves GPU memory).
    """

    def __init__(
        self,
        decay: OpenUnitInterval = 0.9999,
        update_every_n_steps: PositiveInt = 1,
        update_starting_at_step: int | None = None,
        device: str | None = None,
    ):
        # The types hold the ranges for the CLI; a call from Python is checked here. Decay 1 never moves the
        # average, 0 is no average; Lightning checks neither.
        if not 0 < decay < 1 or update_every_n_steps < 1:
            raise UserError(
                f"EMA decay must be in (0, 1) and update_every_n_steps at least 1, got {decay} and "
                f"{update_every_n_steps}"
            )
        super().__init__(
            device=device,
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
        )
        self.decay = decay

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            refuse_sharded_strategy(trainer.strategy)
        with warnings.catch_warnings():
            # Lightning warns whenever configure_model is overridden, since it cannot shard the average. Ours only
            # converts the memory format, compiles (both carried into the copy) or shards, and sharding was refused.
            warnings.filterwarnings("ignore", message=".*WeightAveraging doesn't support sharding")
            super().setup(trainer, pl_module, stage)

    @property
    def averaged_net(self) -> nn.Module | None:
        """The EMA copy of ``pl_module.net`` while fitting, else None."""
        return self._average_model.module.net if self._average_model is not None else None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # keep the raw weights in place; the module validates both

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if EMA_STATE_KEY in checkpoint and self._average_model is not None:
            # A best-raw checkpoint (store_raw_weights): back to Lightning's layout, which the parent restores.
            checkpoint = {
                **checkpoint,
                "state_dict": checkpoint[EMA_STATE_KEY],
                "current_model_state": checkpoint["state_dict"],
            }
        super().on_load_checkpoint(trainer, pl_module, checkpoint)


def store_raw_weights(checkpoint: dict[str, Any]) -> None:
    """Give an EMA run's checkpoint the raw weights as ``state_dict`` (what ``validate``, ``export`` and
    ``load_pretrained`` read) and keep the EMA weights under ``ema_state_dict``; resuming restores both.

    Lightning's ``WeightAveraging`` writes the EMA weights as ``state_dict`` and the raw ones as
    ``current_model_state``; a checkpoint chosen by the raw model's score must hold the raw model. A checkpoint
    without EMA state is left as it is.
    """
    if "current_model_state" not in checkpoint:
        return
    checkpoint[EMA_STATE_KEY] = checkpoint["state_dict"]
    checkpoint["state_dict"] = checkpoint.pop("current_model_state")


def refuse_sharded_strategy(strategy: Strategy) -> None:
    """Raise :class:`UserError` when ``strategy`` shards the weights: EMA would keep a full copy on every rank."""
    if isinstance(strategy, SHARDED_STRATEGIES):
        raise UserError(
            f"The EMA callback keeps a full, unsharded copy of the model on every rank, which defeats "
            f"{type(strategy).__name__}; remove EMA from trainer.callbacks (on the command line: "
            "--trainer.callbacks=[]) or train with trainer.strategy ddp."
        )


class TopKPredictionWriter(BasePredictionWriter):
    """Writes ``predict`` results as CSV: one row per image, its top-k classes and probabilities.

    Args:
        output_file: CSV path; default ``predictions.csv`` in the run's log directory.
    """

    def __init__(self, output_file: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_file = output_file

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if predictions and not (isinstance(predictions[0], dict) and "classes" in predictions[0]):
            return  # another task's predictions (detection, segmentation): that task's own writer saves them
        if trainer.world_size > 1:
            raise RuntimeError("predict writes one CSV; run it on a single device (trainer.devices: 1).")
        names = getattr(trainer.datamodule, "class_names", None)
        path = Path(self.output_file or Path(trainer.log_dir or ".") / "predictions.csv")
        rows = [
            (image_path, classes.tolist(), probs.tolist())
            for batch in predictions
            for image_path, classes, probs in zip(
                batch["paths"], batch["classes"], batch["probs"], strict=True
            )
        ]
        write_topk_csv(path, rows, names)
        rank_zero_info(f"Wrote predictions for {len(rows)} images to {path}")


def write_topk_csv(
    path: Path, rows: Sequence[tuple[str, Sequence[int], Sequence[float]]], names: Sequence[str] | None
) -> None:
    """The prediction CSV: ``path, top1_class, top1_prob, top2_class, ...``, probabilities with 6 decimals.

    Args:
        path: CSV file to write (its folder is created).
        rows: one ``(image path, top-k class indices, their probabilities)`` per image, best first.
        names: class names indexed by class; empty or None writes the class indices.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    k = len(rows[0][1]) if rows else 0
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["path"] + [f"top{i}_{column}" for i in range(1, k + 1) for column in ("class", "prob")]
        )
        for image_path, classes, probs in rows:
            row = [image_path]
            for c, p in zip(classes, probs, strict=True):
                row += [names[c] if names else c, f"{p:.6f}"]
            writer.writerow(row)
