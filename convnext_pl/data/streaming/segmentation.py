"""ADE20K read from shards (``python -m convnext_pl.data.streaming write --layout ade20k``): each image and its PNG
label map come out of the shards as the files hold them, and everything else (reduce_zero_label, the label checks,
the official pipeline, whole-image evaluation, class names) is :class:`~convnext_pl.data.ADE20KDataModule`'s own
code. Any data set in ADE20K's layout converts and reads the same way (``num_classes``, ``class_names``)."""

import io
from typing import Literal

import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from torchvision import tv_tensors

from convnext_pl.data.segmentation.ade20k import ADE20KDataModule
from convnext_pl.data.segmentation.folder import SegmentationFolder, read_image, read_label
from convnext_pl.data.streaming.reader import ShardReader
from convnext_pl.data.streaming.shards import stored_order
from convnext_pl.data.streaming.source import ShardSource
from convnext_pl.ranges import LeftOpenUnitInterval


class ShardSegmentation(SegmentationFolder):
    """:class:`SegmentationFolder` whose pairs are read by ``reader``: sample ``i`` is pair ``i`` of the folder
    (sorted image names). ``images`` and ``labels`` name the members, for the folder module's error messages.

    Args:
        reader: the split's shards (``ade20k`` layout).
        Others: see :class:`SegmentationFolder`.
    """

    def __init__(self, reader: ShardReader, num_classes: int, transform=None, eval_transform=None,
                 reduce_zero_label: bool = False):  # fmt: skip
        # Not SegmentationFolder.__init__: there is no folder to list, the index holds the pairs in its order.
        self.reader = reader
        self.images = [f"{reader.url(i)}#{i:09d}" for i in range(len(reader.index))]
        self.labels = [f"{name}.seg.png" for name in self.images]
        self.label_dir = reader.index.location
        self.num_classes, self.transform, self.eval_transform = num_classes, transform, eval_transform
        self.reduce_zero_label = reduce_zero_label

    def image_of(self, index: int) -> tv_tensors.Image:
        return read_image(io.BytesIO(self.reader.read(index)), name=self.images[index])

    def label_of(self, index: int) -> torch.Tensor:
        return read_label(io.BytesIO(self.reader.read_seg(index)), name=self.labels[index])

    def shard_samples(self) -> list[list[int]]:
        return stored_order(self.reader.index)


class StreamingADE20KDataModule(ShardSource, ADE20KDataModule):
    """ADE20K shards in a folder or at ``s3://bucket/prefix``, read as :class:`~convnext_pl.data.ADE20KDataModule`
    reads ``ADEChallengeData2016``: with ``shuffle: global`` a run draws the folder run's batches.

    Args:
        root: folder or URL holding the ``train_split`` and ``val_split`` shards.
        train_split, val_split: the split folders under ``root`` (the converter keeps ADE20K's names).
        shuffle: ``shards`` (each rank its own run of shards, shuffled within windows) or ``global`` (the folder
            module's permutation); see :class:`~convnext_pl.data.streaming.StreamingImageDataModule`.
        shuffle_window: samples shuffled together with ``shuffle: shards``.
        cache_dir: local folder for the shards of an ``s3://`` root.
        cache_limit_gb: most GiB of shards the cache may hold.
        Others: see :class:`~convnext_pl.data.ADE20KDataModule`.
    """

    def __init__(
        self,
        root: str,
        batch_size: PositiveInt = 2,
        num_workers: NonNegativeInt = 4,
        scale: tuple[PositiveInt, PositiveInt] = (2048, 512),
        ratio_range: tuple[PositiveFloat, PositiveFloat] = (0.5, 2.0),
        crop_size: tuple[PositiveInt, PositiveInt] = (512, 512),
        cat_max_ratio: LeftOpenUnitInterval = 0.75,
        predict_dir: str | None = None,
        num_classes: int = 150,
        class_names: list[str] | None = None,
        train_split: str = "training",
        val_split: str = "validation",
        shuffle: Literal["shards", "global"] = "shards",
        shuffle_window: PositiveInt = 2048,
        cache_dir: str = "~/.cache/convnext-pl/shards",
        cache_limit_gb: PositiveFloat = 100.0,
    ):
        super().__init__(root, batch_size, num_workers, scale, ratio_range, crop_size, cat_max_ratio, predict_dir,
                         num_classes, class_names)  # fmt: skip
        self.store_source(root, shuffle, shuffle_window, cache_dir, cache_limit_gb)
        self.splits = {"train": train_split, "val": val_split}

    def _split(self, split: str) -> ShardSegmentation:
        reader = self.shard_reader(self.splits[split], "ade20k")
        if split == "train":
            self.check_cache(reader)
        return ShardSegmentation(
            reader,
            self.num_classes,
            transform=self.train_transform if split == "train" else None,
            eval_transform=self.eval_transform,
            reduce_zero_label=self.reduce_zero_label,
        )
