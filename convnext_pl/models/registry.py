"""Named model variants as data, and ``create_model`` to build one by name."""

from collections.abc import Callable
from functools import partial

import torch.nn as nn
from jsonargparse.typing import NonNegativeFloat, PositiveInt, extend_base_type

from convnext_pl.errors import UserError
from convnext_pl.models.convnext import ConvNeXt, ConvNeXtIsotropic

# Stage depths and widths. T/S/B/L/XL: paper Sec. 3.1; atto..nano: timm's small variants
# (widths double at every stage); huge: ConvNeXt V2.
SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}
# Isotropic ConvNeXt, paper Sec. 3.3 / official convnext_isotropic.py: (depth, width).
ISOTROPIC_SIZES = {"small": (18, 384), "base": (18, 768), "large": (36, 1024)}

_MODELS: dict[str, Callable[..., nn.Module]] = {}

# The ranges of create_model's options, declared on their types: jsonargparse checks them when the CLI parses a
# config (one error line naming the option), and create_model checks them for a call from Python. Both types are
# registered under their own key: restricted_number_type's [0, 1) key is already taken by convnext_pl.ranges'
# RightOpenUnitInterval, and jsonargparse allows one name per key.


def _in_0_1(cls, value) -> None:
    # 1 would drop the last block for every sample (and torch's bernoulli_ fails above it).
    # The CLI hands the value over as written (a string); a bool is not a rate.
    try:
        rate = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        rate = None
    if rate is None or not 0 <= rate < 1:
        raise ValueError(f"{value} is not a number in [0, 1)")


def _odd_positive(cls, value) -> None:
    # A depthwise kernel is centred on its pixel (padding kernel_size // 2 keeps the map's size): odd only.
    try:
        size = None if isinstance(value, bool | float) else int(value)
    except (TypeError, ValueError):
        size = None
    if size is None or size < 1 or size % 2 == 0:
        raise ValueError(f"{value} is not an odd positive integer")


DropPathRate = extend_base_type("DropPathRate", float, _in_0_1, register_key=("DropPathRate",))
OddPositiveInt = extend_base_type("OddPositiveInt", int, _odd_positive, register_key=("OddPositiveInt",))
_OPTION_TYPES = {
    "drop_path_rate": (DropPathRate, "in [0, 1)"),
    "layer_scale_init_value": (NonNegativeFloat, "at least 0"),
    "head_init_scale": (NonNegativeFloat, "at least 0"),
    "kernel_size": (OddPositiveInt, "odd and positive"),
    "patch_size": (PositiveInt, "positive"),
}


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make ``factory`` available as ``create_model(name, ...)``; names must be unique."""
    if name in _MODELS:
        raise ValueError(f"model name '{name}' is already registered")
    _MODELS[name] = factory


def list_models() -> list[str]:
    """All names ``create_model`` accepts, sorted."""
    return sorted(_MODELS)


for _size, (_depths, _dims) in SIZES.items():
    if _size != "huge":  # ConvNeXt V1 has no huge
        register_model(f"convnext_{_size}", partial(ConvNeXt, depths=_depths, dims=_dims))
    if _size == "xlarge":  # ConvNeXt V2 (paper and timm) has no XL: no reference numbers or weights exist
        continue
    # V2: GRN after GELU and no layer scale (Woo et al., 2023, Sec. 3).
    register_model(
        f"convnextv2_{_size}",
        partial(ConvNeXt, depths=_depths, dims=_dims, use_grn=True, layer_scale_init_value=0.0),
    )
for _size, (_depth, _dim) in ISOTROPIC_SIZES.items():
    register_model(f"convnext_iso_{_size}", partial(ConvNeXtIsotropic, depth=_depth, dim=_dim))


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int = 3,
    drop_path_rate: DropPathRate | None = None,
    layer_scale_init_value: NonNegativeFloat | None = None,
    head_init_scale: NonNegativeFloat | None = None,
    kernel_size: OddPositiveInt | None = None,
    patch_size: PositiveInt | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: one of :func:`list_models` (``convnext_tiny``, ``convnextv2_atto``, ``convnext_iso_small``, ...).
        num_classes: classifier outputs (None: 1000, the ImageNet-1K head; 0: no head). From the CLI, None
            means "follow the data".
        in_chans: input channels.
        drop_path_rate: final stochastic depth rate in [0, 1) (None: the model's default, 0).
        layer_scale_init_value: initial layer scale, >= 0 (None: 1e-6 for V1, off for V2 and isotropic).
        head_init_scale: head init factor, >= 0 (None: 1.0; 0.001 for fine-tuning).
        kernel_size: depthwise kernel size, odd and positive (None: 7).
        patch_size: stem patch size, positive (None: 4, or 16 for isotropic; 1 or 2 for small images).
        **overrides: any other constructor argument of the model class.

    Raises:
        UserError: for an unknown name (the message lists the valid names) or an option outside its range.
    """
    if name not in _MODELS:
        raise UserError(f"Unknown model '{name}'. Valid names: {', '.join(list_models())}.")
    options = dict(
        drop_path_rate=drop_path_rate,
        layer_scale_init_value=layer_scale_init_value,
        head_init_scale=head_init_scale,
        kernel_size=kernel_size,
        patch_size=patch_size,
    )
    options = {k: v for k, v in options.items() if v is not None}  # None: keep the variant's default
    for option, value in options.items():
        option_type, valid = _OPTION_TYPES[option]
        try:
            option_type(value)
        except (TypeError, ValueError) as e:
            raise UserError(f"{option} must be {valid}, got {value!r}.") from e
    try:
        return _MODELS[name](
            num_classes=1000 if num_classes is None else num_classes,
            in_chans=in_chans,
            **options,
            **overrides,
        )
    except TypeError as e:
        raise UserError(f"Model '{name}' does not accept these options: {e}.") from e
