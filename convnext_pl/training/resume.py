"""Resuming a run only with the settings it was trained with: what a task's lr schedule was built from is stored
in every checkpoint and compared on a ``--ckpt_path`` resume (refused in one line, or continued and listed with
``--accept_changed_settings true``), and a checkpoint of another network or class count is one sentence."""

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from convnext_pl.errors import UserError
from convnext_pl.weights.state_dict import first_state_mismatch


def refuse_a_checkpoint_that_does_not_fit(
    module: pl.LightningModule, checkpoint: dict, what: str = "model"
) -> None:
    """Raise :class:`UserError` naming the first mismatch when ``checkpoint``'s ``state_dict`` does not fit
    ``module``: every task calls it from ``on_load_checkpoint``, before the weights load, so a checkpoint of
    another network or class count is one sentence rather than the list ``load_state_dict`` prints."""
    state = checkpoint.get("state_dict")  # absent in distributed checkpoints, which load themselves
    problem = (
        first_state_mismatch(state, module.state_dict(), source="checkpoint")
        if state and module.strict_loading
        else ""
    )
    if problem:
        path = module._trainer.ckpt_path if module._trainer is not None else "being loaded"
        raise UserError(
            f"checkpoint {path} does not fit this {what}: {problem}; resume with the model and data settings it "
            "was trained with (the config.yaml of its run)"
        )


# The checkpoint key under which a task stores what its lr schedule was built from (see schedule_settings).
SCHEDULE_SETTINGS_KEY = "schedule_settings"
_SETTING_NAMES = {
    "effective_batch_size": "effective batch",
    "peak_lr": "peak lr",
    "total_steps": "total optimizer steps",
    "warmup_steps": "warm-up steps",
    "lr_drop_steps": "lr drop steps",
    "data_class": "data class",
    "data_root": "data root",
}


def schedule_settings(trainer: pl.Trainer, **schedule: Any) -> dict[str, Any]:
    """What a task's lr schedule was built from (``schedule``: effective batch, peak lr, total and warm-up steps)
    plus the data it trains on (the DataModule's class and ``root``); stored in the checkpoint, compared on a
    resume by :func:`refuse_changed_settings`."""
    datamodule = trainer.datamodule
    root = getattr(datamodule, "root", None)
    return {
        **schedule,
        "data_class": type(datamodule).__qualname__ if datamodule is not None else None,
        "data_root": str(root) if root is not None else None,
    }


def _differs(before: Any, after: Any) -> bool:
    if isinstance(before, float) and isinstance(after, (int, float)):
        return not math.isclose(before, after, rel_tol=1e-9)  # a peak lr recomputed the same way may round
    return before != after


def _shown(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def refuse_changed_settings(
    ckpt_path: Any, saved: dict[str, Any] | None, now: dict[str, Any], accepted: bool
) -> list[str]:
    """The settings (:func:`schedule_settings`) that differ between a resumed checkpoint and this run, as
    ``"effective batch 64 -> 128"``; raise :class:`UserError` naming them unless ``accepted`` (then the task keeps
    the checkpoint's schedule, which Lightning restores with the scheduler's state). A checkpoint written before
    the settings were stored (``saved`` None) resumes unchecked."""
    changes = [
        f"{_SETTING_NAMES.get(key, key)} {_shown(saved[key])} -> {_shown(value)}"
        for key, value in now.items()
        if saved and key in saved and _differs(saved[key], value)
    ]
    if changes and not accepted:
        raise UserError(
            f"resuming {ckpt_path} with changed settings: {', '.join(changes)}; resume with the checkpoint's "
            "settings, or pass --accept_changed_settings true to continue its schedule with the new ones"
        )
    return changes


def read_schedule_settings(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The :func:`schedule_settings` a checkpoint stores (None: written before they were stored), read without
    loading its tensors (memory-mapped)."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a file in torch's legacy (non-zip) format cannot be memory-mapped
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return checkpoint.get(SCHEDULE_SETTINGS_KEY)


class ResumableSchedule:
    """What a task's LightningModule needs so a resume with changed schedule settings is refused, not silently
    continued on the checkpoint's schedule: checkpoints store :func:`schedule_settings`, and a ``--ckpt_path``
    resume compares them with this run's before training (``--accept_changed_settings`` continues the
    checkpoint's schedule and says what changed). Listed before ``LightningModule`` among the bases.

    The task defines ``lr_schedule_settings()`` (the effective batch, peak lr, warm-up and total steps its
    schedule is built from), calls :meth:`remember_saved_schedule` from its ``on_load_checkpoint`` and builds its
    schedule from :meth:`resolved_schedule_settings` in ``configure_optimizers``.
    """

    # True from the CLI's --accept_changed_settings; not a hyperparameter: it says how to resume, not what to train.
    accept_changed_settings: bool = False
    # This run's lr_schedule_settings(), once the schedule is built; the resumed checkpoint's (None: none stored).
    _schedule_info: dict[str, Any] | None = None
    _saved_schedule_settings: dict[str, Any] | None = None

    def remember_saved_schedule(self, checkpoint: dict) -> None:
        """Keep a loaded checkpoint's settings; ``on_load_checkpoint`` runs before ``configure_optimizers``."""
        self._saved_schedule_settings = checkpoint.get(SCHEDULE_SETTINGS_KEY)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._schedule_info:
            checkpoint[SCHEDULE_SETTINGS_KEY] = schedule_settings(self.trainer, **self._schedule_info)

    def resolved_schedule_settings(self) -> dict[str, Any]:
        """This run's ``lr_schedule_settings()``; on a resume compared with the checkpoint's (refused, or with
        ``accept_changed_settings`` reported: Lightning then restores the checkpoint's scheduler state, so the
        schedule the checkpoint was on goes on)."""
        settings = self._schedule_info = self.lr_schedule_settings()
        if self.trainer.ckpt_path:
            changes = refuse_changed_settings(
                self.trainer.ckpt_path,
                self._saved_schedule_settings,
                schedule_settings(self.trainer, **settings),
                self.accept_changed_settings,
            )
            if changes:
                rank_zero_info(f"Continuing the checkpoint's lr schedule; changed: {', '.join(changes)}")
        return settings


def refuse_a_changed_resume(trainer: pl.Trainer, module: pl.LightningModule, ckpt_path: str | Path) -> None:
    """Refuse a resume from ``ckpt_path`` whose schedule settings differ from this run's (see
    :func:`refuse_changed_settings`) unless ``module.accept_changed_settings``; a task without
    ``lr_schedule_settings()`` stores none and is not checked. Called once the data is set up (counting the steps
    needs the training loader) and before the run folder gets its first file, so a refused resume leaves nothing;
    the task compares again when it builds its schedule, which also covers a resume started from Python
    (:class:`convnext_pl.training.runs.ChangedResumeCheck` calls this for the command line)."""
    settings = getattr(module, "lr_schedule_settings", None)
    if settings is None:
        return
    refuse_changed_settings(
        ckpt_path,
        read_schedule_settings(ckpt_path),
        schedule_settings(trainer, **settings()),
        getattr(module, "accept_changed_settings", False),
    )


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: list(value) if isinstance(value, tuple) else value}


def changed_model_values(given: Any, restored: Any) -> list[str]:
    """The model settings a checkpoint's hyperparameters replace in this run's config, as
    ``"model.init_args.lr 0.001 -> 1000000.0"`` (checkpoint's -> given). LightningCLI restores a ``--ckpt_path``'s
    hyperparameters over the command line's; a value the command line left unset (None, e.g. the network's
    ``num_classes``, which follows the data) is not a change."""
    before, after = _flatten(given), _flatten(restored)
    return [
        f"model.{key} {_shown(after[key])} -> {_shown(value)}"
        for key, value in before.items()
        if value is not None and key in after and _differs(after[key], value)
    ]
