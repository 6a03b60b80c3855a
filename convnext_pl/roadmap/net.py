"""The network of the modernization roadmap (paper Sec. 2, Fig. 2): one set of switches, one network.

One frozen dataclass of architectural switches (:class:`RoadmapConfig`, defaults: ResNet-50) and one network
built from it (:class:`RoadmapNet`). The paper's steps, each a preset of these switches, are in ``roadmap.py``;
the weight renamings that load torchvision's ResNet-50 and ConvNeXt-T into the two ends are in ``conversions.py``.

Every block has three convolutions named by position (``conv1``, ``conv2``, ``conv3``, each followed by
``norm{i}``/``act{i}`` or an identity) so that one state-dict layout serves every step; the order of the
1x1 and the k x k convolution is what the switches change.
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerNorm2d

from convnext_pl.errors import UserError
from convnext_pl.models.convnext import LN_EPS, HierarchicalMixin, drop_path_rates, init_weights, scale_head

# The values each categorical switch of RoadmapConfig takes.
_CHOICES = {
    "stem": ("resnet", "patchify"),
    "act": ("relu", "gelu"),
    "acts_per_block": (1, 3),
    "norm": ("batch", "layer"),
    "norms_per_block": (1, 3),
    "downsampling": ("in_block", "separate"),
}


@dataclass(frozen=True)
class RoadmapConfig:
    """The architectural switches of the roadmap. Defaults are ResNet-50 (step 0).

    Args:
        depths: blocks per stage (ResNet-50 3,4,6,3; Swin-T's ratio 3,3,9,3 at step 2).
        dims: base width of each stage: the bottleneck's narrow width, or the residual width of an inverted
            bottleneck (ResNet 64..512; Swin-T's 96..768 at step 5). The stem outputs ``dims[0]`` channels.
        stem: ``"resnet"`` (7x7 conv stride 2, norm, activation, 3x3 max pool stride 2) or ``"patchify"``
            (a ``patch_size`` x ``patch_size`` conv with that stride, step 3).
        patch_size: total stride of the stem. Patchify: the conv's size and stride. ResNet stem: 4 is the
            original; 2 drops the max pool and 1 also the conv's stride (for small images).
        depthwise: the k x k convolution has one group per channel (step 4).
        inverted_bottleneck: blocks are C -> expansion*C -> C instead of expansion*C -> C -> expansion*C (step 6).
        depthwise_first: the k x k convolution comes first, before the two 1x1 layers (step 7).
        expansion: ratio of a block's wide and narrow widths (4 in ResNet and ConvNeXt).
        kernel_size: size of the block's k x k convolution (3; 7 from step 8).
        act: ``"relu"`` or ``"gelu"`` (step 9), in the blocks and the ResNet stem.
        acts_per_block: 3 (after conv1, conv2 and the residual sum, as ResNet) or 1 (after conv2 only, which
            is between the two 1x1 layers once the depthwise conv is first; step 10).
        norm: ``"batch"`` (BatchNorm) or ``"layer"`` (LayerNorm over channels, eps 1e-6; step 12).
        norms_per_block: 3 (after every conv) or 1 (after conv1 only, the depthwise conv; step 11). The
            projection shortcut keeps its own norm either way.
        downsampling: ``"in_block"`` (the first block of stages 2-4 has a stride-2 k x k conv and a stride-2
            1x1 projection shortcut, as ResNet) or ``"separate"`` (step 13: norm + 2x2 stride-2 conv between
            stages, a norm after the stem and one after global pooling, as Swin).
        layer_scale_init_value: per-channel scale on each residual branch (0: none). Part of the paper's
            training recipe (Table 5: layer scale 1e-6), so it switches on at step 1.
    """

    depths: tuple[int, ...] = (3, 4, 6, 3)
    dims: tuple[int, ...] = (64, 128, 256, 512)
    stem: Literal["resnet", "patchify"] = "resnet"
    patch_size: int = 4
    depthwise: bool = False
    inverted_bottleneck: bool = False
    depthwise_first: bool = False
    expansion: int = 4
    kernel_size: int = 3
    act: Literal["relu", "gelu"] = "relu"
    acts_per_block: int = 3
    norm: Literal["batch", "layer"] = "batch"
    norms_per_block: int = 3
    downsampling: Literal["in_block", "separate"] = "in_block"
    layer_scale_init_value: float = 0.0

    def __post_init__(self):
        # The switches are reachable from the command line through create_model, hence UserError.
        problems = [
            f"{name} must be one of {allowed}, not {getattr(self, name)!r}"
            for name, allowed in _CHOICES.items()
            if getattr(self, name) not in allowed
        ]
        if len(self.depths) != len(self.dims):
            problems.append(f"depths {self.depths} and dims {self.dims} need equal lengths")
        if self.stem == "resnet" and self.patch_size not in (1, 2, 4):
            problems.append(f"a ResNet stem's patch_size is 1, 2 or 4, not {self.patch_size}")
        if self.patch_size < 1:
            problems.append(f"patch_size must be positive, not {self.patch_size}")
        if self.kernel_size % 2 == 0:
            problems.append(f"kernel_size must be odd to keep the map size, not {self.kernel_size}")
        if problems:
            raise UserError(f"Invalid roadmap architecture: {problems[0]}.")

    @property
    def norm_after(self) -> tuple[bool, bool, bool]:
        """Whether a norm follows conv1, conv2, conv3 of a block."""
        return (True, True, True) if self.norms_per_block == 3 else (True, False, False)

    @property
    def act_after(self) -> tuple[bool, bool, bool]:
        """Whether an activation follows conv1, conv2 and the residual sum of a block (not conv3: ResNet)."""
        return (True, True, True) if self.acts_per_block == 3 else (False, True, False)

    def out_width(self, stage: int) -> int:
        """Channels of the residual stream in ``stage`` (what a block outputs)."""
        return self.dims[stage] if self.inverted_bottleneck else self.expansion * self.dims[stage]

    def conv_plan(self, in_chans: int, stage: int, stride: int) -> list[tuple[int, int, int, int, int]]:
        """The block's three convolutions as ``(in, out, kernel, stride, groups)``, in order.

        Used both to build :class:`RoadmapBlock` and to describe it in words, so the two cannot disagree.
        """
        out = self.out_width(stage)
        hidden = self.expansion * self.dims[stage] if self.inverted_bottleneck else self.dims[stage]
        k = self.kernel_size
        if self.depthwise_first:
            spatial = (in_chans, in_chans, k, stride, in_chans if self.depthwise else 1)
            return [spatial, (in_chans, hidden, 1, 1, 1), (hidden, out, 1, 1, 1)]
        spatial = (hidden, hidden, k, stride, hidden if self.depthwise else 1)
        return [(in_chans, hidden, 1, 1, 1), spatial, (hidden, out, 1, 1, 1)]


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else LayerNorm2d(channels, eps=LN_EPS)


def _act(kind: str) -> nn.Module:
    return nn.ReLU() if kind == "relu" else nn.GELU()


class RoadmapBlock(nn.Module):
    """A residual block of any roadmap step: three convs, their norms and activations, a shortcut.

    A conv has a bias unless a BatchNorm follows it: BatchNorm subtracts each channel's mean, which cancels a
    bias, while LayerNorm over channels does not (hence ResNet's bias-free convs and ConvNeXt's biased ones).

    Args:
        config: the architecture switches.
        in_chans: input channels.
        stage: index of the stage this block belongs to.
        stride: 2 in the first block of a stage that downsamples inside the block, else 1.
        drop_path: stochastic depth rate of this block.
    """

    def __init__(
        self, config: RoadmapConfig, in_chans: int, stage: int, stride: int = 1, drop_path: float = 0.0
    ):
        super().__init__()
        plan = config.conv_plan(in_chans, stage, stride)
        has_act = config.act_after
        for i, ((cin, cout, k, s, groups), norm) in enumerate(
            zip(plan, config.norm_after, strict=True), start=1
        ):
            bias = not (norm and config.norm == "batch")
            setattr(
                self, f"conv{i}", nn.Conv2d(cin, cout, k, stride=s, padding=k // 2, groups=groups, bias=bias)
            )
            setattr(self, f"norm{i}", _norm(config.norm, cout) if norm else nn.Identity())
        self.act1 = _act(config.act) if has_act[0] else nn.Identity()
        self.act2 = _act(config.act) if has_act[1] else nn.Identity()
        out = plan[-1][1]
        init = config.layer_scale_init_value
        self.gamma = nn.Parameter(torch.full((out,), init)) if init > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.shortcut = nn.Identity()
        if stride != 1 or in_chans != out:  # ResNet's projection shortcut: strided 1x1 conv + norm
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chans, out, 1, stride=stride, bias=config.norm != "batch"),
                _norm(config.norm, out),
            )
        self.act_out = _act(config.act) if has_act[2] else nn.Identity()  # after the residual sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.act1(self.norm1(self.conv1(x)))
        x = self.act2(self.norm2(self.conv2(x)))
        x = self.norm3(self.conv3(x))
        if self.gamma is not None:
            x = self.gamma.view(1, -1, 1, 1) * x  # (C,) -> (1, C, 1, 1), the official checkpoints' shape
        return self.act_out(shortcut + self.drop_path(x))


def _stem(config: RoadmapConfig, in_chans: int) -> nn.Sequential:
    width, p = config.dims[0], config.patch_size
    if config.stem == "resnet":
        layers = [
            nn.Conv2d(in_chans, width, 7, stride=min(p, 2), padding=3, bias=config.norm != "batch"),
            _norm(config.norm, width),
            _act(config.act),
        ]
        if p == 4:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        return nn.Sequential(*layers)
    if config.downsampling == "separate":  # Sec. 2.6: a norm after the stem, as Swin
        return nn.Sequential(nn.Conv2d(in_chans, width, p, stride=p), _norm(config.norm, width))
    return nn.Sequential(nn.Conv2d(in_chans, width, p, stride=p))


class RoadmapNet(HierarchicalMixin, nn.Module):
    """The network of any roadmap step, with the research interface of :class:`ConvNeXt`.

    Parameters follow the official layout where it exists: ``downsample_layers.0`` is the stem,
    ``downsample_layers.{1,2,3}`` the separate downsampling layers (identities while blocks downsample),
    ``stages.{i}.{j}`` the blocks, ``norm`` the norm after pooling (identity before step 13), ``head``.

    Args:
        config: the architecture switches.
        in_chans: input channels.
        num_classes: classifier outputs; 0 removes the head.
        drop_path_rate: stochastic depth rate of the last block; rates grow linearly from 0 over all blocks.
        head_init_scale: factor applied to the initial head weights and bias (0.001 when fine-tuning).
    """

    def __init__(
        self,
        config: RoadmapConfig = RoadmapConfig(),
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_path_rate: float = 0.0,
        head_init_scale: float = 1.0,
    ):
        super().__init__()
        self.config, self.depths, self.dims = config, config.depths, config.dims
        self.patch_size, self.num_classes = config.patch_size, num_classes
        separate = config.downsampling == "separate"
        widths = [config.out_width(i) for i in range(len(config.depths))]
        self.num_features = widths[-1]

        self.downsample_layers = nn.ModuleList([_stem(config, in_chans)])
        for i in range(1, len(widths)):
            self.downsample_layers.append(
                nn.Sequential(
                    _norm(config.norm, widths[i - 1]), nn.Conv2d(widths[i - 1], widths[i], 2, stride=2)
                )
                if separate
                else nn.Identity()
            )

        self.stages, in_chans = nn.ModuleList(), config.dims[0]
        for i, rates in enumerate(drop_path_rates(drop_path_rate, config.depths)):
            if separate and i > 0:
                in_chans = widths[i]  # the downsampling layer already changed the width
            blocks = []
            for j, rate in enumerate(rates):
                stride = 2 if (i > 0 and j == 0 and not separate) else 1
                blocks.append(RoadmapBlock(config, in_chans, i, stride, rate))
                in_chans = widths[i]
            self.stages.append(nn.Sequential(*blocks))

        if separate:  # Sec. 2.6: a norm after global pooling, as Swin
            self.norm = (
                nn.LayerNorm(widths[-1], eps=LN_EPS) if config.norm == "layer" else nn.BatchNorm1d(widths[-1])
            )
        else:
            self.norm = nn.Identity()
        self.head = nn.Linear(widths[-1], num_classes) if num_classes > 0 else nn.Identity()
        # One init for every step (ConvNeXt's truncated normal) so that the init is not a hidden difference.
        self.apply(init_weights)
        scale_head(self.head, head_init_scale)
