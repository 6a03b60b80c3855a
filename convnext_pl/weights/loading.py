"""Load ConvNeXt weights from official, timm or this project's Lightning checkpoints, by path or by name.

``source`` is a path, a released weights name of :mod:`convnext_pl.weights.catalogue`, a URL or a Hugging Face Hub
id; :mod:`convnext_pl.weights.download` finds or downloads the file. ``python -m convnext_pl.weights list``
prints the catalogue, ``... download NAME`` fills the cache (:mod:`convnext_pl.weights.command`).

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
from convnext_pl.weights.catalogue import CATALOGUE, IN22K_CLASSES, Weights
from convnext_pl.weights.conversions import fcmae_to_convnextv2, is_fcmae
from convnext_pl.weights.download import resolve
from convnext_pl.weights.state_dict import first_state_mismatch

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
        path: a released weights name (``convnext_tiny.in22k_ft_in1k``, see ``list``), an ``https://`` URL,
            ``hf-hub:<owner>/<repo>`` (or a bare hub id), or a local file: an official checkpoint
            (``{"model": ...}``), a timm state dict (``.pth``/``.bin`` or ``.safetensors``) or a Lightning
            checkpoint of this project. Names, URLs and hub ids are downloaded once into the cache.
        replace_head: when the file's classifier has another class count (an ImageNet-22K head, say) or none
            (a pre-training-only file), keep the model's freshly initialised head (and final norm, when the file
            has none) instead of failing; a warning says so.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        UserError: the file is missing, unreadable, not a plain weights file, or does not fit the model; a
            released name whose network is not the model's (checked before any download).
    """
    entry = CATALOGUE.get(str(path))
    if entry is not None:
        check_architecture(entry, model, replace_head)
    path, state = read_weights(path)
    target = model.state_dict()
    # A pre-training-only file (FCMAE) has neither classifier nor final norm: both start fresh when fine-tuning.
    headless = not any(_is_head(k) or k.startswith("norm.") for k in state)
    is_new = (lambda key: _is_head(key) or key.startswith("norm.")) if headless else _is_head
    body_problem = first_state_mismatch(state, target, lambda key: not is_new(key))
    if body_problem:
        raise UserError(
            f"Checkpoint '{path}' does not fit this {type(model).__name__}: {body_problem}; "
            "build the model variant the checkpoint was saved from."
        )
    head_problem = first_state_mismatch(state, target, is_new)
    if head_problem and not replace_head:
        raise UserError(
            f"Checkpoint '{path}' has another classifier head than the model: {head_problem}; "
            "pass replace_head=True to keep the model's new head and load everything else."
        )
    if head_problem:
        state = {k: v for k, v in state.items() if not is_new(k)}
        state.update({k: v for k, v in target.items() if is_new(k)})  # keep the fresh head as it is
        warnings.warn(
            f"The head in '{path}' does not match the model; the head was re-initialised with "
            f"{getattr(model, 'num_classes', '?')} classes.",
            stacklevel=2,
        )
    model.load_state_dict(state, strict=True)
    return model


def check_architecture(entry: Weights, model: nn.Module, replace_head: bool = False) -> None:
    """Refuse, in one sentence naming both, a released file whose network is not ``model``'s (no download).

    The entry's network is built on the meta device (no memory) and compared tensor by tensor, the head aside;
    without ``replace_head`` the head's class count must match too (a 22K head on a 1K model is refused).
    """
    with torch.device("meta"):
        reference = entry.build()
    problem = first_state_mismatch(
        reference.state_dict(), model.state_dict(), lambda key: not (_is_head(key) or key.startswith("norm."))
    )
    if problem:
        wanted = entry.arch.kwargs.get("name", entry.arch.factory)
        raise UserError(
            f"{entry.name} is a {wanted} ({describe_network(reference)}) but the configured network is a "
            f"{describe_network(model)} ({problem}); set the network's name to {wanted} "
            f"(model.init_args.net.init_args.name: {wanted}) to use these weights"
        )
    classes = getattr(model, "num_classes", None)
    if replace_head or classes is None or classes == entry.num_classes:
        return
    if entry.num_classes == 0:
        raise UserError(
            f"{entry.name} has no classifier (pre-training only); fine-tune it with 'fit', which starts a new "
            "head, before validating, testing or predicting"
        )
    if entry.num_classes == IN22K_CLASSES:
        fine_tuned = entry.name.replace(".in22k", ".in22k_ft_in1k")
        hint = (
            f"use its ImageNet-1K fine-tuned weights {fine_tuned}"
            if fine_tuned in CATALOGUE
            else "fine-tune it"
        )
        raise UserError(
            f"{entry.name} has an ImageNet-22K head ({IN22K_CLASSES} classes) but the model has {classes} outputs; "
            f"{hint}, or fine-tune it with 'fit' (which replaces the head); no 22K->1K class mapping is applied"
        )
    raise UserError(
        f"{entry.name} has a {entry.num_classes}-class head but the model has {classes} outputs; evaluate it on "
        f"data with {entry.num_classes} classes, or fine-tune it with 'fit' (which replaces the head)"
    )


def describe_network(model: nn.Module) -> str:
    """A network's shape in a few words: ``ConvNeXt depths (3, 3, 9, 3), dims (96, ...), patch 4``."""
    words = [type(model).__name__]
    for attribute in ("depths", "dims", "depth", "num_features", "patch_size"):
        if hasattr(model, attribute) and not (attribute == "num_features" and hasattr(model, "dims")):
            words.append(f"{attribute.replace('num_features', 'dim')} {getattr(model, attribute)}")
    if any(name.endswith(".grn.gamma") for name, _ in model.named_parameters()):
        words.append("with GRN (V2)")
    return ", ".join(words)


def network_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's tensors of a LightningModule's state dict (``net.*``, prefix stripped): the module may hold
    more than the network (an EMA copy, metrics). A state dict without ``net.*`` keys is returned as it is."""
    if not any(k.startswith(_LIGHTNING_PREFIX) for k in state):
        return state
    return {k.removeprefix(_LIGHTNING_PREFIX): v for k, v in state.items() if k.startswith(_LIGHTNING_PREFIX)}


def to_official_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes and rename a timm state dict to the official names; official ones pass through.

    Args:
        state: a flat state dict, in any of the supported layouts.

    Returns:
        The same tensors under official names and shapes.
    """
    state = network_state(state)
    if is_fcmae(state):  # a ConvNeXt V2 FCMAE pre-training file: sparse encoder kernels -> dense
        state = fcmae_to_convnextv2(state)
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


def read_weights(source: str | Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The local file ``source`` names and its state dict under official names: every loader's first step.

    Args:
        source: a path, a released weights name, a URL or ``hf-hub:<repo>`` (see ``load_pretrained``); a name or
            URL is downloaded once into the cache, and a download that is no readable weights file is not kept.

    Raises:
        UserError: see :func:`read_state_dict` and :func:`convnext_pl.weights.download.resolve`.
    """
    path = resolve(source, check=read_state_dict).path
    return path, to_official_names(read_state_dict(path))


def load_whole_network(
    model: nn.Module,
    source: str | Path,
    what: str,
    network: str,
    remedy: str,
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> nn.Module:
    """Load the weights of a whole task network (segmentation, detection) into ``model``: every key must fit in
    name and shape; the first that does not is named in one sentence.

    Args:
        model: the network the file was saved from (backbone variant, class count, head widths).
        source: a path, a released name, a URL or ``hf-hub:<repo>`` (see :func:`read_weights`).
        what: the kind of checkpoint, for the message ("Detection checkpoint").
        network: what ``model`` is, for the message ("detector").
        remedy: the settings to build ``model`` with, for the message ("build the backbone variant ...").
        convert: maps the state dict of another code base's layout to ``model``'s (mmdet -> torchvision); it
            returns one already in ``model``'s layout unchanged.

    Raises:
        UserError: the file is missing, unreadable or no plain weights file, or does not fit ``model``.
    """
    path, state = read_weights(source)  # a Lightning checkpoint loses its `net.` prefix here
    if convert is not None:
        state = convert(state)
    problem = first_state_mismatch(state, model.state_dict())
    if problem:
        raise UserError(f"{what} '{path}' does not fit this {network}: {problem}; {remedy}.")
    model.load_state_dict(state, strict=True)
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a local weights file: safetensors, or a PyTorch file read with ``weights_only=True``
    (never unpickling code), unwrapped from an official (``model``), EMA or Lightning (``state_dict``) wrapper.

    Raises:
        UserError: the file is missing, damaged, holds Python objects other than tensors, or no state dict.
    """
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
