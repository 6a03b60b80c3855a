"""Data modules (Lightning) and the recipe's transforms.

Every module stores its arguments in ``__init__`` and reads the disk only in ``prepare_data``/``setup``, and
every classification loader yields ``(images: FloatTensor[N, 3, H, W], targets: LongTensor[N])``, except the
training loader of the fast input path (``fast_pipeline: true``): ``(AugmentedImage(uint8 images, RandAugment op
ids, op arguments), targets, sample seeds)``, which the module's batch-transfer hooks turn into the float pair on
the device (``rand_augment.py``, ``batch_augment.py``).
"""

from convnext_pl.data.ade20k import ADE20KDataModule, SyntheticScenesDataModule
from convnext_pl.data.base import ClassificationDataModule
from convnext_pl.data.cifar import CIFARDataModule
from convnext_pl.data.coco import COCODataModule, COCOShapesDataModule
from convnext_pl.data.digits import DigitsDataModule
from convnext_pl.data.folder import ImageFolderDataModule
from convnext_pl.data.imagenet import ImageNetDataModule
from convnext_pl.data.seg_folder import SegmentationFolderDataModule
from convnext_pl.data.synthetic import SyntheticDataModule
from convnext_pl.data.transforms import eval_transform, small_image_train_transform, train_transform

__all__ = [
    "ADE20KDataModule",
    "SegmentationFolderDataModule",
    "SyntheticScenesDataModule",
    "CIFARDataModule",
    "COCODataModule",
    "COCOShapesDataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "SyntheticDataModule",
    "eval_transform",
    "small_image_train_transform",
    "train_transform",
]
