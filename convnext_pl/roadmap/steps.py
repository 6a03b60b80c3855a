"""The modernization roadmap (paper Sec. 2, Fig. 2): ResNet-50 turned into ConvNeXt-T one change at a time.

Every step is a preset of the switches of :class:`RoadmapConfig` that changes exactly one field of the step
before (:data:`STEPS`, the paper's step table with its numbers); each is registered as ``roadmap_NN_<name>`` so
``create_model`` builds it through :func:`create_roadmap_model`, the one factory of :class:`RoadmapNet` (the
network is in ``roadmap_net.py``). Step 0 is torchvision's ResNet-50 and step 13 ConvNeXt-T: their weights load
after the renamings of ``conversions.py``.
"""

from dataclasses import dataclass, fields, replace
from functools import partial

from convnext_pl.errors import UserError
from convnext_pl.models.registry import register_model
from convnext_pl.roadmap.net import RoadmapConfig, RoadmapNet

__all__ = [
    "MAIN_STEPS",
    "STEPS",
    "RoadmapConfig",
    "RoadmapNet",
    "RoadmapStep",
    "config_diff",
    "create_roadmap_model",
]


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


def config_diff(before: RoadmapConfig, after: RoadmapConfig) -> set[str]:
    """Names of the fields that differ between two configs."""
    return {f.name for f in fields(RoadmapConfig) if getattr(before, f.name) != getattr(after, f.name)}


def create_roadmap_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    head_init_scale: float = 1.0,
    kernel_size: int | None = None,
    patch_size: int | None = None,
    layer_scale_init_value: float | None = None,
    width_multiplier: float = 1.0,
) -> RoadmapNet:
    """A roadmap step by name, every option a named parameter so that the command line can set it.

    ``create_model("roadmap_...", ...)`` calls this function; the ladder names it directly, since jsonargparse
    offers only the named parameters of the function it is given (``create_model`` takes ``width_multiplier``
    through ``**overrides``).

    Args:
        name: a key of :data:`STEPS`.
        num_classes: classifier outputs (None: 1000; from the CLI it follows the data).
        in_chans: input channels.
        drop_path_rate: final stochastic depth rate.
        head_init_scale: head init factor.
        kernel_size: the blocks' k x k kernel (None: the step's).
        patch_size: stem stride (None: 4; 2 or 1 for small images).
        layer_scale_init_value: per-channel residual scale (None: the step's, 1e-6 from step 1; 0: none).
        width_multiplier: factor on every stage width after the other options (1: the paper's widths; 0.25 makes
            the CPU ladder affordable). Scaling all steps alike keeps each step's one change (step 5 still
            widens by 1.5x).
    """
    if name not in STEPS:
        raise UserError(f"Unknown roadmap step '{name}'. Valid names: {', '.join(STEPS)}.")
    if width_multiplier <= 0:
        raise UserError(f"width_multiplier must be positive, not {width_multiplier}.")
    options = dict(
        kernel_size=kernel_size, patch_size=patch_size, layer_scale_init_value=layer_scale_init_value
    )
    config = replace(STEPS[name].config, **{k: v for k, v in options.items() if v is not None})
    config = replace(config, dims=tuple(max(1, round(d * width_multiplier)) for d in config.dims))
    return RoadmapNet(
        config, in_chans, 1000 if num_classes is None else num_classes, drop_path_rate, head_init_scale
    )


for _name in STEPS:
    register_model(_name, partial(create_roadmap_model, _name))
