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
import pickle
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from convnext_pl.errors import UserError

# Prefix of the file a save writes before renaming it. It must not contain "last": Lightning's
# `ckpt_path="last"` takes any file in the checkpoint folder whose name contains "last".
PARTIAL_PREFIX = ".checkpoint-"
PARTIAL_SUFFIX = ".partial"


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


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for runs that can be interrupted: the best checkpoints per epoch as usual, plus
    ``last.ckpt`` refreshed every ``every_n_train_steps`` optimizer steps and when the job receives SIGTERM.

    Lightning's own ``every_n_train_steps`` would replace the per-epoch checkpoints and rank the step
    checkpoints by a validation metric that is stale (or, in the first epoch, not logged yet, which defers
    them to the end of the epoch). Here step saves only refresh ``last.ckpt``, which is what resuming needs.

    On SIGTERM (what schedulers send before preempting a job) Lightning finishes the current batch and raises
    ``SIGTERMException`` but saves nothing; this callback then writes ``last.ckpt`` and says how to resume.

    Args:
        every_n_train_steps: refresh ``last.ckpt`` after every n-th optimizer step; None: only per epoch.
        **kwargs: the arguments of ``ModelCheckpoint`` (``dirpath``, ``filename``, ``monitor``, ``mode``,
            ``save_top_k``, ``save_last``, ``every_n_epochs`` ...).
    """

    def __init__(self, every_n_train_steps: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.last_every_n_train_steps = every_n_train_steps or 0
        self._last_step_refreshed = 0  # no refresh before the first optimizer step

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

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            super().on_exception(trainer, pl_module, exception)
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
        _print_rank_zero(
            trainer,
            f"Received SIGTERM: stopped after step {trainer.global_step} (epoch {trainer.current_epoch}) and "
            f"saved {path}; to resume, run the same command with --ckpt_path last",
        )


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


def first_state_mismatch(saved: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    """The first key, in the model's order, missing from ``saved`` or of another shape; then any extra key;
    an empty string when the two state dicts fit."""
    for key, tensor in expected.items():
        if key not in saved:
            return f"'{key}' is missing from the checkpoint"
        if tuple(saved[key].shape) != tuple(tensor.shape):
            return (
                f"'{key}' has shape {tuple(saved[key].shape)} in the checkpoint but {tuple(tensor.shape)} "
                "in the model"
            )
    extra = next((key for key in saved if key not in expected), None)
    return f"'{extra}' in the checkpoint is not a parameter of the model" if extra else ""
