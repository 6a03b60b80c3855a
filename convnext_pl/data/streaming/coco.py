"""COCO read from shards (``python -m convnext_pl.data.streaming write --layout coco``): the images come out of the
shards, the annotations out of the split's ``instances_<split>.json`` that the converter copied beside them, and
everything else (cleaning, checks, the DETR-style augmentation, batches, evaluation against that same file) is
:class:`~convnext_pl.data.COCODataModule`'s own code."""

import hashlib
import io
from pathlib import Path
from typing import Literal

from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from PIL import Image
from torchvision.transforms import v2

from convnext_pl.data.detection.coco import COCODataModule, COCOInstances, _CocoFromDocument
from convnext_pl.data.detection.transforms import CROP_SCALES, CROP_SIZE, MAX_SIZE, TRAIN_SCALES
from convnext_pl.data.images import CorruptImageError
from convnext_pl.data.streaming.reader import ShardError, ShardReader, download_checked
from convnext_pl.data.streaming.shards import sha256_of_file, stored_order
from convnext_pl.data.streaming.source import ShardSource
from convnext_pl.data.streaming.store import is_s3, join
from convnext_pl.errors import UserError


class _CocoFromShards(_CocoFromDocument):
    """``_CocoFromDocument`` whose images are read from shards: sample ``i`` holds image id ``index.label[i]``."""

    def __init__(self, reader: ShardReader, document: dict):
        super().__init__(reader.index.location, document)  # the root names the shards (a URL is no Path)
        self.reader = reader
        self.sample_of = {int(image_id): i for i, image_id in enumerate(reader.index.label.tolist())}
        missing = [image_id for image_id in self.ids if image_id not in self.sample_of]
        if missing:
            raise UserError(
                f"{len(missing)} images of the annotations (the first id {missing[0]}) are not in the shards of "
                f"{reader.index.location}; convert the split again: {reader.hint()} --overwrite"
            )

    def _load_image(self, id: int) -> Image.Image:  # noqa: A002 (CocoDetection's name)
        i = self.sample_of[id]
        try:
            return Image.open(io.BytesIO(self.reader.read(i))).convert("RGB")
        except (OSError, SyntaxError, ValueError) as err:
            raise CorruptImageError(
                f"cannot decode COCO image {id} ({self.reader.url(i)}#{i:09d}: {err}); {self.reader.hint()}"
            ) from err


class ShardCOCOInstances(COCOInstances):
    """:class:`COCOInstances` with its images read by ``reader`` (the annotation file is local)."""

    def __init__(self, reader: ShardReader, annotation_file: Path, train: bool, transform=None):
        self.reader = reader
        super().__init__(reader.index.location, annotation_file, train, transform)

    def images(self, image_dir: Path, document: dict) -> _CocoFromShards:  # no folder: the index was read
        self.sample_of = (coco := _CocoFromShards(self.reader, document)).sample_of
        return coco

    def shard_samples(self) -> list[list[int]]:
        """Per shard, the items (training keeps only images with annotations) it stores, in stored order."""
        return stored_order(self.reader.index, [self.sample_of[image_id] for image_id in self.ids])


class StreamingCOCODataModule(ShardSource, COCODataModule):
    """COCO shards in a folder or at ``s3://bucket/prefix``, read as :class:`~convnext_pl.data.COCODataModule`
    reads the official layout: sample ``i`` of a split is image ``i`` of its sorted image ids, so with
    ``shuffle: global`` a run draws the folder run's batches (images, boxes, masks, labels), and evaluation scores
    against the split's own annotation file (copied beside the shards; from a bucket downloaded into the cache
    and checked against the SHA-256 its index records).

    Args:
        root: folder or URL holding the ``train_split`` and ``val_split`` shards.
        shuffle: ``shards`` (each rank its own run of shards, shuffled within windows) or ``global`` (the folder
            module's permutation); see :class:`~convnext_pl.data.streaming.StreamingImageDataModule`.
        shuffle_window: samples shuffled together with ``shuffle: shards``.
        cache_dir: local folder for the shards (and annotation files) of an ``s3://`` root.
        cache_limit_gb: most GiB of shards the cache may hold.
        num_classes: the categories the annotation files must list (known before the data is read, so a config
            instantiates without reaching a bucket); None: read from the local annotation file, or for an
            ``s3://`` root left to the model until ``setup``.
        Others: see :class:`~convnext_pl.data.COCODataModule`.
    """

    def __init__(
        self,
        root: str,
        batch_size: PositiveInt = 2,
        num_workers: NonNegativeInt = 2,
        train_split: str = "train2017",
        val_split: str = "val2017",
        train_scales: tuple[PositiveInt, ...] = TRAIN_SCALES,
        crop_scales: tuple[PositiveInt, ...] = CROP_SCALES,
        crop_size: tuple[PositiveInt, PositiveInt] = CROP_SIZE,
        max_size: PositiveInt = MAX_SIZE,
        shuffle: Literal["shards", "global"] = "shards",
        shuffle_window: PositiveInt = 2048,
        cache_dir: str = "~/.cache/convnext-pl/shards",
        cache_limit_gb: PositiveFloat = 100.0,
        num_classes: PositiveInt | None = None,
    ):
        super().__init__(root, batch_size, num_workers, train_split, val_split, train_scales, crop_scales,
                         crop_size, max_size)  # fmt: skip
        self.store_source(root, shuffle, shuffle_window, cache_dir, cache_limit_gb)
        self._num_classes = num_classes

    def split_paths(self, split: str) -> tuple[str, Path]:
        """The split's shard location and its local annotation file (in the cache for an ``s3://`` root)."""
        location, name = join(self.root, split), f"instances_{split}.json"
        if not is_s3(self.root):
            return location, Path(location) / name
        folder = hashlib.sha256(location.encode()).hexdigest()[:16]
        return location, Path(self.cache_dir).expanduser() / folder / name

    @property
    def num_classes(self) -> int | None:
        if self._num_classes is not None:
            return self._num_classes
        return None if is_s3(self.root) and "val" not in self.datasets else super().num_classes

    def instances(self, split: str, train: bool, transform: v2.Transform | None = None) -> ShardCOCOInstances:
        reader = self.shard_reader(split, "coco")
        annotation_file = self.split_paths(split)[1]
        if is_s3(self.root):
            self._fetch_annotations(reader, annotation_file)
        if train:
            self.check_cache(reader)
        dataset = ShardCOCOInstances(reader, annotation_file, train, transform)
        if self._num_classes is not None and len(dataset.category_ids) != self._num_classes:
            raise UserError(
                f"{annotation_file} lists {len(dataset.category_ids)} categories but num_classes is "
                f"{self._num_classes}; set data.init_args.num_classes: {len(dataset.category_ids)}"
            )
        return dataset

    def _fetch_annotations(self, reader: ShardReader, path: Path) -> None:
        """Download the split's annotation file into the cache unless a copy with the recorded hash is there; a
        partial or changed download is never used."""
        record = reader.index.annotations
        if record is None:
            raise UserError(
                f"the index of {reader.index.location} records no annotation file; {reader.hint()}"
            )
        if (
            path.is_file()
            and path.stat().st_size == record["bytes"]
            and sha256_of_file(path) == record["sha256"]
        ):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        url = join(reader.index.location, record["name"])
        try:
            matches = download_checked(reader.store, record, path)
        except FileNotFoundError:
            raise ShardError(f"{url} is missing; {reader.hint()}") from None
        if not matches:
            raise ShardError(
                f"{url} does not match the SHA-256 its index records (damaged or replaced); {reader.hint()}"
            )
