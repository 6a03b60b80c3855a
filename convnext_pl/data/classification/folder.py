"""Image folders (``root/<split>/<class>/<image>``) through torchvision's ``ImageFolder``, with the ImageNet
recipe's transforms, layout checks that say what to fix, and an opt-in scan that leaves out corrupt images."""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torchvision.transforms as T
from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveInt
from lightning.pytorch.utilities import rank_zero_warn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.datasets import ImageFolder

from convnext_pl.data.augment.batch_augment import DeviceAugment
from convnext_pl.data.augment.fast_augment import read_encoded
from convnext_pl.data.augment.rand_augment import device_rand_augment
from convnext_pl.data.augment.transforms import (
    RECIPE_AUTO_AUGMENT,
    RECIPE_CROP_PCT,
    RECIPE_RE_PROB,
    eval_transform,
    fast_train_transform,
)
from convnext_pl.data.augment.transforms import train_transform as recipe_train_transform
from convnext_pl.data.base import ClassificationDataModule
from convnext_pl.data.images import find_unreadable, load_rgb
from convnext_pl.errors import UserError
from convnext_pl.ranges import LeftOpenUnitInterval

SHOWN_CORRUPT_PATHS = 5  # how many unreadable files the skip_corrupt warning lists by name


def list_class_folders(directory: str | Path) -> list[str]:
    """Sorted sub-folder names of ``directory``, leaving out hidden ones (``.ipynb_checkpoints``, ``.git``)
    that torchvision would otherwise count as classes."""
    return sorted(
        entry.name for entry in os.scandir(directory) if entry.is_dir() and not entry.name.startswith(".")
    )


class VisibleImageFolder(ImageFolder):
    """torchvision's ``ImageFolder`` whose classes are the non-hidden sub-folders."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = list_class_folders(directory)
        return classes, {name: index for index, name in enumerate(classes)}


class RecipeTransforms:
    """The ImageNet recipe's transforms of a classification data module read from image files, whatever holds
    the files (a folder tree, shards): :class:`ImageFolderDataModule` and the streaming one share them, so the
    same sample gets the same augmentation from either.
    """

    def store_recipe(
        self,
        auto_augment: str | None,
        re_prob: float,
        re_mode: str,
        interpolation: str,
        crop_scale: tuple[float, float],
        crop_pct: float,
        mean: Sequence[float],
        std: Sequence[float],
        fast_pipeline: bool,
    ) -> None:
        """Keep the transform arguments (documented by :class:`ImageFolderDataModule`), checked."""
        self.auto_augment = auto_augment
        self.re_prob = re_prob
        self.re_mode = re_mode
        self.interpolation = interpolation
        if crop_scale[0] > crop_scale[1]:
            raise UserError(
                f"data.init_args.crop_scale {list(crop_scale)} must be [smallest, largest] area fraction; "
                f"give [{crop_scale[1]}, {crop_scale[0]}]"
            )
        self.crop_scale = tuple(crop_scale)
        self.crop_pct = crop_pct
        self.mean, self.std = tuple(mean), tuple(std)
        self.fast_pipeline = fast_pipeline
        if fast_pipeline:
            # Built now (no disk involved), so that a policy the device kernels do not cover is refused at once.
            device_half = device_rand_augment(self.train_transform())
            self.batch_augment = DeviceAugment(
                self.mean, self.std, re_prob, re_mode, rand_augment=device_half
            )

    def train_transform(self) -> T.Compose:
        """The recipe's training transform at ``image_size`` (its worker half on the fast path)."""
        if self.fast_pipeline:
            return fast_train_transform(
                self.image_size, self.auto_augment, self.interpolation, scale=self.crop_scale, mean=self.mean
            )
        return recipe_train_transform(self.image_size, auto_augment=self.auto_augment, re_prob=self.re_prob,
                                      re_mode=self.re_mode, interpolation=self.interpolation,
                                      scale=self.crop_scale, mean=self.mean, std=self.std)  # fmt: skip

    def evaluation_transform(self) -> T.Compose:
        return eval_transform(self.image_size, self.crop_pct, self.interpolation, self.mean, self.std)


class ImageFolderDataModule(RecipeTransforms, ClassificationDataModule):
    """Any data set stored as ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

    Training uses the ImageNet recipe (RandomResizedCrop, flip, RandAugment, random erasing, bicubic);
    evaluation resizes and center-crops (see :func:`~convnext_pl.data.augment.transforms.eval_transform`).
    The validation split also serves as the test split.

    Args:
        root: folder holding the split folders.
        num_classes: number of class folders each split must have.
        batch_size: samples per batch on each device.
        num_workers: DataLoader worker processes (also used by the ``skip_corrupt`` scan).
        image_size: training and evaluation size.
        auto_augment: timm RandAugment string; None disables it.
        re_prob: random erasing probability.
        re_mode: random erasing fill mode.
        interpolation: resampling filter.
        crop_scale: area range of the training RandomResizedCrop (recipe: 0.08-1; FCMAE pre-training: 0.2-1).
        crop_pct: evaluation center-crop fraction below 384.
        skip_corrupt: decode every image once in ``setup`` and leave out the unreadable ones with a warning;
            when False the first unreadable image stops the run with an error naming it.
        train_dir: training split folder under ``root``.
        val_dir: validation split folder under ``root``.
        mean: per-channel normalisation mean (0..1 scale).
        std: per-channel normalisation std.
        predict_dir: folder of images to classify with ``predict``.
        fast_pipeline: train with the fast input path: workers decode with ``torchvision.io``, crop and resize on
            uint8, draw RandAugment's ops and magnitudes, and yield uint8 batches (plus the draws and sample seeds)
            that ``on_after_batch_transfer`` RandAugments, normalises and erases on the device; the same
            augmentation draws and Pillow's pixels, about 2.4x the images per CPU core
            (``benchmarks/data_throughput.py --stages``). Evaluation is unchanged.
    """

    def __init__(
        self,
        root: str,
        num_classes: PositiveInt,
        batch_size: PositiveInt = 64,
        num_workers: NonNegativeInt = 4,
        image_size: PositiveInt = 224,
        auto_augment: str | None = RECIPE_AUTO_AUGMENT,
        re_prob: ClosedUnitInterval = RECIPE_RE_PROB,
        re_mode: str = "pixel",
        interpolation: str = "bicubic",
        crop_scale: tuple[LeftOpenUnitInterval, LeftOpenUnitInterval] = (0.08, 1.0),
        crop_pct: LeftOpenUnitInterval = RECIPE_CROP_PCT,
        skip_corrupt: bool = False,
        train_dir: str = "train",
        val_dir: str = "val",
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        predict_dir: str | None = None,
        fast_pipeline: bool = False,
    ):
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, image_size=image_size, predict_dir=predict_dir
        )
        self.root = root
        self._num_classes = num_classes
        self.skip_corrupt = skip_corrupt
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.store_recipe(auto_augment, re_prob, re_mode, interpolation, crop_scale, crop_pct, mean, std,
                          fast_pipeline)  # fmt: skip

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def _layout_hint(self) -> str:
        return f"expected {self.root}/{self.train_dir}/<class>/<image> and {self.root}/{self.val_dir}/<class>/<image>"

    def _class_folders(self, split_dir: str, check_count: bool = True) -> list[str]:
        """The class folders of one split, checked against the layout and (optionally) ``num_classes``."""
        directory = Path(self.root) / split_dir
        if not Path(self.root).is_dir():
            raise UserError(f"data root {self.root} does not exist; {self._layout_hint()}")
        if not directory.is_dir():
            raise UserError(f"split folder {directory} is missing; {self._layout_hint()}")
        classes = list_class_folders(directory)
        if not classes:
            raise UserError(
                f"{directory} has no class folders; put each class's images in {directory}/<class>/"
            )
        if check_count and len(classes) != self.num_classes:
            raise UserError(
                f"{directory} has {len(classes)} class folders but num_classes is {self.num_classes}; "
                f"set data.init_args.num_classes: {len(classes)}"
            )
        return classes

    def _split(self, split_dir: str, transform: T.Compose, loader=load_rgb) -> ImageFolder:
        """One split as an ImageFolder, empty class folders reported and corrupt files handled."""
        directory = Path(self.root) / split_dir
        dataset = VisibleImageFolder(str(directory), transform=transform, loader=loader, allow_empty=True)
        counts = np.bincount(dataset.targets, minlength=len(dataset.classes))
        if empty := [name for name, count in zip(dataset.classes, counts, strict=True) if count == 0]:
            raise UserError(
                f"{directory} has class folders without images ({', '.join(empty[:5])}); "
                "add images to them or remove them"
            )
        if self.skip_corrupt:
            self._drop_unreadable(dataset, directory)
        return dataset

    def _drop_unreadable(self, dataset: ImageFolder, directory: Path) -> None:
        unreadable = find_unreadable([path for path, _ in dataset.samples], self.num_workers)
        if not unreadable:
            return
        left_out = set(unreadable)
        dataset.samples = dataset.imgs = [s for s in dataset.samples if s[0] not in left_out]
        dataset.targets = [target for _, target in dataset.samples]
        shown = ", ".join(unreadable[:SHOWN_CORRUPT_PATHS]) + (
            " ..." if len(unreadable) > SHOWN_CORRUPT_PATHS else ""
        )
        rank_zero_warn(f"skip_corrupt: left out {len(unreadable)} unreadable images of {directory}: {shown}")

    def _display_names(self, classes: list[str]) -> list[str]:
        """Names shown for the class folders (the folder names themselves)."""
        return classes

    def _checked_classes(self, stage: str) -> list[str]:
        """The class list, after checking that train (when used or present) and val agree and match the count."""
        train = Path(self.root) / self.train_dir
        if stage != "fit" and not train.is_dir():  # evaluating with only the val split at hand
            return self._class_folders(self.val_dir)
        train_classes = self._class_folders(self.train_dir)
        val_classes = self._class_folders(self.val_dir, check_count=False)
        if train_classes != val_classes:
            only_train = sorted(set(train_classes) - set(val_classes))[:5]
            only_val = sorted(set(val_classes) - set(train_classes))[:5]
            raise UserError(
                f"the class folders of {Path(self.root) / self.val_dir} differ from those of {train} "
                f"(only in train: {', '.join(only_train) or '-'}; only in val: {', '.join(only_val) or '-'}); "
                "give both splits the same class folders"
            )
        return train_classes

    def _setup_splits(self, stage: str) -> None:
        classes = self._checked_classes(stage)
        if stage == "fit":
            # The fast path's transform decodes, so its loader only reads the bytes.
            loader = read_encoded if self.fast_pipeline else load_rgb
            self.train_dataset = self._split(self.train_dir, self.train_transform(), loader)
        self.val_dataset = self.test_dataset = self._split(self.val_dir, self.evaluation_transform())
        self.class_names = self._display_names(classes)

    def _predict_class_names(self) -> list[str]:
        train = Path(self.root) / self.train_dir
        return self._display_names(list_class_folders(train)) if train.is_dir() else []
