"""Checkpoint layouts of other code bases, mapped onto this package's parameter names and back.

Each layout is a pair of functions over state dicts, ``<theirs>_to_<ours>`` and ``<ours>_to_<theirs>``, that
rename keys (and reshape a tensor where the two layouts store one differently) without touching values.
Every pair is tested both ways on random weights (``tests/weights/test_conversions.py``).

- torchvision ResNet-50 <-> roadmap step 0 (``roadmap_00_resnet50``): ``conv1``/``bn1`` are the stem,
  ``layer{i}.{j}.bn{k}`` the block norms, ``downsample`` the projection shortcut, ``fc`` the head.
- official/timm-``convnext_tiny`` layout <-> roadmap step 13 (``roadmap_13_convnext_tiny``): the block's
  ``dwconv``/``norm``/``pwconv1``/``pwconv2`` are the roadmap's position-named ``conv1``/``norm1``/``conv2``/
  ``conv3``; the pointwise Linear weights (out, in) are 1x1 conv weights (out, in, 1, 1) there, the same function
  on NCHW (docs/paper.md §3).
- mmdet 2.x Mask R-CNN (the official ``mask_rcnn_convnext_*`` COCO checkpoints) <-> torchvision's Mask R-CNN
  as built by ``models/mask_rcnn.py``: ``neck.*`` is torchvision's ``backbone.fpn``, ``rpn_head`` its ``rpn.head``,
  ``roi_head.bbox_head``/``mask_head`` its ``roi_heads.box_*``/``mask_*``; the background class moves from last
  (mmdet) to first (torchvision) (docs/paper.md §6, docs/detection.md).
- ConvNeXt V2 FCMAE pre-training files (``convnextv2/pt_only/*_fcmae.pt``) <-> the official dense V2 layout: the
  encoder is sparse (MinkowskiEngine), its kernels stored as (kernel volume, in, out) / (kernel volume, C), its
  norms and linears wrapped (``.ln.``, ``.linear.``), GRN and conv biases as (1, C). The mapping is the one of
  the official ``utils.remap_checkpoint_keys`` of facebookresearch/ConvNeXt-V2 (decoder, ``proj``, ``pred`` and
  ``mask_token`` dropped, as its ``main_finetune.py`` does); tested both ways here, not against MinkowskiEngine.
"""

import re
from collections.abc import Mapping

import torch

StateDict = Mapping[str, torch.Tensor]

# --------------------------------------------------------------------------- torchvision ResNet <-> roadmap step 0
_RESNET_STEM = {
    "conv1": ("downsample_layers", "0", "0"),
    "bn1": ("downsample_layers", "0", "1"),
    "fc": ("head",),
}
_RESNET_BLOCK = {
    "bn1": "norm1",
    "bn2": "norm2",
    "bn3": "norm3",
    "downsample": "shortcut",
}  # conv{k} keep names


def torchvision_resnet_to_roadmap(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict (``conv1``, ``bn1``, ``layer1.0.bn1``, ``fc``) in step 0's names."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] in _RESNET_STEM:
            parts = [*_RESNET_STEM[parts[0]], *parts[1:]]
        elif parts[0].startswith("layer"):  # layer{i}.{j}.bn{k} -> stages.{i-1}.{j}.norm{k}
            stage, block, name, rest = int(parts[0].removeprefix("layer")) - 1, parts[1], parts[2], parts[3:]
            parts = ["stages", str(stage), block, _RESNET_BLOCK.get(name, name), *rest]
        out[".".join(parts)] = value
    return out


def roadmap_to_torchvision_resnet(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Step 0's state dict in torchvision's ResNet names (the inverse of :func:`torchvision_resnet_to_roadmap`)."""
    stem = {".".join(ours): theirs for theirs, ours in _RESNET_STEM.items()}
    block = {ours: theirs for theirs, ours in _RESNET_BLOCK.items()}
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        prefix = next((p for p in stem if key.startswith(p + ".")), None)
        if prefix is not None:
            parts = [stem[prefix], *key.removeprefix(prefix + ".").split(".")]
        elif parts[0] == "stages":  # stages.{i}.{j}.norm{k} -> layer{i+1}.{j}.bn{k}
            stage, block_index, name, rest = int(parts[1]), parts[2], parts[3], parts[4:]
            parts = [f"layer{stage + 1}", block_index, block.get(name, name), *rest]
        out[".".join(parts)] = value
    return out


# --------------------------------------------------------------------- official ConvNeXt <-> roadmap step 13
_CONVNEXT_BLOCK = {"dwconv": "conv1", "norm": "norm1", "pwconv1": "conv2", "pwconv2": "conv3"}
_POINTWISE = ("conv2", "conv3")  # Linear layers in ConvNeXt, 1x1 convolutions in the roadmap


def convnext_to_roadmap(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """An official-layout ConvNeXt state dict (``convnext_tiny``, official files) in step 13's names."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "stages" and parts[3] in _CONVNEXT_BLOCK:
            parts[3] = _CONVNEXT_BLOCK[parts[3]]
            if parts[3] in _POINTWISE and parts[4] == "weight":
                value = value[:, :, None, None]  # (out, in) -> (out, in, 1, 1)
        out[".".join(parts)] = value
    return out


def roadmap_to_convnext(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Step 13's state dict in the official ConvNeXt names (the inverse of :func:`convnext_to_roadmap`)."""
    official = {ours: theirs for theirs, ours in _CONVNEXT_BLOCK.items()}
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "stages" and parts[3] in official:
            if parts[3] in _POINTWISE and parts[4] == "weight":
                value = value[:, :, 0, 0]  # (out, in, 1, 1) -> (out, in)
            parts[3] = official[parts[3]]
        out[".".join(parts)] = value
    return out


# --------------------------------------------------------- mmdet 2.x Mask R-CNN <-> torchvision Mask R-CNN
# mmdet prefix -> torchvision prefix, for the official `mask_rcnn_convnext_*` checkpoints (docs/paper.md §6).
# `{i}` stands for a level/conv index. mmdet's ConvModule wraps each conv as `.conv`, torchvision's
# Conv2dNormActivation as `.0`. The ConvNeXt itself keeps its (official) names under torchvision's `backbone.body`.
MMDET_MASK_RCNN_PREFIXES = [
    ("backbone.", "backbone.body."),
    ("neck.lateral_convs.{i}.conv.", "backbone.fpn.inner_blocks.{i}.0."),
    ("neck.fpn_convs.{i}.conv.", "backbone.fpn.layer_blocks.{i}.0."),
    ("rpn_head.rpn_conv.", "rpn.head.conv.0.0."),
    ("rpn_head.rpn_cls.", "rpn.head.cls_logits."),  # one sigmoid logit per anchor, same anchor order
    ("rpn_head.rpn_reg.", "rpn.head.bbox_pred."),
    ("roi_head.bbox_head.shared_fcs.0.", "roi_heads.box_head.fc6."),
    ("roi_head.bbox_head.shared_fcs.1.", "roi_heads.box_head.fc7."),
    ("roi_head.bbox_head.fc_cls.", "roi_heads.box_predictor.cls_score."),
    ("roi_head.bbox_head.fc_reg.", "roi_heads.box_predictor.bbox_pred."),
    ("roi_head.mask_head.convs.{i}.conv.", "roi_heads.mask_head.{i}.0."),
    ("roi_head.mask_head.upsample.", "roi_heads.mask_predictor.conv5_mask."),
    ("roi_head.mask_head.conv_logits.", "roi_heads.mask_predictor.mask_fcn_logits."),
]
# Class order. mmdet: classifier rows are the K classes then the background (row K); box regressor and mask
# logits have K (class-specific) slots, none for the background. torchvision: the background is class 0, then
# the K classes, and the regressor (4 per class) and mask logits have a slot for it too (never used).
_CLASSIFIER = "roi_heads.box_predictor.cls_score."
_PER_CLASS = {"roi_heads.box_predictor.bbox_pred.": 4, "roi_heads.mask_predictor.mask_fcn_logits.": 1}


def _rename(key: str, pairs) -> str:
    """Replace the first matching prefix of ``key``; ``{i}`` in a prefix stands for one index."""
    for source, target in pairs:
        match = re.match(re.escape(source).replace(re.escape("{i}"), r"(?P<i>\d+)"), key)
        if match:
            return target.format(**match.groupdict()) + key[match.end() :]
    return key


def mmdet_mask_rcnn_to_torchvision(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """An mmdet 2.x Mask R-CNN / Faster R-CNN state dict (``backbone.*``, ``neck.*``, ``rpn_head.*``,
    ``roi_head.*``) in the names and class order of :func:`convnext_pl.models.mask_rcnn.create_mask_rcnn`.

    The background row of the classifier moves from last to first; the box regressor and the mask logits gain
    a zero background slot in front (torchvision never reads it: its post-processing drops class 0).
    """
    out = {}
    for key, value in state_dict.items():
        key = _rename(key, MMDET_MASK_RCNN_PREFIXES)
        if key.startswith(_CLASSIFIER):
            value = torch.cat([value[-1:], value[:-1]])  # (K + 1, ...): [classes, bg] -> [bg, classes]
        for prefix, width in _PER_CLASS.items():
            if key.startswith(prefix):
                value = torch.cat(
                    [value.new_zeros((width, *value.shape[1:])), value]
                )  # (K * w) -> ((K + 1) * w)
        out[key] = value
    return out


def torchvision_mask_rcnn_to_mmdet(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """The inverse of :func:`mmdet_mask_rcnn_to_torchvision`: background back to last, its slots dropped."""
    inverse = [(target, source) for source, target in reversed(MMDET_MASK_RCNN_PREFIXES)]
    out = {}
    for key, value in state_dict.items():
        if key.startswith(_CLASSIFIER):
            value = torch.cat([value[1:], value[:1]])  # [bg, classes] -> [classes, bg]
        for prefix, width in _PER_CLASS.items():
            if key.startswith(prefix):
                value = value[width:]
        out[_rename(key, inverse)] = value
    return out


# ------------------------------------------------------------- ConvNeXt V2 FCMAE (sparse) <-> official dense V2
FCMAE_PREFIX = "encoder."
FCMAE_DECODER_KEYS = ("decoder", "mask_token", "proj", "pred")  # the FCMAE decoder: not part of the encoder
_FCMAE_WRAPPERS = re.compile(r"\.(ln|linear)\.")  # MinkowskiLayerNorm(.ln) and MinkowskiLinear(.linear)


def is_fcmae(state_dict: StateDict) -> bool:
    """True for an FCMAE pre-training state dict: the released files' sparse encoder kernels under ``encoder.``,
    or this project's dense FCMAE (``encoder.*`` beside the decoder's ``mask_token``)."""
    encoder = [k for k in state_dict if k.startswith(FCMAE_PREFIX)]
    return any(k.endswith(".kernel") for k in encoder) or (bool(encoder) and "mask_token" in state_dict)


def fcmae_to_convnextv2(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """An FCMAE checkpoint's encoder in the dense official ConvNeXt V2 names and shapes (no norm, no head); the
    keys of an encoder already dense (this project's FCMAE) pass through unchanged."""
    out = {}
    for key, value in state_dict.items():
        if key.split(".")[0] in FCMAE_DECODER_KEYS:
            continue
        key = _FCMAE_WRAPPERS.sub(".", key.removeprefix(FCMAE_PREFIX))
        if key.endswith(".kernel"):
            key = key.removesuffix(".kernel") + ".weight"
            side = round(value.shape[0] ** 0.5)  # kernel volume = side * side
            if value.ndim == 3:  # convolution (side * side, in, out) -> (out, in, side, side)
                value = (
                    value.permute(2, 1, 0).reshape(value.shape[2], value.shape[1], side, side).transpose(3, 2)
                )
            else:  # depthwise (side * side, C) -> (C, 1, side, side)
                value = value.permute(1, 0).reshape(value.shape[1], 1, side, side).transpose(3, 2)
        elif key.endswith(".bias") and value.ndim != 1:
            value = value.reshape(-1)  # sparse conv bias (1, C) -> (C,)
        elif ".grn." in key:
            value = value.reshape(1, 1, 1, -1)  # (1, C) -> (1, 1, 1, C), broadcast over NHWC
        out[key] = value.contiguous()
    return out


def convnextv2_to_fcmae(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """The inverse of :func:`fcmae_to_convnextv2` for the encoder (the final ``norm`` and ``head`` are dropped)."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] in ("norm", "head"):
            continue  # the FCMAE encoder has neither
        if parts[:2] != ["downsample_layers", "0"]:  # the stem stays dense (a Conv2d and a LayerNorm)
            key, value = _to_sparse(parts, value)
        out[FCMAE_PREFIX + key] = value.contiguous()
    return out


def _to_sparse(parts: list[str], value: torch.Tensor) -> tuple[str, torch.Tensor]:
    module, name = parts[-2], parts[-1]
    is_norm = module == "norm" or (parts[0] == "downsample_layers" and module == "0")
    if is_norm or module in ("pwconv1", "pwconv2"):
        return ".".join([*parts[:-1], "ln" if is_norm else "linear", name]), value
    if module == "grn" or name == "bias":  # GRN (1, 1, 1, C) and sparse conv biases (C,) -> (1, C)
        return ".".join(parts), value.reshape(1, -1)
    # The convolutions (downsampling `downsample_layers.i.1`, depthwise `dwconv`): (out, in, side, side) ->
    # (side * side, in, out), or (side * side, C) for the depthwise one.
    out_channels, in_channels, side, _ = value.shape
    flat = value.transpose(3, 2).reshape(out_channels, in_channels, side * side)
    kernel = flat[:, 0].permute(1, 0) if module == "dwconv" else flat.permute(2, 1, 0)
    return ".".join([*parts[:-1], "kernel"]), kernel
