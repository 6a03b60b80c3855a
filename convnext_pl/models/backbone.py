"""ConvNeXt as a backbone for dense prediction (segmentation, detection): four stage maps, each through a norm.

As in the official ``semantic_segmentation/backbone/convnext.py`` and ``object_detection/backbone/convnext.py``
(docs/paper.md §6): the classification network without its final ``norm`` and ``head``, plus one
channels-first LayerNorm (eps 1e-6) on every returned stage output, named ``norm0``..``norm3``. The parameter
names are the official ones, so inside a segmentation or detection model (attribute ``backbone``) the keys read
``backbone.downsample_layers.0.0.weight``, ``backbone.stages.2.5.pwconv1.weight``, ``backbone.norm3.weight``
and the released ADE20K / COCO checkpoints load without renaming.

The layer ids for layer-wise lr decay are in ``layer_ids.py``; loading ImageNet weights into a backbone is in
``convnext_pl/weights/dense.py``.
"""

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from torch.utils.checkpoint import checkpoint

from convnext_pl.errors import UserError
from convnext_pl.models.convnext import LN_EPS
from convnext_pl.models.registry import create_model


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
    **overrides,
) -> ConvNeXtBackbone:
    """Build the dense-prediction backbone of a registered model (ImageNet weights load through
    :func:`convnext_pl.weights.dense.load_backbone_weights`, which the tasks call).

    Args:
        name: a hierarchical model of :func:`convnext_pl.models.list_models` (``convnext_tiny``,
            ``convnextv2_base``, ``roadmap_*``, ...).
        drop_path_rate: final stochastic depth rate (docs/paper.md §6: 0.4 / 0.3 / 0.4 for T / S / B on ADE20K).
        out_indices: the stages whose (normalised) outputs ``forward`` returns.
        **overrides: any other option of :func:`convnext_pl.models.create_model` (``layer_scale_init_value``...).
    """
    return ConvNeXtBackbone(create_model(name, drop_path_rate=drop_path_rate, **overrides), out_indices)
