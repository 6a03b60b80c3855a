"""Load ConvNeXt weights from official, timm or this project's Lightning checkpoints.

The model uses the official parameter names (docs/paper.md §2, "Official checkpoint format"), so official files
load as they are; timm files are renamed with the table below; Lightning checkpoints lose their ``net.``
prefix. The format is detected from the keys, never from the file name.

Written by hand because timm's ``checkpoint_filter_fn`` maps the other way (official -> timm) and
``load_state_dict`` reports every mismatch at once in a message meant for developers, not one sentence a
user can act on.
"""

import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from convnext_pl.errors import UserError

# timm name -> official name, applied in order to every key of a timm state dict (docs/paper.md §2).
TIMM_TO_OFFICIAL: list[tuple[str, str]] = [
    (r"^stem\.", "downsample_layers.0."),
    (r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"\.conv_dw\.", ".dwconv."),
    (r"\.mlp\.fc1\.", ".pwconv1."),
    (r"\.mlp\.fc2\.", ".pwconv2."),
    (r"\.mlp\.grn\.weight$", ".grn.gamma"),
    (r"\.mlp\.grn\.bias$", ".grn.beta"),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc\.", "head."),
]
# Names only timm uses; one of them in a file means the whole file is in timm's layout.
_TIMM_MARKERS = ("stem.0.", ".blocks.", ".conv_dw.", ".mlp.fc1.", "head.fc.")
# Wrappers around the weights: official files ("model", or "model_ema" in some), Lightning ("state_dict").
# "model" comes first: official training checkpoints that hold both keep the released weights there.
_WRAPPER_KEYS = ("model", "model_ema", "state_dict")
_LIGHTNING_PREFIX = "net."  # the LightningModule stores the network as `self.net`


def load_pretrained(model: nn.Module, path: str | Path, replace_head: bool = False) -> nn.Module:
    """Load weights from ``path`` into ``model`` in place, with strict key and shape checks.

    Args:
        model: a ``ConvNeXt`` or ``ConvNeXtIsotropic`` built with the architecture the file was saved from.
        path: an official checkpoint (``{"model": ...}``), a timm state dict (``.pth``/``.bin`` or
            ``.safetensors``) or a Lightning checkpoint of this project.
        replace_head: when the file's classifier has another class count (an ImageNet-22K head, say), keep
            the model's freshly initialised head instead of failing; a warning says so.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        UserError: the file is missing, unreadable, not a plain weights file, or does not fit the model.
    """
    path = Path(path)
    state = to_official_names(_read_state_dict(path))
    target = model.state_dict()
    body_problem = _first_mismatch(state, target, lambda key: not _is_head(key))
    if body_problem:
        raise UserError(
            f"Checkpoint '{path}' does not fit this {type(model).__name__}: {body_problem}; "
            "build the model variant the checkpoint was saved from."
        )
    head_problem = _first_mismatch(state, target, _is_head)
    if head_problem and not replace_head:
        raise UserError(
            f"Checkpoint '{path}' has another classifier head than the model: {head_problem}; "
            "pass replace_head=True to keep the model's new head and load everything else."
        )
    if head_problem:
        state = {k: v for k, v in state.items() if not _is_head(k)}
        state.update({k: v for k, v in target.items() if _is_head(k)})  # keep the fresh head as it is
        warnings.warn(
            f"The head in '{path}' does not match the model; the head was re-initialised with "
            f"{getattr(model, 'num_classes', '?')} classes.",
            stacklevel=2,
        )
    model.load_state_dict(state, strict=True)
    return model


def to_official_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes and rename a timm state dict to the official names; official ones pass through.

    Args:
        state: a flat state dict, in any of the supported layouts.

    Returns:
        The same tensors under official names and shapes.
    """
    if any(k.startswith(_LIGHTNING_PREFIX) for k in state):
        # A LightningModule may hold more than the network (an EMA copy, metrics): keep `net.*` only.
        state = {
            k.removeprefix(_LIGHTNING_PREFIX): v for k, v in state.items() if k.startswith(_LIGHTNING_PREFIX)
        }
    # torch.compile(module) stored as an attribute inserts `_orig_mod.`; DDP/DataParallel prefix `module.`.
    state = {k.replace("_orig_mod.", "").removeprefix("module."): v for k, v in state.items()}
    if not any(marker in k for k in state for marker in _TIMM_MARKERS):
        return state
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in TIMM_TO_OFFICIAL:
            key = re.sub(pattern, replacement, key)
        renamed[key] = _official_shape(key, value)
    return renamed


def _official_shape(key: str, value: torch.Tensor) -> torch.Tensor:
    if re.search(r"\.pwconv[12]\.weight$", key) and value.ndim == 4:
        return value.flatten(1)  # timm's 1x1-conv MLP (atto..nano): (out, in, 1, 1) -> Linear (out, in)
    if re.search(r"\.grn\.(gamma|beta)$", key) and value.ndim == 1:
        return value.reshape(1, 1, 1, -1)  # timm's GRN (C,) -> official (1, 1, 1, C), broadcast over NHWC
    return value


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"Checkpoint file '{path}' does not exist; check the path.")
    if _is_safetensors(path):
        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise UserError(
                f"Checkpoint '{path}' is a damaged safetensors file; download or save it again."
            ) from e
    try:
        # Never unpickle arbitrary objects: a checkpoint from the internet can run code when unpickled.
        # A file object, not the path: torch.load would pick safetensors for any name ending ".safetensors".
        with path.open("rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Raised for unsafe globals and for bytes that are no PyTorch file at all: both are refusals.
        raise UserError(
            f"Checkpoint '{path}' is not a plain weights file: torch.load(weights_only=True) refused it (it holds "
            "Python objects other than tensors and containers, or is no PyTorch file at all); re-save the weights "
            "with torch.save(model.state_dict(), path) or as safetensors."
        ) from e
    except Exception as e:
        raise UserError(
            f"Checkpoint '{path}' could not be read as a PyTorch or safetensors weights file; check that it is "
            "complete and not damaged."
        ) from e
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            f"Checkpoint '{path}' holds no state dict (expected tensors, possibly under one of the keys "
            f"{', '.join(_WRAPPER_KEYS)}); point to a model weights file."
        )
    return dict(obj)


def _is_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte header length and then the JSON header's "{"; torch.save
    # writes a zip ("PK...") or a pickle (0x80 ...), so the content decides, whatever the file is called.
    with path.open("rb") as f:
        start = f.read(9)
    return len(start) == 9 and start[8:9] == b"{"


def _is_head(key: str) -> bool:
    return key.startswith("head.")


def _first_mismatch(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], selected: Callable[[str], bool]
) -> str:
    """The first key, in the model's order, that is missing or has another shape; then any unexpected key."""
    for key, expected in target.items():
        if not selected(key):
            continue
        if key not in state:
            return f"'{key}' is missing from the file"
        if state[key].shape != expected.shape:
            return f"'{key}' has shape {tuple(state[key].shape)} in the file but {tuple(expected.shape)} in the model"
    unexpected = [key for key in state if selected(key) and key not in target]
    return f"'{unexpected[0]}' in the file is not a parameter of the model" if unexpected else ""
