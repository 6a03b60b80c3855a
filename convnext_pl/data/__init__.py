"""Data modules (Lightning) and the recipe's transforms.

Every module stores its arguments in ``__init__`` and reads the disk only in ``prepare_data``/``setup``, and
every classification loader yields ``(images: FloatTensor[N, 3, H, W], targets: LongTensor[N])``, except the
training loader of the fast input path (``fast_pipeline: true``): ``(AugmentedImage(uint8 images, RandAugment op
ids, op arguments), targets, sample seeds)``, which the module's batch-transfer hooks turn into the float pair on
the device (``rand_augment.py``, ``batch_augment.py``).
"""

from convnext_pl.data.augment.transforms import eval_transform, small_image_train_transform, train_transform
from convnext_pl.data.base import ClassificationDataModule
from convnext_pl.data.classification.cifar import CIFARDataModule
from convnext_pl.data.classification.digits import DigitsDataModule
from convnext_pl.data.classification.folder import ImageFolderDataModule
from convnext_pl.data.classification.imagenet import ImageNetDataModule
from convnext_pl.data.classification.synthetic import SyntheticDataModule
from convnext_pl.data.detection.coco import COCODataModule, COCOShapesDataModule
from convnext_pl.data.segmentation.ade20k import ADE20KDataModule, SyntheticScenesDataModule
from convnext_pl.data.segmentation.folder import SegmentationFolderDataModule

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
