"""UperNet (Xiao et al., 2018) with a ConvNeXt backbone and mmsegmentation's auxiliary FCN head.

The structure and every parameter name follow mmsegmentation 0.x (``decode_heads/uper_head.py``,
``psp_head.py`` for the pyramid pooling module, ``fcn_head.py``, ``segmentors/encoder_decoder.py``), which the
official ConvNeXt ADE20K code runs on (docs/paper.md §6), so the released checkpoints
(``{"state_dict": ..., "meta": ...}`` with ``backbone.`` / ``decode_head.`` / ``auxiliary_head.`` keys) load as
they are. Written by hand because no maintained library has these heads under these names (mmseg needs
mmcv 1.x, which does not install on current PyTorch; the Hugging Face port renames every key); the pieces
are torchvision's ``Conv2dNormActivation`` and ``F.interpolate``.
"""

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from jsonargparse.typing import PositiveInt
from torchvision.ops.misc import Conv2dNormActivation

from convnext_pl.models.backbone import ConvNeXtBackbone, create_backbone
from convnext_pl.models.registry import DropPathRate
from convnext_pl.ranges import RightOpenUnitInterval


def conv_module(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """mmcv's ``ConvModule`` (conv without bias -> BatchNorm -> ReLU) under its names ``conv``, ``bn``.

    torchvision builds the layers (same padding, no bias before a norm); they are re-keyed because
    ``Conv2dNormActivation`` numbers its children (``0``, ``1``) where the checkpoints say ``conv``, ``bn``.
    BatchNorm becomes SyncBatchNorm under DDP with Lightning's ``sync_batchnorm=True``, as the official SyncBN.
    """
    layers = Conv2dNormActivation(in_channels, out_channels, kernel_size)
    module = nn.Sequential(OrderedDict(zip(("conv", "bn", "activate"), layers, strict=True)))
    # mmcv ConvModule.init_weights: kaiming normal (fan_out, relu) for the conv, BN weight 1 and bias 0.
    nn.init.kaiming_normal_(module.conv.weight, mode="fan_out", nonlinearity="relu")
    return module


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False`` (the official configs' setting)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SegHead(nn.Module):
    """mmseg ``BaseDecodeHead``'s classifier part: dropout 0.1 then a 1x1 ``conv_seg`` to the class scores."""

    def __init__(self, channels: int, num_classes: int, dropout_ratio: float):
        super().__init__()
        self.num_classes = num_classes
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg BaseDecodeHead.init_weights
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UPerHead(SegHead):
    """UperNet decoder: pyramid pooling on the last map, a top-down FPN, all levels fused at the finest stride.

    Args:
        in_channels: channels of the backbone maps, finest first (ConvNeXt-T: 96, 192, 384, 768).
        num_classes: output classes.
        channels: width of every conv of the head (512 in the official configs).
        pool_scales: output sizes of the pyramid pooling (1, 2, 3, 6).
        dropout_ratio: dropout before the classifier (0.1).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout_ratio: float = 0.1,
    ):
        super().__init__(channels, num_classes, dropout_ratio)
        # psp_modules.{i} = (adaptive pool, ConvModule 1x1): mmseg PPM, keys psp_modules.{i}.1.{conv,bn}.
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), conv_module(in_channels[-1], channels, 1))
            for scale in pool_scales
        )
        self.bottleneck = conv_module(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(conv_module(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(conv_module(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = conv_module(len(in_channels) * channels, channels, 3)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [resize(ppm(x), x.shape[2:]) for ppm in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))  # (N, C_last + 4 * channels, h, w) -> channels

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Backbone maps (finest first) -> (N, num_classes, H / 4, W / 4) scores at the finest map's size."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features, strict=False)]
        laterals.append(self.psp_forward(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: add the coarser level, upsampled
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=False)] + [laterals[-1]]
        size = outs[0].shape[2:]
        fused = torch.cat(
            [outs[0]] + [resize(o, size) for o in outs[1:]], dim=1
        )  # (N, 4 * channels, H/4, W/4)
        return self.cls_seg(self.fpn_bottleneck(fused))


class FCNHead(SegHead):
    """mmseg ``FCNHead`` as the auxiliary head: ``num_convs`` 3x3 ConvModules (``convs.{i}``), no input concat."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        num_convs: int = 1,
        dropout_ratio: float = 0.1,
    ):
        super().__init__(channels, num_classes, dropout_ratio)
        self.convs = nn.Sequential(
            *(conv_module(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x))


class UperNet(nn.Module):
    """mmseg ``EncoderDecoder``: backbone, UPerHead on all maps, optional FCN auxiliary head on one map.

    Args:
        backbone: the dense-prediction ConvNeXt (four maps, see :mod:`convnext_pl.models.backbone`).
        num_classes: output classes (150 for ADE20K).
        channels: UPerHead width (512).
        aux_channels: auxiliary head width (256); 0 drops the auxiliary head.
        aux_in_index: the backbone map the auxiliary head reads (2: stride 16, as in the official configs).
        pool_scales: pyramid pooling sizes.
        dropout_ratio: dropout before both classifiers.
    """

    def __init__(
        self,
        backbone: ConvNeXtBackbone,
        num_classes: int,
        channels: int = 512,
        aux_channels: int = 256,
        aux_in_index: int = 2,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout_ratio: float = 0.1,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.decode_head = UPerHead(backbone.out_channels, num_classes, channels, pool_scales, dropout_ratio)
        self.aux_in_index = aux_in_index
        self.auxiliary_head = (
            FCNHead(
                backbone.out_channels[aux_in_index], num_classes, aux_channels, dropout_ratio=dropout_ratio
            )
            if aux_channels > 0
            else None
        )

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw scores of each head at its own stride: ``{"decode": (N, K, H/4, W/4), "aux": (N, K, H/16, W/16)}``.

        The auxiliary scores are only computed in training mode (mmseg uses them for the loss only).
        """
        features = self.backbone(x)
        out = {"decode": self.decode_head(features)}
        if self.auxiliary_head is not None and self.training:
            out["aux"] = self.auxiliary_head(features[self.aux_in_index])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes, H, W) scores, upsampled to the input (mmseg ``encode_decode``)."""
        return resize(self.forward_heads(x)["decode"], x.shape[2:])


def create_upernet(
    backbone: str = "convnext_tiny",
    num_classes: int = 150,
    drop_path_rate: DropPathRate = 0.0,
    channels: PositiveInt = 512,
    aux_channels: PositiveInt = 256,
    pool_scales: Sequence[PositiveInt] = (1, 2, 3, 6),
    dropout_ratio: RightOpenUnitInterval = 0.1,
    **backbone_options,
) -> UperNet:
    """UperNet on a named backbone (official ADE20K configs: ``channels`` 512, auxiliary 256, pools 1-2-3-6).

    Args:
        backbone: a hierarchical model name (``convnext_tiny``, ``convnextv2_atto``, ...).
        num_classes: output classes.
        drop_path_rate: backbone stochastic depth (0.4 / 0.3 / 0.4 for T / S / B, docs/paper.md §6).
        channels, aux_channels, pool_scales, dropout_ratio: see :class:`UperNet`.
        **backbone_options: other options of ``create_backbone`` (``layer_scale_init_value``, ``patch_size``...).
    """
    net = create_backbone(backbone, drop_path_rate=drop_path_rate, **backbone_options)
    return UperNet(
        net, num_classes, channels, aux_channels, pool_scales=pool_scales, dropout_ratio=dropout_ratio
    )
