"""Checkpoint files that are never half-written, and one-sentence errors for files that cannot be used.


Lightning's ``TorchCheckpointIO`` serialises into memory and writes through an fsspec transaction, which for a
local path writes a temporary file in the system temp folder and then moves it over the target. The move is an
atomic rename only when that temp folder is on the checkpoint's filesystem: on a cluster, where ``/tmp`` is a
local disk and checkpoints go to a shared one, ``shutil.move`` falls back to copying into the target, and a kill
during the copy leaves a truncated ``last.ckpt``. :class:`AtomicCheckpointIO` writes next to the target instead,
so the final ``os.replace`` is always a rename on one filesystem.
"""

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

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
