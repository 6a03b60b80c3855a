"""ImageNet-1K/22K (or any converted ImageFolder tree) read from shards on a local disk or in object storage."""

from collections.abc import Sequence
from typing import Literal

from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveFloat, PositiveInt
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader

from convnext_pl.data.augment.transforms import RECIPE_AUTO_AUGMENT, RECIPE_CROP_PCT, RECIPE_RE_PROB
from convnext_pl.data.base import ClassificationDataModule
from convnext_pl.data.classification.folder import RecipeTransforms
from convnext_pl.data.streaming.reader import ShardImages
from convnext_pl.data.streaming.source import ShardSource
from convnext_pl.errors import UserError
from convnext_pl.ranges import LeftOpenUnitInterval


class StreamingImageDataModule(ShardSource, RecipeTransforms, ClassificationDataModule):
    """Shards written by ``python -m convnext_pl.data.streaming write``, in a folder or at ``s3://bucket/prefix``.

    The transforms are :class:`~convnext_pl.data.ImageFolderDataModule`'s own and sample ``i`` of a split is
    image ``i`` of the folder it was converted from, so a sample gets the same augmentation here as from the folder
    (with ``shuffle: global`` the whole run is the folder run, batch for batch). Training resumes mid-epoch exactly
    (the base's loader); evaluation reads every image exactly once across ranks (the base's ``evaluation_sampler``).

    Args:
        root: folder or URL holding the ``train_split`` and ``val_split`` shards.
        num_classes: number of classes the index must list.
        batch_size: samples per batch on each device.
        num_workers: DataLoader worker processes.
        image_size: training and evaluation size.
        auto_augment: timm RandAugment string; None disables it.
        re_prob: random erasing probability.
        re_mode: random erasing fill mode.
        interpolation: resampling filter.
        crop_scale: area range of the training RandomResizedCrop (recipe: 0.08-1; FCMAE pre-training: 0.2-1).
        crop_pct: evaluation center-crop fraction below 384.
        train_split: the training split's folder under ``root``.
        val_split: the validation split's folder (also the test split); None: none (ImageNet-22K).
        shuffle: ``shards``: each rank reads its own run of shards, shuffled within windows of ``shuffle_window``
            samples (``sampler.py``; what streaming from object storage needs); ``global``: one permutation of the
            whole split as the folder modules shuffle (every shard at once: local shards, or a cache that holds
            the split).
        shuffle_window: samples shuffled together with ``shuffle: shards``.
        cache_dir: local folder for the shards of an ``s3://`` root.
        cache_limit_gb: most GiB the cache may hold; the least recently used shards are deleted past it.
        mean: per-channel normalisation mean (0..1 scale).
        std: per-channel normalisation std.
        predict_dir: folder of images to classify with ``predict``.
        fast_pipeline: the fast training input path (see :class:`~convnext_pl.data.ImageFolderDataModule`).
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
        train_split: str = "train",
        val_split: str | None = "val",
        shuffle: Literal["shards", "global"] = "shards",
        shuffle_window: PositiveInt = 8192,
        cache_dir: str = "~/.cache/convnext-pl/shards",
        cache_limit_gb: PositiveFloat = 100.0,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        predict_dir: str | None = None,
        fast_pipeline: bool = False,
    ):
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, image_size=image_size, predict_dir=predict_dir
        )
        self.store_source(root, shuffle, shuffle_window, cache_dir, cache_limit_gb)
        self._num_classes = num_classes
        self.train_split, self.val_split = train_split, val_split
        self.store_recipe(auto_augment, re_prob, re_mode, interpolation, crop_scale, crop_pct, mean, std,
                          fast_pipeline)  # fmt: skip

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def _split(self, split: str, transform, encoded: bool = False) -> ShardImages:
        reader = self.shard_reader(split, "imagefolder")
        if len(reader.index.classes) != self.num_classes:
            raise UserError(
                f"{reader.index.location} has {len(reader.index.classes)} classes but num_classes is "
                f"{self.num_classes}; set data.init_args.num_classes: {len(reader.index.classes)}"
            )
        return ShardImages(reader, transform, encoded=encoded)

    def _setup_splits(self, stage: str) -> None:
        if stage == "fit":
            self.train_dataset = self._split(self.train_split, self.train_transform(), self.fast_pipeline)
            self.check_cache(self.train_dataset.reader)
            self.class_names = list(self.train_dataset.classes)
        if self.val_split is None:
            if stage != "fit":
                raise UserError(f"{stage} needs a validation split; set data.init_args.val_split")
            return
        self.val_dataset = self.test_dataset = self._split(self.val_split, self.evaluation_transform())
        if stage == "fit" and self.val_dataset.classes != self.train_dataset.classes:
            only_train = sorted(set(self.train_dataset.classes) - set(self.val_dataset.classes))[:5]
            only_val = sorted(set(self.val_dataset.classes) - set(self.train_dataset.classes))[:5]
            raise UserError(
                f"the classes of {self.val_dataset.reader.index.location} differ from those of "
                f"{self.train_dataset.reader.index.location} (only in train: {', '.join(only_train) or '-'}; only "
                f"in val: {', '.join(only_val) or '-'}); convert both splits from the same class folders"
            )
        self.class_names = list(self.val_dataset.classes)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_split is None:
            return []  # Lightning skips validation for an empty list
        return super().val_dataloader()
