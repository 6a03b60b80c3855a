"""ImageNet-1K: an image folder with the recipe's defaults that also reads torchvision's devkit layout."""

from pathlib import Path
from typing import Literal

import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveInt
from torchvision.datasets.imagenet import (
    ARCHIVE_META,
    META_FILE,
    parse_devkit_archive,
    parse_train_archive,
    parse_val_archive,
)

from convnext_pl.data.augment.transforms import RECIPE_AUTO_AUGMENT, RECIPE_CROP_PCT, RECIPE_RE_PROB
from convnext_pl.data.classification.folder import ImageFolderDataModule, list_class_folders
from convnext_pl.errors import UserError
from convnext_pl.ranges import LeftOpenUnitInterval

DEVKIT_ARCHIVE = ARCHIVE_META["devkit"][0]  # ILSVRC2012_devkit_t12.tar.gz
IMAGENET_DOWNLOAD_PAGE = "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php"


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1K in either of two layouts.

    ``folder``: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (the usual extracted form).
    ``devkit``: the three archives torchvision's ``ImageNet`` data set reads (``ILSVRC2012_devkit_t12.tar.gz``,
    ``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar``) placed in ``root``; ``prepare_data`` extracts them
    once with torchvision's own parsers, into the folder layout plus ``meta.bin``, exactly as ``ImageNet`` does.
    ``auto`` picks ``folder`` when ``root/train`` has class folders, else ``devkit`` when the devkit archive
    or ``meta.bin`` is in ``root``. Whenever ``meta.bin`` is present, ``class_names`` are the first human-readable
    name of each WordNet id ("tench") instead of the id.

    Args:
        root: ImageNet folder.
        num_classes: 1000 for ImageNet-1K.
        batch_size: samples per batch on each device (recipe: 4096 in total, e.g. 128 x 32 GPUs).
        num_workers: DataLoader worker processes per device.
        image_size: training and evaluation size (224, or 384 for fine-tuning).
        auto_augment: timm RandAugment string; None disables it.
        re_prob: random erasing probability.
        re_mode: random erasing fill mode.
        interpolation: resampling filter.
        crop_scale: area range of the training RandomResizedCrop (recipe: 0.08-1; FCMAE pre-training: 0.2-1).
        crop_pct: evaluation center-crop fraction below 384.
        skip_corrupt: decode every image once in ``setup`` and leave out unreadable ones with a warning.
        layout: ``auto``, ``folder`` or ``devkit``.
        train_dir: training split folder (folder layout; the devkit layout always extracts to ``train``).
        val_dir: validation split folder (folder layout; the devkit layout always extracts to ``val``).
        predict_dir: folder of images to classify with ``predict``.
        fast_pipeline: the fast training input path (see :class:`~convnext_pl.data.ImageFolderDataModule`).
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        num_classes: PositiveInt = 1000,
        batch_size: PositiveInt = 128,
        num_workers: NonNegativeInt = 8,
        image_size: PositiveInt = 224,
        auto_augment: str | None = RECIPE_AUTO_AUGMENT,
        re_prob: ClosedUnitInterval = RECIPE_RE_PROB,
        re_mode: str = "pixel",
        interpolation: str = "bicubic",
        crop_scale: tuple[LeftOpenUnitInterval, LeftOpenUnitInterval] = (0.08, 1.0),
        crop_pct: LeftOpenUnitInterval = RECIPE_CROP_PCT,
        skip_corrupt: bool = False,
        layout: Literal["auto", "folder", "devkit"] = "auto",
        train_dir: str = "train",
        val_dir: str = "val",
        predict_dir: str | None = None,
        fast_pipeline: bool = False,
    ):
        super().__init__(
            root=root, num_classes=num_classes, batch_size=batch_size, num_workers=num_workers,
            image_size=image_size, auto_augment=auto_augment, re_prob=re_prob, re_mode=re_mode,
            interpolation=interpolation, crop_scale=crop_scale, crop_pct=crop_pct, skip_corrupt=skip_corrupt,
            train_dir=train_dir, val_dir=val_dir, predict_dir=predict_dir, fast_pipeline=fast_pipeline,
        )  # fmt: skip
        if layout not in ("auto", "folder", "devkit"):
            raise UserError(
                f"layout must be auto, folder or devkit, got {layout!r}; set data.init_args.layout"
            )
        self.layout = layout

    def resolved_layout(self) -> Literal["folder", "devkit"]:
        """The layout ``auto`` stands for, looking at ``root`` (the other two are returned as they are)."""
        if self.layout != "auto":
            return self.layout
        root, train = Path(self.root), Path(self.root) / self.train_dir
        if train.is_dir() and list_class_folders(train):
            return "folder"
        if (root / DEVKIT_ARCHIVE).is_file() or (root / META_FILE).is_file():
            return "devkit"
        return "folder"  # neither: the folder layout's errors then say what is expected

    def prepare_data(self) -> None:
        """Devkit layout: extract the devkit, train and val archives once, as torchvision's ``ImageNet`` does."""
        if self.resolved_layout() != "devkit":
            return
        root = Path(self.root)
        steps = [
            ("devkit", (root / META_FILE).is_file(), parse_devkit_archive),
            ("train", (root / "train").is_dir(), parse_train_archive),
            ("val", (root / "val").is_dir(), parse_val_archive),
        ]
        for key, done, parse in steps:
            if done:
                continue
            try:
                parse(str(root))
            except RuntimeError as err:  # torchvision's "archive ... not present ... or corrupted"
                raise UserError(
                    f"ImageNet devkit layout needs {root / ARCHIVE_META[key][0]}, which is missing or corrupted; "
                    f"download it from {IMAGENET_DOWNLOAD_PAGE} into {root}, or extract the images as "
                    f"{root}/train/<wnid>/ and {root}/val/<wnid>/ and set data.init_args.layout: folder"
                ) from err

    def _setup_splits(self, stage: str) -> None:
        if self.resolved_layout() == "devkit" and (self.train_dir, self.val_dir) != ("train", "val"):
            raise UserError(
                "the ImageNet devkit layout always extracts to train/ and val/; remove data.init_args.train_dir "
                "and data.init_args.val_dir or set data.init_args.layout: folder"
            )
        super()._setup_splits(stage)

    def _display_names(self, classes: list[str]) -> list[str]:
        meta = Path(self.root) / META_FILE
        if not meta.is_file():
            return classes
        # meta.bin holds (wnid -> tuple of names, val wnids), written by torchvision's parse_devkit_archive.
        wnid_to_names = torch.load(meta, weights_only=True)[0]
        if not all(wnid in wnid_to_names for wnid in classes):
            return classes
        return [wnid_to_names[wnid][0] for wnid in classes]
