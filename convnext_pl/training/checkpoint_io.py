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
        writer = None
        try:
            with os.fdopen(fd, "wb") as f:
                writer = _Writer(f)
                torch.save(checkpoint, writer)
                f.flush()
                os.fsync(f.fileno())  # the bytes reach the disk before the name points at them
            # mkstemp makes the file private (0600); a checkpoint is shared like any file the user writes.
            os.chmod(partial, 0o666 & ~_umask())
            os.replace(partial, target)
        except BaseException as err:
            Path(partial).unlink(missing_ok=True)
            write_error = _write_error(target, getattr(writer, "error", None) or err)
            if write_error is None:
                raise
            raise write_error from err
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


class _Writer:
    """The file torch.save writes through, keeping the OSError of a failed write (disk full, file too large):
    torch's zip writer reports it only as "unexpected pos ..."."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _write_error(target: Path, err: BaseException) -> UserError | None:
    """The one sentence for a checkpoint that could not be written (disk full, file too large, no permission), or
    None for any other failure."""
    if not isinstance(err, OSError):
        return None
    reason = err.strerror or str(err)
    kept = f"the previous {target.name} is intact" if target.exists() else f"no {target.name} was written"
    return UserError(
        f"could not write checkpoint {target} ({reason}); {kept}; free space in {target.parent} or set "
        "trainer.default_root_dir to a disk with room, then resume with --ckpt_path last"
    )


def checkpoint_load_error(path, err: BaseException) -> UserError | None:
    """The one-sentence :class:`~convnext_pl.errors.UserError` for a checkpoint ``torch.load`` failed on, or None
    when ``err`` is not one of the failures a user's file causes (missing, refused, damaged)."""
    if isinstance(err, FileNotFoundError):
        return UserError(f"checkpoint {path} does not exist; check --ckpt_path")
    kind = other_file_kind(path)
    if kind == "safetensors":
        return UserError(
            f"{path} is a safetensors file of weights, not a Lightning checkpoint: start from it with "
            "--model.init_args.pretrained (dense tasks: the backbone's --model.init_args.pretrained_backbone); "
            "--ckpt_path takes a .ckpt a run wrote"
        )
    if kind is not None:
        return UserError(f"{path} is {kind}, not a checkpoint; --ckpt_path takes a .ckpt a run wrote")
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


# Leading bytes of files people give by mistake. A torch checkpoint is a zip archive (or, before torch 1.6, a
# pickle, which starts with 0x80).
_MAGIC = {
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG": "a PNG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF",
}


def other_file_kind(path) -> str | None:
    """What a file that is not a torch checkpoint is ("a JPEG image", "safetensors", ...), or None when it may be
    one (or cannot be read: torch.load reports that)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return None
    kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    if kind is not None:
        return kind
    # safetensors: an 8-byte little-endian header length, then the JSON header
    if len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON file"
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
