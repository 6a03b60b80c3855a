"""ConvNeXt as a backbone for dense prediction (segmentation, detection): four stage maps, each through a norm.

As in the official ``semantic_segmentation/backbone/convnext.py`` and ``object_detection/backbone/convnext.py``
(docs/paper.md §6): the classification network without its final ``norm`` and ``head``, plus one
channels-first LayerNorm (eps 1e-6) on every returned stage output, named ``norm0``..``norm3``. The parameter
names are the official ones, so inside a segmentation or detection model (attribute ``backbone``) the keys read
``backbone.downsample_layers.0.0.weight``, ``backbone.stages.2.5.pwconv1.weight``, ``backbone.norm3.weight``
and the released ADE20K / COCO checkpoints load without renaming.

The layer ids for layer-wise lr decay are the official ``mmcv_custom/layer_decay_optimizer_constructor.py``
functions, in both flavours ("layer_wise", "stage_wise"), on the parameter names of the whole model.
"""

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from torch.utils.checkpoint import checkpoint

from convnext_pl.errors import UserError
from convnext_pl.models.convnext import LN_EPS
from convnext_pl.models.registry import create_model
from convnext_pl.weights.loading import load_pretrained

DECAY_TYPES = ("layer_wise", "stage_wise")
_PREFIX = "backbone."  # the attribute name of the backbone in the task models, as in mmseg/mmdet


class ConvNeXtBackbone(nn.Module):
    """The stem, downsampling layers and stages of a hierarchical ConvNeXt, returning normalised stage maps.

    Args:
        net: a four-stage network of this package (``ConvNeXt``, V2 or a roadmap step) whose
            ``downsample_layers`` and ``stages`` are taken over; its ``norm`` and ``head`` are dropped.
        out_indices: the stages whose outputs are returned (strides 4, 8, 16, 32 for the paper's stem).
    """

    def __init__(self, net: nn.Module, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        if not (hasattr(net, "downsample_layers") and hasattr(net, "stages")):
            raise UserError(
                f"{type(net).__name__} has no stages to take feature maps from; use a hierarchical ConvNeXt "
                "(convnext_*, convnextv2_* or a roadmap step) as the backbone."
            )
        num_stages = len(net.stages)
        if not out_indices or any(i not in range(num_stages) for i in out_indices):
            raise UserError(f"out_indices {tuple(out_indices)} must be stage numbers in 0..{num_stages - 1}.")
        self.out_indices = tuple(out_indices)
        self.depths = tuple(net.depths)
        self.downsample_layers = net.downsample_layers
        self.stages = net.stages
        widths = _stage_widths(net)
        self.out_channels = [widths[i] for i in self.out_indices]
        self.strides = [net.patch_size * 2**i for i in self.out_indices]
        for i in self.out_indices:  # official names norm0..norm3, one per returned map
            self.add_module(f"norm{i}", LayerNorm2d(widths[i], eps=LN_EPS))
        self.grad_checkpointing = False
        # The classifier's final norm, kept outside the module tree (no parameter, no checkpoint key): ImageNet
        # files are loaded through the classification layout it completes (see load_backbone_weights).
        self._classifier_norm = (net.norm,)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> one (N, out_channels[k], H / strides[k], W / strides[k]) map per out index."""
        outputs = []
        for i, (downsample, stage) in enumerate(zip(self.downsample_layers, self.stages, strict=True)):
            x = downsample(x)
            for block in stage:
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            if i in self.out_indices:
                outputs.append(getattr(self, f"norm{i}")(x))
            if i == self.out_indices[-1]:
                break  # later stages feed nothing
        return outputs


def _stage_widths(net: nn.Module) -> list[int]:
    # A roadmap step's blocks may widen their output (config.out_width); a ConvNeXt stage keeps dims[i].
    config = getattr(net, "config", None)
    if config is not None and hasattr(config, "out_width"):
        return [config.out_width(i) for i in range(len(net.stages))]
    return list(net.dims)


def create_backbone(
    name: str,
    drop_path_rate: float = 0.0,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    pretrained: str | Path | None = None,
    **overrides,
) -> ConvNeXtBackbone:
    """Build the dense-prediction backbone of a registered model, optionally from ImageNet weights.

    Args:
        name: a hierarchical model of :func:`convnext_pl.models.list_models` (``convnext_tiny``,
            ``convnextv2_base``, ``roadmap_*``, ...).
        drop_path_rate: final stochastic depth rate (docs/paper.md §6: 0.4 / 0.3 / 0.4 for T / S / B on ADE20K).
        out_indices: the stages whose (normalised) outputs ``forward`` returns.
        pretrained: a classification checkpoint (official, timm or this project's) to start from; its final
            ``norm`` and ``head`` are ignored and ``norm0..3`` start fresh, as in the official code.
        **overrides: any other option of :func:`convnext_pl.models.create_model` (``layer_scale_init_value``...).
    """
    backbone = ConvNeXtBackbone(create_model(name, drop_path_rate=drop_path_rate, **overrides), out_indices)
    if pretrained is not None:
        load_backbone_weights(backbone, pretrained)
    return backbone


class _ClassificationLayout(nn.Module):
    # The backbone's own stem and stages (shared, not copied) under the classification names, with a throwaway
    # final norm and no head: what ImageNet files hold, so load_pretrained's checks and conversions apply.
    def __init__(self, backbone: ConvNeXtBackbone):
        super().__init__()
        self.downsample_layers, self.stages = backbone.downsample_layers, backbone.stages
        self.norm, self.head = backbone._classifier_norm[0], nn.Identity()


def load_backbone_weights(backbone: ConvNeXtBackbone, source: str | Path) -> ConvNeXtBackbone:
    """Load ImageNet classification weights (a released name, URL or file, as ``load_pretrained`` takes) into
    the stem and stages in place; the file's head and final norm are ignored, ``norm0..3`` keep their values."""
    with warnings.catch_warnings():
        # The classifier head is discarded, so a file with another class count is no news.
        warnings.filterwarnings("ignore", message="The head in .* does not match the model")
        load_pretrained(_ClassificationLayout(backbone), source, replace_head=True)
    return backbone


def layer_id_layer_wise(name: str, num_layers: int) -> int:
    """Official ``get_num_layer_layer_wise``: the id of a parameter of the whole model (``backbone.`` prefix).

    Stem 0; stage 0 -> 1; downsampling 1 and stage 1 -> 2; downsampling 2 -> 3; stage 2 block j -> 3 + j // 3;
    downsampling 3 and stage 3 -> ``num_layers``; everything else (norm0..3, neck, heads) ``num_layers + 1``.
    """
    parts = name.split(".")
    if name.startswith(_PREFIX + "downsample_layers."):
        return {0: 0, 1: 2, 2: 3, 3: num_layers}[int(parts[2])]
    if name.startswith(_PREFIX + "stages."):
        stage, block = int(parts[2]), int(parts[3])
        return {0: 1, 1: 2, 2: 3 + block // 3, 3: num_layers}[stage]
    return num_layers + 1


def layer_id_stage_wise(name: str, num_layers: int) -> int:
    """Official ``get_num_layer_stage_wise``: downsampling layers 0, stage i -> i + 1, everything else N + 1.

    The official constructor calls it with ``num_layers + 2`` and returns that minus 1 for the rest, which is
    the ``num_layers + 1`` used here, so both flavours share the scale rule of :func:`lr_scale`.
    """
    parts = name.split(".")
    if name.startswith(_PREFIX + "downsample_layers."):
        return 0
    if name.startswith(_PREFIX + "stages."):
        return int(parts[2]) + 1
    return num_layers + 1


def dense_layer_ids(
    model: nn.Module, decay_type: str, num_layers: int, backbone_prefix: str = _PREFIX
) -> dict[str, int]:
    """Layer id of every parameter of a segmentation/detection model whose ConvNeXt is under ``backbone_prefix``.

    Args:
        model: the whole model.
        decay_type: "layer_wise" or "stage_wise" (official ``paramwise_cfg.decay_type``).
        num_layers: official ``paramwise_cfg.num_layers`` (6 for T stage-wise, 12 for S/B layer-wise).
        backbone_prefix: where the ConvNeXt's parameters are named (mmseg and mmdet: ``backbone.``; torchvision's
            detectors: ``backbone.body.``), read as ``backbone.`` by the official functions; every other
            parameter (neck, heads) gets ``num_layers + 1``, the full lr.
    """
    if decay_type not in DECAY_TYPES:
        raise UserError(f"decay_type '{decay_type}' is unknown; use one of {', '.join(DECAY_TYPES)}.")
    layer_id = layer_id_layer_wise if decay_type == "layer_wise" else layer_id_stage_wise
    return {
        name: (
            layer_id(_PREFIX + name.removeprefix(backbone_prefix), num_layers)
            if name.startswith(backbone_prefix)
            else num_layers + 1
        )
        for name, _ in model.named_parameters()
    }


def lr_scale(layer_id: int, num_layers: int, decay_rate: float) -> float:
    """Official scale ``decay_rate ** (num_layers + 1 - layer_id)``: the heads (id N + 1) train at the full lr."""
    return decay_rate ** (num_layers + 1 - layer_id)
