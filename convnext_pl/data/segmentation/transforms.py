"""The official ADE20K pipeline (mmseg 0.x ``datasets/pipelines/transforms.py``) on torchvision.transforms.v2.

v2 transforms image and ``tv_tensors.Mask`` together (nearest-neighbour for the mask, fill values per type).
Four steps of mmseg have no v2 equivalent with its exact rule and are written here as small v2 transforms:
the keep-ratio rescale to fit a (long, short) scale, the crop that avoids one class covering over 75 %, the
SSD-style photometric distortion in mmseg's order, and padding bottom/right to the crop size.
"""

import random
from collections.abc import Sequence

import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from torchvision import tv_tensors

IGNORE_INDEX = 255  # mmseg ignore_index / seg_pad_val
# ImageNet statistics, the official ``img_norm_cfg`` (mean 123.675, 116.28, 103.53; std 58.395, 57.12, 57.375
# on 0-255) on the 0-1 scale ToDtype(scale=True) produces.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def fit_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv ``imrescale``: the largest keep-ratio size with long side <= max(scale) and short side <= min(scale)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class RescaleToFit(v2.Transform):
    """mmseg ``Resize(img_scale, ratio_range, keep_ratio=True)``: scale times a ratio drawn from ``ratio_range``,
    then the keep-ratio fit of :func:`fit_size` (bilinear for images, nearest for masks)."""

    def __init__(self, scale: Sequence[int], ratio_range: Sequence[float] = (1.0, 1.0)):
        super().__init__()
        self.scale, self.ratio_range = tuple(scale), tuple(ratio_range)

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        ratio = random.uniform(*self.ratio_range)
        return {"size": fit_size(height, width, [int(s * ratio) for s in self.scale])}

    def transform(self, inpt, params: dict):
        return TF.resize(inpt, params["size"], antialias=False)  # mmcv's cv2 bilinear does not antialias


class CategoryRatioCrop(v2.Transform):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)``: retry up to 10 crops until no class covers more than
    ``cat_max_ratio`` of the crop's labelled pixels (and at least two classes are present); else the last one."""

    def __init__(self, size: Sequence[int], cat_max_ratio: float = 0.75, tries: int = 10):
        super().__init__()
        self.size, self.cat_max_ratio, self.tries = tuple(size), cat_max_ratio, tries

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        crop_h, crop_w = min(self.size[0], height), min(self.size[1], width)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        for _ in range(self.tries):
            top, left = random.randint(0, height - crop_h), random.randint(0, width - crop_w)
            if mask is None or self.cat_max_ratio >= 1.0:
                break
            labels = mask[..., top : top + crop_h, left : left + crop_w]
            _, counts = torch.unique(labels[labels != IGNORE_INDEX], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt, params: dict):
        return TF.crop(inpt, **params)


class PhotoMetricDistortion(v2.Transform):
    """mmseg ``PhotoMetricDistortion`` on a float 0-1 image, each step with probability 1/2: brightness shift
    +-32/255, then contrast x[0.5, 1.5] either first or last, saturation x[0.5, 1.5], hue +-18 of OpenCV's 180
    (0.1 of the circle). torchvision's ``RandomPhotometricDistort`` differs (multiplicative brightness, channel
    swaps), hence this one."""

    def make_params(self, flat_inputs: list) -> dict:
        def maybe(low, high):
            return random.uniform(low, high) if random.random() < 0.5 else None

        return {
            "brightness": maybe(-32 / 255, 32 / 255),
            "contrast_first": random.random() < 0.5,
            "contrast": maybe(0.5, 1.5),
            "saturation": maybe(0.5, 1.5),
            "hue": maybe(-0.1, 0.1),
        }

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        x = inpt
        if params["brightness"] is not None:
            x = (x + params["brightness"]).clamp(0, 1)
        if params["contrast"] is not None and params["contrast_first"]:
            x = TF.adjust_contrast(x, params["contrast"])
        if params["saturation"] is not None:
            x = TF.adjust_saturation(x, params["saturation"])
        if params["hue"] is not None:
            x = TF.adjust_hue(x, params["hue"])
        if params["contrast"] is not None and not params["contrast_first"]:
            x = TF.adjust_contrast(x, params["contrast"])
        return tv_tensors.wrap(x, like=inpt)


class PadTo(v2.Transform):
    """mmseg ``Pad(size=crop_size, pad_val=0, seg_pad_val=255)``: pad bottom/right, images 0, masks ignore."""

    def __init__(self, size: Sequence[int]):
        super().__init__()
        self.size = tuple(size)

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(0, self.size[1] - width), max(0, self.size[0] - height)]}

    def transform(self, inpt, params: dict):
        fill = IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else 0
        return TF.pad(inpt, params["padding"], fill=fill)


def seg_train_transform(
    scale: Sequence[int] = (2048, 512),
    ratio_range: Sequence[float] = (0.5, 2.0),
    crop_size: Sequence[int] = (512, 512),
    cat_max_ratio: float = 0.75,
) -> v2.Compose:
    """The official training pipeline (``configs/_base_/datasets/ade20k.py``) on (Image uint8, Mask)."""
    return v2.Compose(
        [
            RescaleToFit(scale, ratio_range),
            CategoryRatioCrop(crop_size, cat_max_ratio),
            v2.RandomHorizontalFlip(0.5),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            PhotoMetricDistortion(),
            v2.Normalize(MEAN, STD),
            PadTo(crop_size),
        ]
    )


def seg_eval_transform(scale: Sequence[int] = (2048, 512)) -> v2.Compose:
    """Evaluation: the keep-ratio fit to ``scale`` and normalisation (the label stays at its own size)."""
    return v2.Compose(
        [
            RescaleToFit(scale),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
