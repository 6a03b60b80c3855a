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
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from convnext_pl.errors import UserError
from convnext_pl.training.callbacks import EMA, store_raw_weights

# The module logs the raw weights' validation metrics as val/*, the EMA weights' as val_ema/*.
RAW_METRICS_PREFIX, EMA_METRICS_PREFIX = "val/", "val_ema/"


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
    EMA ones under ``ema_state_dict`` (see :func:`~convnext_pl.training.callbacks.store_raw_weights`), and one chosen
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


def checkpoint_filename(monitor: str) -> str:
    """The best checkpoint's file name for ``monitor``: ``epoch{epoch:03d}-acc1_{val/acc1:.4f}`` for ``val/acc1``
    (the metric's last path part and its value), so a file name never shows another task's metric."""
    return "epoch{epoch:03d}-" + monitor.rsplit("/", 1)[-1] + "_{" + monitor + ":.4f}"


def task_checkpoint_defaults(task_class: type, checkpoint_config) -> None:
    """Fill the checkpoint callback's unset ``monitor`` (and its ``mode``) with the task's
    (``TaskModule.monitor``), and an unset ``filename`` with :func:`checkpoint_filename` of the monitor."""
    monitor = getattr(task_class, "monitor", None)
    if checkpoint_config.get("monitor") is None and monitor is not None:
        checkpoint_config.monitor = monitor
        checkpoint_config.mode = getattr(task_class, "monitor_mode", "max")
    if checkpoint_config.get("filename") is None and checkpoint_config.get("monitor"):
        checkpoint_config.filename = checkpoint_filename(checkpoint_config.monitor)
