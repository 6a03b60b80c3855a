"""Named model variants as data, and ``create_model`` to build one by name."""

from collections.abc import Callable
from functools import partial

import torch.nn as nn

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
    drop_path_rate: float | None = None,
    layer_scale_init_value: float | None = None,
    head_init_scale: float | None = None,
    kernel_size: int | None = None,
    patch_size: int | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: one of :func:`list_models` (``convnext_tiny``, ``convnextv2_atto``, ``convnext_iso_small``, ...).
        num_classes: classifier outputs (None: 1000, the ImageNet-1K head; 0: no head). From the CLI, None
            means "follow the data".
        in_chans: input channels.
        drop_path_rate: final stochastic depth rate (None: the model's default, 0).
        layer_scale_init_value: initial layer scale (None: 1e-6 for V1, off for V2 and isotropic).
        head_init_scale: head init factor (None: 1.0; 0.001 for fine-tuning).
        kernel_size: depthwise kernel size (None: 7).
        patch_size: stem patch size (None: 4, or 16 for isotropic; 1 or 2 for small images).
        **overrides: any other constructor argument of the model class.

    Raises:
        UserError: for an unknown name (the message lists the valid names).
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
    try:
        return _MODELS[name](
            num_classes=1000 if num_classes is None else num_classes,
            in_chans=in_chans,
            **options,
            **overrides,
        )
    except TypeError as e:
        raise UserError(f"Model '{name}' does not accept these options: {e}.") from e
