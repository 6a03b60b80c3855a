"""Checkpoints a run can always resume from: atomic writes, ``last.ckpt`` every N steps and on SIGTERM, and
one-sentence errors for checkpoint files that cannot be used.

Lightning's ``TorchCheckpointIO`` serialises into memory and writes through an fsspec transaction, which for a
local path writes a temporary file in the system temp folder and then moves it over the target. The move is an
atomic rename only when that temp folder is on the checkpoint's filesystem: on a cluster, where ``/tmp`` is a
local disk and checkpoints go to a shared one, ``shutil.move`` falls back to copying into the target, and a kill
during the copy leaves a truncated ``last.ckpt``. :class:`AtomicCheckpointIO` writes next to the target instead,
so the final ``os.replace`` is always a rename on one filesystem.
"""

import glob
import math
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from convnext_pl.callbacks import EMA, store_raw_weights
from convnext_pl.errors import UserError
from convnext_pl.models.state_dict import first_state_mismatch

# Prefix of the file a save writes before renaming it. It must not contain "last": Lightning's
# `ckpt_path="last"` takes any file in the checkpoint folder whose name contains "last".
PARTIAL_PREFIX = ".checkpoint-"
PARTIAL_SUFFIX = ".partial"
# The module logs the raw weights' validation metrics as val/*, the EMA weights' as val_ema/*.
RAW_METRICS_PREFIX, EMA_METRICS_PREFIX = "val/", "val_ema/"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves never leave a half-written file under the checkpoint's name.

    A save goes to a temporary file in the target's folder, is flushed to disk, and is renamed over the
    target; a process killed at any moment leaves either the previous complete file or the new one (plus, at
    worst, a ``.checkpoint-*.partial`` file to delete). Remote paths (``s3://`` ...) keep Lightning's upload.
    Loading turns a missing, damaged or refused file into a :class:`~convnext_pl.errors.UserError`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # the bytes reach the disk before the name points at them
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        _fsync_folder(target.parent)  # and the rename itself survives a power cut

    def load_checkpoint(
        self, path, map_location=lambda storage, loc: storage, weights_only: bool | None = None
    ):
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (FileNotFoundError, pickle.UnpicklingError, RuntimeError) as err:
            user_error = checkpoint_load_error(path, err)
            if user_error is None:
                raise
            raise user_error from err


def checkpoint_load_error(path, err: BaseException) -> UserError | None:
    """The one-sentence :class:`~convnext_pl.errors.UserError` for a checkpoint ``torch.load`` failed on, or None
    when ``err`` is not one of the failures a user's file causes (missing, refused, damaged)."""
    if isinstance(err, FileNotFoundError):
        return UserError(f"checkpoint {path} does not exist; check --ckpt_path")
    if isinstance(err, pickle.UnpicklingError):
        # torch.load(weights_only=True), torch's default, refuses pickled Python objects: they could run code.
        return UserError(
            f"checkpoint {path} was refused by torch.load(weights_only=True): it holds Python objects besides "
            "tensors and plain values; load only checkpoints written by this project (see "
            "docs/troubleshooting.md, 'Which files are trusted')"
        )
    if isinstance(err, RuntimeError) and "PytorchStreamReader" in str(err):  # torch's zip reader
        reason = str(err).split(". ")[0]  # what failed; torch's further sentences guess at why
        return UserError(
            f"checkpoint {path} is damaged or incomplete ({reason}); use another checkpoint of the run"
        )
    return None


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open a folder (Windows) have no folder fsync either
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for runs that can be interrupted: the best checkpoints per epoch as usual, plus a
    ``last.ckpt`` that is always the newest state of the run.

    ``last.ckpt`` is written at the end of every training epoch, after every ``every_n_train_steps`` optimizer
    steps, when the job receives SIGTERM and at the end of the run, whatever the monitored metric did. Lightning
    (2.6) writes it only at a step where a top-k checkpoint was saved ("Only save last checkpoint if a checkpoint
    was actually saved in this step", ``ModelCheckpoint.on_validation_end``): every epoch that did not beat the
    best left ``last.ckpt`` behind, so a finished run's final epochs were on disk nowhere.

    Lightning's own ``every_n_train_steps`` would replace the per-epoch checkpoints and rank the step
    checkpoints by a validation metric that is stale (or, in the first epoch, not logged yet, which defers
    them to the end of the epoch). Here step saves only refresh ``last.ckpt``, which is what resuming needs.

    On SIGTERM (what schedulers send before preempting a job) Lightning finishes the current batch and raises
    ``SIGTERMException`` but saves nothing; this callback then writes ``last.ckpt`` and says how to resume.

    A best (top-k) checkpoint stores the weights its monitor measured. With the ``EMA`` callback, Lightning's
    layout puts the EMA weights in ``state_dict`` (and the raw ones in ``current_model_state``); a checkpoint
    chosen by a raw-model metric (``val/*``) is therefore written with the raw weights in ``state_dict`` and the
    EMA ones under ``ema_state_dict`` (see :func:`~convnext_pl.callbacks.store_raw_weights`), and one chosen
    by ``val_ema/*`` keeps Lightning's layout. ``last.ckpt`` always keeps Lightning's layout.

    Args:
        every_n_train_steps: refresh ``last.ckpt`` after every n-th optimizer step; None: only per epoch.
        **kwargs: the arguments of ``ModelCheckpoint`` (``dirpath``, ``filename``, ``monitor``, ``mode``,
            ``save_top_k``, ``save_last``, ``every_n_epochs`` ...). ``save_last: link`` is refused: a link
            to the newest best checkpoint is not the newest state.
    """

    def __init__(self, every_n_train_steps: int | None = None, **kwargs):
        if kwargs.get("save_last") == "link":
            raise UserError(
                "checkpoint.save_last 'link' would point last.ckpt at the newest best checkpoint, not at the "
                "newest state of the run; use checkpoint.save_last true"
            )
        super().__init__(**kwargs)
        self.last_every_n_train_steps = every_n_train_steps or 0
        self._last_step_refreshed = 0  # no refresh before the first optimizer step
        self._last_ckpt_writes = 0  # how many times last.ckpt was written, to tell whether a hook wrote it
        self._step_of_last_ckpt = -1  # the global step last.ckpt holds, once written by this process
        self._first_step = 0  # the global step this process started training at
        self._file_being_saved: str | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx
    ):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n, step = self.last_every_n_train_steps, trainer.global_step
        # With gradient accumulation several batches end at one global step: refresh once, right after the step.
        if (
            n < 1
            or step % n
            or step == self._last_step_refreshed
            or self._should_skip_saving_checkpoint(trainer)
        ):
            return
        self._last_step_refreshed = step
        step_of_last_save = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        # Lightning skips a save at a step that already saved: a refresh must not stop this epoch's best one.
        self._last_global_step_saved = step_of_last_save

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after validation (Lightning validates inside the epoch loop) and after the other callbacks' epoch
        # ends (checkpoint callbacks run last), so last.ckpt holds the epoch's complete state.
        writes = self._last_ckpt_writes
        super().on_train_epoch_end(trainer, pl_module)  # the best checkpoint, and last.ckpt if that was saved
        if self._last_ckpt_writes == writes:
            self._save_newest_state(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every run that took a step passed an epoch end above; this covers any way out of the loop that does not.
        if trainer.global_step > self._step_of_last_ckpt and trainer.global_step > self._first_step:
            self._save_newest_state(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._first_step = trainer.global_step  # a resumed run's last.ckpt already holds this step

    def _save_newest_state(self, trainer: pl.Trainer) -> None:
        if (
            not self.save_last
            or bool(trainer.fast_dev_run)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or trainer.global_step == 0
        ):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_ckpt_writes += 1
            self._step_of_last_ckpt = trainer.global_step

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self._file_being_saved = filepath  # read by on_save_checkpoint, which Lightning calls during the save
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            self._file_being_saved = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning calls the checkpoint callbacks' hooks after every other callback's, so the EMA callback has
        # already put its weights in state_dict. Other saves (another callback's, last.ckpt) keep that layout.
        saving_best = self._file_being_saved not in (None, self.last_model_path)
        if saving_best and not (self.monitor or "").startswith(EMA_METRICS_PREFIX):
            store_raw_weights(checkpoint)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            super().on_exception(trainer, pl_module, exception)
            return
        if not self.save_last:
            return
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or trainer.global_step == 0:
            _print_rank_zero(
                trainer, "Received SIGTERM before the first training step ended; nothing to save."
            )
            return
        # Lightning raises SIGTERMException after a batch is complete, so the state is a consistent one.
        path = self.format_checkpoint_name(self._monitor_candidates(trainer), self.CHECKPOINT_NAME_LAST)
        self.last_model_path = path  # set before saving: it is part of the saved callback state
        trainer.save_checkpoint(path)
        self._step_of_last_ckpt = trainer.global_step
        _print_rank_zero(
            trainer,
            f"Received SIGTERM: stopped after step {trainer.global_step} (epoch {trainer.current_epoch}) and "
            f"saved {path}; to resume, run the same command with --ckpt_path last",
        )


def keep_best_per_weights(trainer: pl.Trainer) -> ResumableCheckpoint | None:
    """With the ``EMA`` callback on, keep a best checkpoint for each set of weights, as the official code does
    (``checkpoint-best.pth`` by the model's accuracy, ``checkpoint-best-ema.pth`` by the EMA's: ``main.py`` of
    facebookresearch/ConvNeXt). The trainer's ``ResumableCheckpoint`` then names its files ``raw-...`` (chosen by
    ``val/*``, raw weights in ``state_dict``), and an added one names its files ``ema-...`` (chosen by the same
    metric of the EMA weights, ``val_ema/*``, which ``state_dict`` holds). Returns the added callback, or None
    when EMA is off or the trainer's checkpoint does not rank by a ``val/*`` metric."""
    main = trainer.checkpoint_callback
    if (
        not any(isinstance(callback, EMA) for callback in trainer.callbacks)
        or not isinstance(main, ResumableCheckpoint)
        or not (main.monitor or "").startswith(RAW_METRICS_PREFIX)
        or main.save_top_k == 0
    ):
        return None
    filename = main.filename or "{epoch}-{step}"  # Lightning's default name
    ema_best = ResumableCheckpoint(
        dirpath=main.dirpath,
        filename="ema-" + filename.replace("{" + RAW_METRICS_PREFIX, "{" + EMA_METRICS_PREFIX),
        monitor=EMA_METRICS_PREFIX + main.monitor.removeprefix(RAW_METRICS_PREFIX),
        mode=main.mode,
        save_top_k=main.save_top_k,
        save_last=False,
        auto_insert_metric_name=main.auto_insert_metric_name,
        every_n_epochs=main.every_n_epochs,
    )
    main.filename = "raw-" + filename
    trainer.callbacks.append(ema_best)  # checkpoint callbacks come last, as Lightning orders them
    return ema_best


def _print_rank_zero(trainer: pl.Trainer, message: str) -> None:
    if trainer.is_global_zero:
        print(message, file=sys.stderr, flush=True)


def find_last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``last*.ckpt`` of any version of a run (``<run_dir>/version_N/checkpoints/``), or None.

    Each run, resumed ones included, logs into a new ``version_N`` folder, so Lightning's own
    ``ckpt_path="last"`` (which looks only in the new run's folder) would never find the previous one.
    """
    pattern = os.path.join(glob.escape(str(run_dir)), "version_*", "checkpoints", "last*.ckpt")
    candidates = [Path(p) for p in glob.glob(pattern)]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


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
    (:class:`convnext_pl.runs.ChangedResumeCheck` calls this for the command line)."""
    settings = getattr(module, "lr_schedule_settings", None)
    if settings is None:
        return
    refuse_changed_settings(
        ckpt_path,
        read_schedule_settings(ckpt_path),
        schedule_settings(trainer, **settings()),
        getattr(module, "accept_changed_settings", False),
    )
