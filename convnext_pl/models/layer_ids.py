"""Layer ids for layer-wise learning-rate decay, for every task, in one place.

Classification (:func:`block_layer_ids`), derived from any stage depths.

The official ConvNeXt fine-tuning code hard-codes a table for depths (3, 3, 27, 3) and refuses other depths.
The rule below generalises it: every stage is cut into groups of ``min(depths)`` consecutive blocks, each
group is one layer id, the stem is id 0, a stage's downsampling layer shares the id of that stage's first
group, and the final norm and head come last. For (3, 3, 27, 3) this is exactly the official table
(stem 0; stage 0 -> 1; stage 1 -> 2; stage 2 block j -> 3 + j // 3; stage 3 -> 12; head 13).

Segmentation and detection (:func:`dense_layer_ids`, :func:`detector_layer_ids`): the official
``mmcv_custom/layer_decay_optimizer_constructor.py`` functions of the dense code bases, in both flavours
("layer_wise", "stage_wise"), on the parameter names of the whole model (docs/paper.md §6).
"""

import math
from collections.abc import Sequence

import torch.nn as nn

from convnext_pl.errors import UserError

DECAY_TYPES = ("layer_wise", "stage_wise")
_PREFIX = "backbone."  # the attribute name of the backbone in the dense task models, as in mmseg/mmdet
BODY_PREFIX = "backbone.body."  # where torchvision's detectors put the ConvNeXt (mmdet: "backbone.")


def block_layer_ids(depths: Sequence[int]) -> tuple[list[list[int]], int]:
    """Layer id of every block, stage by stage, and the id of the head.

    Args:
        depths: number of blocks in each stage.

    Returns:
        ``(ids, head_id)`` where ``ids[i][j]`` is the layer id of block ``j`` of stage ``i``.
    """
    group = max(1, min(depths))
    ids, next_id = [], 1  # id 0 is the stem
    for depth in depths:
        ids.append([next_id + j // group for j in range(depth)])
        next_id += math.ceil(depth / group)
    return ids, next_id


def single_layer_ids(depths: Sequence[int]) -> tuple[list[int], list[list[int]], int]:
    """ConvNeXt V2's ``layer_decay_type 'single'`` (official ``get_num_layer_for_convnext_single``): every block
    its own id. Downsampling layer i (the stem for i = 0) -> ``sum(depths[:i]) + 1``, block j of stage i ->
    ``sum(depths[:i]) + j + 1``, the final norm and head ``sum(depths) + 1``.

    Returns:
        ``(downsample_ids, block_ids, head_id)``.
    """
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return (
        [s + 1 for s in starts],
        [[s + j + 1 for j in range(d)] for s, d in zip(starts, depths, strict=True)],
        (sum(depths) + 1),
    )


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
        num_layers: official ``paramwise_cfg.num_layers`` (ADE20K: 6 for T, 12 for S/B/L/XL, all stage-wise).
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


def detector_layer_ids(
    model: nn.Module, decay_type: str = "layer_wise", num_layers: int = 6
) -> dict[str, int]:
    """Official layer id (``mmcv_custom/layer_decay_optimizer_constructor.py``) of every detector parameter.

    The official functions read mmdet names (``backbone.stages.2.4.dwconv.weight``); torchvision puts the
    ConvNeXt under ``backbone.body.``, so that prefix is read as ``backbone.`` and every other parameter (FPN,
    RPN, RoI heads) gets ``num_layers + 1``, the full lr. For T, ``num_layers`` is 6 (official 3x config).
    """
    return dense_layer_ids(model, decay_type, num_layers, backbone_prefix=BODY_PREFIX)
