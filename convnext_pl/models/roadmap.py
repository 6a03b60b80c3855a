"""The modernization roadmap (paper Sec. 2, Fig. 2): ResNet-50 turned into ConvNeXt-T one change at a time.

One frozen dataclass of architectural switches (:class:`RoadmapConfig`) and one network built from it
(:class:`RoadmapNet`). Every step of the roadmap is a preset that changes exactly one field of the step before
(:data:`STEPS`); each is registered as ``roadmap_NN_<name>`` so ``create_model`` builds it. Step 0 is
torchvision's ResNet-50 (its weights load after :func:`remap_torchvision_resnet`), step 13 is ConvNeXt-T (the
official/``convnext_tiny`` weights load after :func:`remap_convnext`).

Every block has three convolutions named by position (``conv1``, ``conv2``, ``conv3``, each followed by
``norm{i}``/``act{i}`` or an identity) so that one state-dict layout serves every step; the order of the
1x1 and the k x k convolution is what the switches change.
"""

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Literal

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerNorm2d

from convnext_pl.errors import UserError
from convnext_pl.models.convnext import LN_EPS, HierarchicalMixin, _init_weights, _scale_head
from convnext_pl.models.registry import register_model

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

        rates = torch.linspace(0, drop_path_rate, sum(config.depths), device="cpu").tolist()  # one per block
        self.stages, in_chans = nn.ModuleList(), config.dims[0]
        for i, depth in enumerate(config.depths):
            if separate and i > 0:
                in_chans = widths[i]  # the downsampling layer already changed the width
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0 and not separate) else 1
                blocks.append(RoadmapBlock(config, in_chans, i, stride, rates[sum(config.depths[:i]) + j]))
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
        self.apply(_init_weights)
        _scale_head(self.head, head_init_scale)


def remap_torchvision_resnet(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ResNet state dict (``conv1``, ``bn1``, ``layer1.0.bn1``, ``fc``) to step 0's names."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "conv1":
            parts = ["downsample_layers", "0", "0", *parts[1:]]
        elif parts[0] == "bn1":
            parts = ["downsample_layers", "0", "1", *parts[1:]]
        elif parts[0] == "fc":
            parts = ["head", *parts[1:]]
        elif parts[0].startswith("layer"):  # layer{i}.{j}.bn{k} -> stages.{i-1}.{j}.norm{k}
            stage, block, rest = int(parts[0].removeprefix("layer")) - 1, parts[1], parts[2:]
            rest[0] = rest[0].replace("bn", "norm").replace("downsample", "shortcut")
            parts = ["stages", str(stage), block, *rest]
        out[".".join(parts)] = value
    return out


_CONVNEXT_BLOCK_NAMES = {"dwconv": "conv1", "norm": "norm1", "pwconv1": "conv2", "pwconv2": "conv3"}


def remap_convnext(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official-layout ConvNeXt state dict (``convnext_tiny``, official files) to step 13's names.

    ``dwconv``/``norm``/``pwconv1``/``pwconv2`` become ``conv1``/``norm1``/``conv2``/``conv3``; the pointwise
    Linear weights (out, in) become 1x1 conv weights (out, in, 1, 1), the same function on NCHW.
    """
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "stages" and parts[3] in _CONVNEXT_BLOCK_NAMES:
            parts[3] = _CONVNEXT_BLOCK_NAMES[parts[3]]
            if parts[3] in ("conv2", "conv3") and parts[4] == "weight":
                value = value[:, :, None, None]  # (out, in) -> (out, in, 1, 1)
        out[".".join(parts)] = value
    return out


def config_diff(before: RoadmapConfig, after: RoadmapConfig) -> set[str]:
    """Names of the fields that differ between two configs."""
    return {f.name for f in fields(RoadmapConfig) if getattr(before, f.name) != getattr(after, f.name)}


def build_roadmap_net(
    config: RoadmapConfig,
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    head_init_scale: float = 1.0,
    width_multiplier: float = 1.0,
    **overrides,
) -> RoadmapNet:
    """``create_model`` factory of a roadmap step: ``overrides`` replace fields of ``config``.

    Args:
        config: the step's switches.
        num_classes: classifier outputs.
        in_chans: input channels.
        drop_path_rate: final stochastic depth rate.
        head_init_scale: head init factor.
        width_multiplier: factor applied to every stage width after the overrides (1: the paper's widths).
            Scaling all steps alike keeps each step's one change (step 5 still widens by 1.5x).
        **overrides: :class:`RoadmapConfig` fields to change, e.g. ``kernel_size`` or ``patch_size``.
    """
    unknown = set(overrides) - {f.name for f in fields(RoadmapConfig)}
    if unknown:
        raise TypeError(f"unexpected roadmap options {sorted(unknown)}")
    if width_multiplier <= 0:
        raise UserError(f"width_multiplier must be positive, not {width_multiplier}.")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}  # YAML gives lists
    config = replace(config, **overrides)
    config = replace(config, dims=tuple(max(1, round(d * width_multiplier)) for d in config.dims))
    return RoadmapNet(config, in_chans, num_classes, drop_path_rate, head_init_scale)


@dataclass(frozen=True)
class RoadmapStep:
    """One step of the roadmap: a registered name, what it changes and the paper's numbers for it.

    Args:
        index: step number (paper Fig. 2 order; the kernel-size variants share 8).
        name: registered model name, ``roadmap_NN_<what>``.
        change: what this step changes, in words.
        config: the architecture.
        parent: name of the step it changes one field of (None for step 0).
        paper_top1: ImageNet-1K top-1 printed by the paper (Fig. 2 / Table 10).
        paper_gflops: GFLOPs at 224 printed by the paper.
    """

    index: int
    name: str
    change: str
    config: RoadmapConfig
    parent: str | None
    paper_top1: float
    paper_gflops: float


# (step, name, what changes, changed fields, paper top-1, paper GFLOPs): paper Fig. 2 and appendix Table 10.
_MAIN_LINE = [
    (0, "resnet50", "torchvision ResNet-50, original recipe", {}, 76.13, 4.09),
    # Table 5's recipe includes layer scale 1e-6: its one architectural part (15,104 gammas at this width).
    (
        1,
        "modern_recipe",
        "modern training recipe, incl. layer scale 1e-6",
        {"layer_scale_init_value": 1e-6},
        78.82,
        4.09,
    ),
    (2, "stage_ratio", "blocks per stage 3,4,6,3 -> 3,3,9,3", {"depths": (3, 3, 9, 3)}, 79.36, 4.53),
    (3, "patchify_stem", "stem -> 4x4 conv stride 4", {"stem": "patchify"}, 79.51, 4.42),
    (4, "depthwise", "3x3 conv -> depthwise", {"depthwise": True}, 78.28, 2.35),
    (5, "width", "width 64 -> 96", {"dims": (96, 192, 384, 768)}, 80.50, 5.27),
    (6, "inverted_bottleneck", "inverted bottleneck", {"inverted_bottleneck": True}, 80.64, 4.64),
    (7, "move_up_depthwise", "depthwise conv first", {"depthwise_first": True}, 79.92, 4.07),
    (8, "kernel7", "kernel 3 -> 7", {"kernel_size": 7}, 80.57, 4.15),
    (9, "gelu", "ReLU -> GELU", {"act": "gelu"}, 80.62, 4.15),
    (10, "fewer_activations", "one activation per block", {"acts_per_block": 1}, 81.27, 4.15),
    (11, "fewer_norms", "one norm per block", {"norms_per_block": 1}, 81.41, 4.15),
    (12, "layer_norm", "BN -> LN", {"norm": "layer"}, 81.47, 4.46),
    (13, "convnext_tiny", "separate downsampling layers", {"downsampling": "separate"}, 81.97, 4.49),
]
_KERNEL_BRANCH = [(5, 80.35, 4.10), (9, 80.57, 4.21), (11, 80.47, 4.29)]  # off step 7, Sec. 2.5


def _build_steps() -> dict[str, RoadmapStep]:
    steps, parent = {}, None
    for index, slug, change, changed, top1, gflops in _MAIN_LINE:
        config = replace(steps[parent].config, **changed) if parent else RoadmapConfig(**changed)
        name = f"roadmap_{index:02d}_{slug}"
        steps[name] = RoadmapStep(index, name, change, config, parent, top1, gflops)
        parent = name
    step7 = steps["roadmap_07_move_up_depthwise"]
    for kernel, top1, gflops in _KERNEL_BRANCH:
        name = f"roadmap_08_kernel{kernel}"
        config = replace(step7.config, kernel_size=kernel)
        steps[name] = RoadmapStep(8, name, f"kernel 3 -> {kernel}", config, step7.name, top1, gflops)
    return dict(sorted(steps.items(), key=lambda item: (item[1].index, item[1].config.kernel_size)))


#: Every step by registered name, in roadmap order (the kernel variants 5, 7, 9, 11 together at step 8).
STEPS: dict[str, RoadmapStep] = _build_steps()
#: The main line 0..13 (kernel 7 at step 8), the chain the paper's Fig. 2 follows.
MAIN_STEPS: list[str] = [name for name, step in STEPS.items() if step.index != 8 or name.endswith("kernel7")]

for _name, _step in STEPS.items():
    register_model(_name, partial(build_roadmap_net, _step.config))


def create_roadmap_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    head_init_scale: float = 1.0,
    kernel_size: int | None = None,
    patch_size: int | None = None,
    width_multiplier: float = 1.0,
) -> RoadmapNet:
    """A roadmap step by name, every option a named parameter so that the command line can set it.

    ``create_model`` builds the same networks, but jsonargparse offers only a function's named parameters and
    ``width_multiplier`` reaches ``create_model`` through ``**overrides``; the ladder uses this function.

    Args:
        name: a key of :data:`STEPS`.
        num_classes: classifier outputs (None: 1000; from the CLI it follows the data).
        in_chans: input channels.
        drop_path_rate: final stochastic depth rate.
        head_init_scale: head init factor.
        kernel_size: the blocks' k x k kernel (None: the step's).
        patch_size: stem stride (None: 4; 2 or 1 for small images).
        width_multiplier: factor on every stage width (0.25 makes the CPU ladder affordable).
    """
    if name not in STEPS:
        raise UserError(f"Unknown roadmap step '{name}'. Valid names: {', '.join(STEPS)}.")
    overrides = {
        k: v for k, v in dict(kernel_size=kernel_size, patch_size=patch_size).items() if v is not None
    }
    return build_roadmap_net(
        STEPS[name].config,
        1000 if num_classes is None else num_classes,
        in_chans,
        drop_path_rate,
        head_init_scale,
        width_multiplier,
        **overrides,
    )
