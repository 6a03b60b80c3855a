"""The official Mask R-CNN 3x training augmentation (mmdet ``AutoAugment`` after DETR) on ``transforms.v2``, so
boxes and masks move with the image (docs/paper.md §6)."""

import torch
from torchvision.transforms import v2

from convnext_pl.errors import UserError

TRAIN_SCALES = tuple(range(480, 801, 32))  # official: shorter side 480..800 in steps of 32
CROP_SCALES = (400, 500, 600)  # official: the crop branch first resizes to one of these
CROP_SIZE = (384, 600)  # official: RandomCrop crop_type "absolute_range"
MAX_SIZE = 1333  # official: long side at most 1333


def check_augmentation_options(train_scales, crop_scales, crop_size) -> None:
    """What the option types cannot say: the augmentation's lists must hold a choice, its crop range an order."""
    for option, scales in (("train_scales", train_scales), ("crop_scales", crop_scales)):
        if not scales:
            raise UserError(f"data.init_args.{option} is empty; give at least one shorter-side size")
    if crop_size[0] > crop_size[1]:
        raise UserError(
            f"data.init_args.crop_size {tuple(crop_size)} is (min, max) of the crop's sides; give the smaller first"
        )


class RandomSizeCrop(v2.Transform):
    """Crop a random ``h x w`` window with ``h, w`` drawn uniformly from ``[min(side, lo), min(side, hi)]``.

    mmdet's ``RandomCrop(crop_type="absolute_range")``; transforms.v2 has no crop whose size is drawn from a
    range without resizing afterwards (``RandomResizedCrop`` resizes), so it is written here on ``F.crop``.
    """

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        crop_h = int(torch.randint(min(height, self.min_size), min(height, self.max_size) + 1, ()))
        crop_w = int(torch.randint(min(width, self.min_size), min(width, self.max_size) + 1, ()))
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return dict(top=top, left=left, height=crop_h, width=crop_w)

    def transform(self, inpt, params: dict):
        return self._call_kernel(v2.functional.crop, inpt, **params)


def detr_train_transform(
    scales=TRAIN_SCALES, crop_scales=CROP_SCALES, crop_size=CROP_SIZE, max_size: int = MAX_SIZE
) -> v2.Transform:
    """The official training augmentation (mmdet ``AutoAugment`` with two policies, after DETR).

    Flip with probability 0.5; then with probability 1/2 resize the shorter side to one of ``scales`` (long side
    at most ``max_size``), else resize to one of ``crop_scales``, crop a random ``crop_size`` window and resize to
    one of ``scales``. Boxes are clipped to the crop and boxes left empty are removed with their masks and labels.
    Normalisation and padding to a multiple of 32 happen in the model (torchvision's ``GeneralizedRCNNTransform``).
    """
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.RandomChoice(
                [
                    v2.RandomShortestSize(list(scales), max_size),
                    v2.Compose(
                        [
                            v2.RandomShortestSize(list(crop_scales), max_size),
                            RandomSizeCrop(*crop_size),
                            v2.RandomShortestSize(list(scales), max_size),
                        ]
                    ),
                ]
            ),
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_box_fields),
        ]
    )


def _box_fields(sample) -> tuple:
    """The per-box tensors that must lose the same rows as the boxes (SanitizeBoundingBoxes' labels_getter)."""
    _, target = sample
    return target["labels"], target["iscrowd"], target["area"]
