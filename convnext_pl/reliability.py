"""Training-time safeguards: randomness that a resumed run reproduces exactly, and a stop (or skip) when the
loss stops being a number.

Checkpointing lives in :mod:`convnext_pl.checkpointing`, the data side of exact resumption in
:mod:`convnext_pl.data.resumable`.
"""

import os
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from convnext_pl.data.resumable import derive_seed, seed_all
from convnext_pl.errors import UserError


class StepSeeding(Callback):
    """Seeds torch, numpy and python's global generators at every training batch from
    ``(seed, rank, epoch, batch)``.

    Drop-path masks, Mixup/CutMix draws (timm draws them from numpy) and any other randomness of a training
    step then depend only on where the step is in training. A run resumed from a checkpoint draws exactly what
    the uninterrupted run drew, with no generator state in the checkpoint: saving states would not be enough,
    since their position also depends on what ran before the step (data loading, sanity checks).
    Each rank gets its own stream.

    Args:
        seed: base seed; None takes the run's ``--seed_everything`` value (``PL_GLOBAL_SEED``; 0 when unseeded).
            A resumed run keeps the seed saved in its checkpoint.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.seed is None:
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int):
        seed_all(derive_seed(self.seed, trainer.global_rank, trainer.current_epoch, batch_idx))

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.seed = state_dict["seed"]


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard(Callback):
    """Stops the run, or skips the step, when the training loss is NaN or infinite.

    The check runs before the backward pass, so a stopped run never writes non-finite weights. All ranks take
    the same decision (one all-reduce of a flag per batch), so no rank is left waiting for one that stopped.

    Args:
        action: "stop" raises :class:`NonFiniteLossError` naming the step and the likely causes; "skip" drops
            the update of that optimizer step (its gradients are discarded; with ``16-mixed`` the gradient
            scaler skips it) and training goes on.
        max_consecutive_skips: with "skip", stop anyway after this many bad steps in a row: the run diverged.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_consecutive_skips: int = 10):
        if action not in ("stop", "skip"):
            raise UserError(f"nonfinite_loss.action must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_steps = 0
        self._consecutive = 0
        self._skip_next_step = False
        self._where = ""

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = trainer.strategy.reduce_boolean_decision(
            not bool(torch.isfinite(loss.detach()).all()), all=False
        )
        if not bad:
            return
        where = (
            f"train/loss is {loss.item()} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx})"
        )
        if self.action == "stop":
            raise NonFiniteLossError(
                f"{where}: training diverged; lower model.lr (mind lr_reference_batch and the warm-up), "
                "train in precision 32-true or bf16-mixed rather than 16-mixed, or set "
                "--nonfinite_loss.action skip to skip such steps"
            )
        self._skip_next_step = True
        self._where = where

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if not self._skip_next_step:
            self._consecutive = 0
            return
        self._skip_next_step = False
        self.skipped_steps += 1
        self._consecutive += 1
        if self._consecutive > self.max_consecutive_skips:
            raise NonFiniteLossError(
                f"{self._where}, {self._consecutive} non-finite losses in a row: training diverged; lower "
                "model.lr or use precision 32-true or bf16-mixed"
            )
        if getattr(trainer.precision_plugin, "scaler", None) is None:
            # Optimizers leave a parameter without a gradient untouched: no update, no momentum, no decay.
            # (The gradient scaler of 16-mixed skips steps with non-finite gradients by itself.)
            optimizer.zero_grad(set_to_none=True)
        rank_zero_warn(f"{self._where}: skipped this optimizer step ({self.skipped_steps} skipped so far)")

    def state_dict(self) -> dict[str, int]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped_steps = state_dict["skipped_steps"]
