"""Segmentation data in folders (images + PNG label maps): reading, checks and loaders that every layout shares.

Loaders yield ``(images: FloatTensor[N, 3, H, W], labels: LongTensor[N, H, W])`` with 255 = ignore. Training
samples go through the official pipeline (``seg_transforms.seg_train_transform``) and share the crop size;
evaluation images are fitted to the test scale while their labels keep the original size (mmseg evaluates at
the label's resolution), so the evaluation loaders hold one image per batch, as mmseg's do.
"""

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from convnext_pl.data.base import TaskDataModule, check_loader_sizes
from convnext_pl.data.segmentation.transforms import IGNORE_INDEX, seg_eval_transform, seg_train_transform
from convnext_pl.errors import UserError
from convnext_pl.ranges import LeftOpenUnitInterval

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_label(path: Path | BinaryIO, name: str | None = None) -> torch.Tensor:
    """A PNG label map (mode L or P: one class index per pixel) as a (H, W) uint8 tensor. ``name``: what errors
    call it (default ``path``; shards hand over bytes)."""
    name = name or path
    try:
        with Image.open(path) as label:
            label.load()
            if label.mode not in ("L", "P"):
                raise UserError(
                    f"Label map '{name}' is a {label.mode} image; write one class index per pixel (PNG mode L or P)."
                )
            return torch.from_numpy(np.array(label, dtype=np.uint8))
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise UserError(f"Label map '{name}' cannot be read (damaged or not a PNG); replace the file.") from e


def read_image(path: Path | BinaryIO, name: str | None = None) -> tv_tensors.Image:
    name = name or path
    try:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise UserError(f"Image '{name}' cannot be read (damaged or not an image); replace the file.") from e
    return tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1))  # (H, W, 3) -> (3, H, W)


def reduce_zero_label(label: torch.Tensor) -> torch.Tensor:
    """mmseg ``reduce_zero_label``: class 0 ("other" in ADE20K) becomes 255 = ignore, the others shift by -1."""
    label = label.long() - 1
    label[(label == -1) | (label == IGNORE_INDEX - 1)] = IGNORE_INDEX
    return label


class SegmentationFolder(Dataset):
    """Pairs ``image_dir/<name>.{jpg,png}`` with ``label_dir/<name>.png`` (sorted by name).

    Args:
        image_dir: the images.
        label_dir: one PNG label map per image, same name, same size.
        num_classes: labels must be below it (or 255).
        transform: a v2 transform of ``(Image, Mask)``; None: the evaluation form (``eval_transform`` on the
            image only, the label untouched).
        eval_transform: the image transform of the evaluation form.
        reduce_zero_label: apply :func:`reduce_zero_label` to every label map.
    """

    def __init__(
        self,
        image_dir: Path,
        label_dir: Path,
        num_classes: int,
        transform=None,
        eval_transform=None,
        reduce_zero_label: bool = False,
    ):
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise UserError(
                    f"Folder '{folder}' does not exist; check data.init_args.root and the split names."
                )
        self.images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise UserError(f"Folder '{image_dir}' holds no .jpg or .png images.")
        self.labels = [label_dir / f"{p.stem}.png" for p in self.images]
        missing = next((p for p in self.labels if not p.is_file()), None)
        if missing is not None:
            raise UserError(
                f"Label map '{missing}' is missing; every image needs a PNG label map of the same name."
            )
        self.num_classes, self.transform, self.eval_transform = num_classes, transform, eval_transform
        self.reduce_zero_label, self.label_dir = reduce_zero_label, label_dir

    def __len__(self) -> int:
        return len(self.images)

    def image_of(self, index: int) -> tv_tensors.Image:
        """Image ``index`` (from shards: ``streaming/segmentation.py``)."""
        return read_image(self.images[index])

    def label_of(self, index: int) -> torch.Tensor:
        """Label map ``index`` as the PNG holds it."""
        return read_label(self.labels[index])

    def check_labels_have_classes(self, count: int = 16) -> None:
        """Refuse a set whose first ``count`` label maps hold only the ignore value: nothing would be learned, and
        the loss of a batch without a labelled pixel is 0, so the run would not say so itself. One PNG read each.

        Raises:
            UserError: naming the folder, the ignore value and ``reduce_zero_label``.
        """
        for index in range(min(count, len(self.labels))):
            label = self.label_of(index)
            label = reduce_zero_label(label) if self.reduce_zero_label else label.long()
            if bool((label != IGNORE_INDEX).any()):
                return
        shown = min(count, len(self.labels))
        zero = (
            " after reduce_zero_label (which makes class 0 the ignore value)"
            if self.reduce_zero_label
            else ""
        )
        raise UserError(
            f"every pixel of the first {shown} label maps in '{self.label_dir}' is the ignore value "
            f"{IGNORE_INDEX}{zero}: there is no class to learn; check the label PNGs"
            + (
                ", or set data.init_args.reduce_zero_label false if 0 is a class"
                if self.reduce_zero_label
                else ""
            )
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.image_of(index), self.label_of(index)
        if tuple(image.shape[1:]) != tuple(label.shape):
            raise UserError(
                f"Label map '{self.labels[index]}' is {tuple(label.shape)} (H, W) but its image "
                f"'{self.images[index]}' is {tuple(image.shape[1:])}; they must have the same size."
            )
        label = reduce_zero_label(label) if self.reduce_zero_label else label.long()
        labelled = label[label != IGNORE_INDEX]
        if labelled.numel() and int(labelled.max()) >= self.num_classes:
            raise UserError(
                f"Label map '{self.labels[index]}' holds class {int(labelled.max())} but the data set has "
                f"{self.num_classes} classes (0..{self.num_classes - 1}, 255 = ignore); fix num_classes or the labels."
            )
        if self.transform is not None:
            image, mask = self.transform(image, tv_tensors.Mask(label[None]))
            return image.as_subclass(torch.Tensor), mask[0].as_subclass(torch.Tensor).long()
        return self.eval_transform(image).as_subclass(torch.Tensor), label


class ImagePaths(Dataset):
    """The images of a folder (recursively) for ``predict``: ``(image, path, (H, W))``."""

    def __init__(self, folder: Path, eval_transform):
        if not folder.is_dir():
            raise UserError(
                f"Folder '{folder}' does not exist; set data.init_args.predict_dir to a folder of images."
            )
        self.paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise UserError(f"Folder '{folder}' holds no .jpg or .png images to predict.")
        self.eval_transform = eval_transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = read_image(self.paths[index])
        return (
            self.eval_transform(image).as_subclass(torch.Tensor),
            str(self.paths[index]),
            tuple(image.shape[1:]),
        )


class SegmentationFolderDataModule(TaskDataModule):
    """Images and PNG label maps in folders: ``root/<train_images>``, ``root/<train_labels>`` and the same for
    validation (also used for ``test``). ``__init__`` touches no disk.

    Args:
        root: the data set folder.
        num_classes: classes (after ``reduce_zero_label``).
        train_images, train_labels, val_images, val_labels: sub-folders of ``root``.
        reduce_zero_label: label 0 means "unlabelled": ignore it and shift the others down (ADE20K).
        class_names: one name per class, for the per-class IoU logs; None: ``class_0``, ``class_1``...
        batch_size: training images per device (official: 2 on each of 8 GPUs).
        num_workers: loader processes.
        scale: (long, short) sides the images are fitted to (official (2048, 512)).
        ratio_range: random factor on ``scale`` in training (official 0.5-2.0).
        crop_size: training crop (H, W) (official 512x512), padded with ignore when the image is smaller.
        cat_max_ratio: the crop is redrawn while one class covers more than this share of it (official 0.75).
        predict_dir: folder of images ``predict`` segments.
    """

    def __init__(
        self,
        root: str,
        num_classes: int,
        train_images: str = "images/train",
        train_labels: str = "labels/train",
        val_images: str = "images/val",
        val_labels: str = "labels/val",
        reduce_zero_label: bool = False,
        class_names: list[str] | None = None,
        batch_size: PositiveInt = 2,
        num_workers: NonNegativeInt = 2,
        scale: tuple[PositiveInt, PositiveInt] = (2048, 512),
        ratio_range: tuple[PositiveFloat, PositiveFloat] = (0.5, 2.0),
        crop_size: tuple[PositiveInt, PositiveInt] = (512, 512),
        cat_max_ratio: LeftOpenUnitInterval = 0.75,
        predict_dir: str | None = None,
    ):
        super().__init__()
        check_loader_sizes(batch_size, num_workers)
        if class_names is not None and len(class_names) != num_classes:
            raise UserError(
                f"class_names has {len(class_names)} names for {num_classes} classes; give one per class."
            )
        self.save_hyperparameters()  # recorded in checkpoints; the code reads the attributes below
        self.root = Path(root)
        self.num_classes = num_classes
        self.splits = {"train": (train_images, train_labels), "val": (val_images, val_labels)}
        self.reduce_zero_label = reduce_zero_label
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_transform = seg_train_transform(scale, ratio_range, crop_size, cat_max_ratio)
        self.eval_transform = seg_eval_transform(scale)
        self.predict_dir = predict_dir
        self.datasets: dict[str, Dataset] = {}

    def _split(self, split: str) -> SegmentationFolder:
        images, labels = self.splits[split]
        return SegmentationFolder(
            self.root / images,
            self.root / labels,
            self.num_classes,
            transform=self.train_transform if split == "train" else None,
            eval_transform=self.eval_transform,
            reduce_zero_label=self.reduce_zero_label,
        )

    def setup(self, stage: str) -> None:
        if stage == "predict":
            if self.predict_dir is None:
                raise UserError("predict needs images: set data.init_args.predict_dir to a folder of images.")
            self.datasets["predict"] = ImagePaths(Path(self.predict_dir), self.eval_transform)
            return
        if stage == "fit" and "train" not in self.datasets:
            self.datasets["train"] = self._split("train")
            self.datasets["train"].check_labels_have_classes()
        if "val" not in self.datasets:
            self.datasets["val"] = self._split("val")

    def _loader(self, split: str, collate_fn=None) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=1,  # images of any size, evaluated whole (official test_cfg)
            sampler=self.evaluation_sampler(self.datasets[split]),  # every image once across ranks
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        if len(self.datasets["train"]) < self.batch_size:  # drop_last would leave no batch at all
            raise UserError(
                f"The training split has {len(self.datasets['train'])} images, fewer than one batch of "
                f"{self.batch_size}; lower data.init_args.batch_size or add images."
            )
        # Resumable mid-epoch (data/base.py); drop_last: BatchNorm in the heads needs more than one value per channel.
        return self.resumable_train_loader(self.datasets["train"], self.batch_size, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("val")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", collate_fn=_collate_predict)


def _collate_predict(batch: list) -> tuple[torch.Tensor, list[str], list[tuple[int, int]]]:
    images, paths, sizes = zip(*batch, strict=True)
    return torch.stack(images), list(paths), list(sizes)
