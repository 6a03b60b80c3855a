"""Weights of the FCMAE pre-training network (:class:`convnext_pl.models.fcmae.FCMAE`), in and out.

Three layouts reach it:

- the released pre-training files (``convnextv2/pt_only/*_fcmae.pt``, the catalogue's ``*.fcmae`` names): the
  official sparse encoder (MinkowskiEngine kernels under ``encoder.``) and the dense decoder (``proj``,
  ``mask_token``, ``decoder.*``, ``pred``); the encoder is mapped to the dense layout, the decoder kept;
- this project's pre-training checkpoints (Lightning, ``net.encoder.*`` ...): already the model's layout;
- an encoder alone (timm's ``*.fcmae`` files, which leave the decoder out, or any ConvNeXt classifier's weights):
  the encoder loads, the decoder keeps its fresh initialisation, and a warning says so.

:func:`released_layout` writes the model's state back in the released layout, for the official code to read.
The classifier fine-tunes from any of them through ``convnext_pl.weights.loading`` (its FCMAE branch keeps the
encoder).
"""

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from convnext_pl.errors import UserError
from convnext_pl.weights.conversions import (
    FCMAE_DECODER_KEYS,
    FCMAE_PREFIX,
    convnextv2_to_fcmae,
    fcmae_to_convnextv2,
)
from convnext_pl.weights.download import resolve
from convnext_pl.weights.loading import network_state, read_state_dict, to_official_names
from convnext_pl.weights.state_dict import first_state_mismatch


def is_decoder_key(key: str) -> bool:
    return key.split(".")[0] in FCMAE_DECODER_KEYS


def fcmae_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any of the module docstring's layouts in the FCMAE model's names: ``encoder.*`` dense, the decoder as is."""
    state = network_state(state)
    decoder = {k: v for k, v in state.items() if is_decoder_key(k)}
    if any(k.startswith(FCMAE_PREFIX) for k in state):  # released (sparse) or this project's (dense) FCMAE
        encoder = fcmae_to_convnextv2(state)  # dense keys pass through unchanged; drops the decoder
    else:  # an encoder alone, in official or timm names
        encoder = {
            k: v for k, v in to_official_names(state).items() if k.split(".")[0] not in ("norm", "head")
        }
    return {**{FCMAE_PREFIX + k: v for k, v in encoder.items()}, **decoder}


def released_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The FCMAE model's state dict in the released files' layout (sparse encoder kernels, dense decoder)."""
    encoder = {k.removeprefix(FCMAE_PREFIX): v for k, v in state.items() if k.startswith(FCMAE_PREFIX)}
    return {**convnextv2_to_fcmae(encoder), **{k: v for k, v in state.items() if is_decoder_key(k)}}


def load_fcmae_weights(model: nn.Module, source: str | Path) -> Path:
    """Load ``source`` (a released name, URL, ``hf-hub:`` id or file, see the module docstring) into ``model``.

    Every encoder key must fit in name and shape; the decoder must fit too when the file has one.

    Returns:
        The local file read.

    Raises:
        UserError: the file is missing or unreadable, or does not fit ``model`` (the first key that does not is
            named, with the encoder to build instead).
    """
    path = resolve(source, check=read_state_dict).path
    state = fcmae_layout(read_state_dict(path))
    expected = model.state_dict()
    has_decoder = any(is_decoder_key(k) for k in state)
    selected = None if has_decoder else (lambda key: not is_decoder_key(key))
    problem = first_state_mismatch(state, expected, selected=selected)
    if problem:
        raise UserError(
            f"FCMAE weights '{path}' do not fit this FCMAE network: {problem}; build the encoder variant, stem "
            "patch size, decoder depth/dim and channels the file was saved with"
        )
    if not has_decoder:
        warnings.warn(
            f"'{path}' holds an encoder without the FCMAE decoder (timm's *.fcmae files leave it out): the "
            "encoder is loaded, the decoder starts from its initialisation",
            UserWarning,
            stacklevel=2,
        )
        state = {**{k: v for k, v in expected.items() if is_decoder_key(k)}, **state}
    model.load_state_dict(state, strict=True)
    return path
