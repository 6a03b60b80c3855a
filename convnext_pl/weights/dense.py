"""Whole dense-task checkpoints and ImageNet backbone starts: what ``pretrained`` and ``pretrained_backbone`` of
the segmentation and detection tasks load (``convnext_pl.tasks``).

The released ADE20K (mmseg) and COCO (mmdet 2.x) files, this project's own Lightning checkpoints, and
classification files for the backbone all go through :func:`convnext_pl.weights.loading.load_whole_network` /
:func:`~convnext_pl.weights.loading.load_pretrained`, so a missing, damaged or ill-fitting file is one sentence.
"""

import warnings
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from convnext_pl.models.backbone import ConvNeXtBackbone
from convnext_pl.models.upernet import UperNet
from convnext_pl.weights.conversions import mmdet_mask_rcnn_to_torchvision
from convnext_pl.weights.loading import load_pretrained, load_whole_network

MMDET_HEADS = ("neck.", "rpn_head.", "roi_head.")  # keys only an mmdet detector checkpoint has


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


def load_segmentation_checkpoint(model: UperNet, path: str | Path) -> UperNet:
    """Load an mmseg-layout checkpoint (the released ADE20K files) or this project's own into ``model``.

    ``path`` is a file, a URL or a released name of the weights catalogue (``upernet_convnext_tiny.ade20k_160k``).

    The released files are ``{"state_dict": {"backbone.*", "decode_head.*", "auxiliary_head.*"}, "meta": ...}``
    and carry exactly this model's names; a Lightning checkpoint of ``SemanticSegmenter`` (``net.`` prefix)
    loads too. Every key must match in name and shape.

    Raises:
        UserError: the file is missing or unreadable, or a key is missing, unexpected or of another shape
            (the sentence names the first such key).
    """
    return load_whole_network(
        model,
        path,
        "Segmentation checkpoint",
        "model",
        "build the backbone variant, class count and head widths the checkpoint was saved with",
    )


def load_detection_checkpoint(model: GeneralizedRCNN, source: str | Path) -> GeneralizedRCNN:
    """Load a whole detector's weights into ``model``: an mmdet 2.x checkpoint (the released
    ``mask_rcnn_convnext_*`` COCO files, ``{"state_dict": ..., "meta": ...}``, converted with
    :func:`convnext_pl.weights.conversions.mmdet_mask_rcnn_to_torchvision`), a torchvision-layout state dict, or a
    Lightning checkpoint of ``MaskRCNNDetector``. Every key must fit in name and shape.

    Args:
        model: the detector the file was trained as (backbone variant, class count, masks or not).
        source: a path, a catalogue name or a URL (downloaded once into torch.hub's cache).

    Raises:
        UserError: the file is missing or unreadable, or does not fit (naming the first key that does not).
    """
    return load_whole_network(
        model,
        source,
        "Detection checkpoint",
        "detector",
        "build the backbone variant, class count and mask branch (masks) the checkpoint was saved with",
        convert=to_torchvision_layout,
    )


def to_torchvision_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detector state dict in torchvision's names: an mmdet one (neck/rpn_head/roi_head keys) converted,
    any other returned as it is."""
    if any(key.startswith(MMDET_HEADS) for key in state):
        return mmdet_mask_rcnn_to_torchvision(state)
    return state
