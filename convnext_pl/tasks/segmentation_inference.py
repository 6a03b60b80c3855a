"""Segmentation inference as mmseg's ``EncoderDecoder`` runs it: whole image or sliding window, multi-scale + flip.

Every path returns class probabilities (softmax of the scores) at the input's size; several scales and flips
average the probabilities (mmseg ``aug_test``). Pure torch on any network whose ``forward`` maps
(N, 3, h, w) images to (N, K, h, w) scores.
"""

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

InferenceMode = Literal["whole", "slide"]


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def slide_scores(
    net: nn.Module, images: torch.Tensor, crop: Sequence[int], stride: Sequence[int]
) -> torch.Tensor:
    """mmseg ``slide_inference``: windows of ``crop`` every ``stride`` (the last one flush with the border),
    scores summed where windows overlap and divided by the overlap count. An image smaller than the crop is one
    window of its own size. Returns (N, K, H, W) scores."""
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    height, width = images.shape[-2:]
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    scores, counts = None, images.new_zeros((1, 1, height, width))
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            window = net(images[..., y1:y2, x1:x2])  # (N, K, y2 - y1, x2 - x1)
            if scores is None:
                scores = images.new_zeros((images.shape[0], window.shape[1], height, width))
            scores[..., y1:y2, x1:x2] += window
            counts[..., y1:y2, x1:x2] += 1
    return scores / counts


def segment(
    net: nn.Module,
    images: torch.Tensor,
    mode: InferenceMode = "whole",
    crop: Sequence[int] = (512, 512),
    stride: Sequence[int] = (341, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """(N, 3, H, W) -> (N, K, H, W) probabilities averaged over ``scales`` (ratios of the input size) and flips.

    Args:
        net: the segmentation network (scores at its input's size).
        images: normalised images, already at the evaluation scale (ratio 1.0).
        mode: "whole" (one pass per image) or "slide" (windows of ``crop`` every ``stride``).
        crop, stride: the sliding window's size and step (H, W) (official ADE20K: 512 and 341).
        scales: image size ratios (official multi-scale: 0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
        flip: also run the horizontally mirrored image and mirror its result back.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    height, width = images.shape[-2:]
    total = None
    for scale in scales:
        size = (int(height * scale + 0.5), int(width * scale + 0.5))
        scaled = images if size == (height, width) else _resize(images, size)
        for mirrored in (False, True) if flip else (False,):
            x = scaled.flip(-1) if mirrored else scaled
            scores = net(x) if mode == "whole" else slide_scores(net, x, crop, stride)
            probs = _resize(scores, (height, width)).softmax(dim=1)
            probs = probs.flip(-1) if mirrored else probs
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))
