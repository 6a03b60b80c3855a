"""COCO instance segmentation (boxes + masks) in the official layout, and the synthetic shapes in the same layout.

The official layout is ``<root>/train2017/``, ``<root>/val2017/`` and ``<root>/annotations/instances_{split}.json``.
Images and annotations are read by torchvision's ``CocoDetection`` wrapped for ``transforms.v2``, so boxes and
masks are transformed together with the image. As the official mmdet 2.x pipeline (docs/paper.md §6): training
uses the annotations :mod:`~convnext_pl.data.detection.annotations` keeps (no crowds, no degenerate boxes), skips
images left without one and images under 32 pixels (mmdet ``CocoDataset._filter_imgs``), and augments with the
official 3x config's DETR-style multi-scale recipe (:func:`detr_train_transform`); evaluation images come at their
original size (the model resizes them and maps its detections back), scored against the annotations as given,
crowds included with ``iscrowd``, as pycocotools does.

Batches are ``(images, targets)``: a list of float ``(3, H, W)`` images in [0, 1] of varying sizes, and a list of
dicts with ``boxes`` (``(N, 4)`` XYXY pixels), ``labels`` (1..num_classes; 0 is the background), ``masks``
(``(N, H, W)`` uint8; absent for a box-only file), ``iscrowd``, ``area`` and ``image_id``."""

import contextlib
import io
import json
import sys
from pathlib import Path

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, VisionDataset, wrap_dataset_for_transforms_v2
from torchvision.transforms import v2

from convnext_pl.data.base import TaskDataModule
from convnext_pl.data.detection.annotations import (
    check_for_evaluation,
    check_same_categories,
    clean_for_training,
    has_segmentations,
    read_annotation_file,
)
from convnext_pl.data.detection.transforms import (
    CROP_SCALES,
    CROP_SIZE,
    MAX_SIZE,
    TRAIN_SCALES,
    check_augmentation_options,
    detr_train_transform,
)
from convnext_pl.errors import UserError

MIN_IMAGE_SIZE = 32  # mmdet skips training images smaller than this


class COCOInstances(Dataset):
    """One COCO split as ``(image, target)`` pairs with contiguous labels (see the module docstring).

    Args:
        image_dir: folder of the split's images.
        annotation_file: the split's ``instances_*.json``.
        train: clean the annotations for training (``annotations.clean_for_training``), skip images left without
            one (and images under 32 pixels); else check them for evaluation.
        transform: a ``transforms.v2`` transform of ``(image, target)``; images are float in [0, 1] already.
    """

    def __init__(
        self, image_dir: Path, annotation_file: Path, train: bool, transform: v2.Transform | None = None
    ):
        document = read_annotation_file(annotation_file)
        self.has_masks = has_segmentations(document)  # False: a box-only export
        self.categories = document["categories"]
        self.summary = None  # the line counting the annotations training leaves out
        if train:
            document, self.summary = clean_for_training(document, annotation_file, self.has_masks)
        else:
            check_for_evaluation(document, annotation_file, self.has_masks)
        try:
            dataset = self.images(image_dir, document)
        except (KeyError, TypeError) as err:
            raise UserError(
                f"{annotation_file} is not a COCO annotation file ({type(err).__name__}: {err}); "
                "give the instances_*.json of the official download"
            ) from err
        coco = dataset.coco
        self.image_dir, self.train, self.transform = image_dir, train, transform
        self.category_ids = sorted(coco.getCatIds())
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.category_ids)}  # 0 is the background
        self.class_names = [coco.cats[cat]["name"] for cat in self.category_ids]
        if train:
            with_annotations = {ann["image_id"] for ann in coco.anns.values()}
            dataset.ids = [
                i
                for i in dataset.ids
                if i in with_annotations
                and min(coco.imgs[i]["width"], coco.imgs[i]["height"]) >= MIN_IMAGE_SIZE
            ]
        self.ids = dataset.ids
        keys = ("image_id", "boxes", "labels", "iscrowd", "area") + (("masks",) if self.has_masks else ())
        self.dataset = wrap_dataset_for_transforms_v2(dataset, target_keys=keys)

    def images(self, image_dir: Path, document: dict) -> CocoDetection:
        """The split as torchvision's ``CocoDetection`` on the document (from shards: ``streaming/coco.py``)."""
        if not image_dir.is_dir():
            raise UserError(f"COCO image folder {image_dir} does not exist; put the split's images there.")
        return _CocoFromDocument(image_dir, document)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image, target = self.dataset[index]
        except FileNotFoundError as err:
            raise UserError(
                f"COCO image {err.filename} is missing; restore it or remove it from the annotation file"
            ) from err
        image = v2.functional.to_dtype(v2.functional.to_image(image), torch.float32, scale=True)
        target = self._contiguous(target, tuple(image.shape[-2:]))
        if self.transform is not None:
            image, target = self.transform(image, target)
        out = {
            "image_id": target["image_id"],
            "boxes": target["boxes"].as_subclass(torch.Tensor),
            "labels": target["labels"],
            "iscrowd": target["iscrowd"],
            "area": target["area"],
        }
        if self.has_masks:
            out["masks"] = target["masks"].as_subclass(torch.Tensor)
        return image, out

    def _contiguous(self, target: dict, size: tuple[int, int]) -> dict:
        """Tensors for every key (an image without annotations gets empty ones), COCO ids -> labels 1..K."""
        count = len(target.get("labels", []))
        iscrowd = torch.tensor(target.get("iscrowd", []), dtype=torch.int64).reshape(count)
        # Crowds are not trained on (mmdet: gt_bboxes_ignore, which Mask R-CNN does not use).
        keep = iscrowd == 0 if self.train else torch.ones(count, dtype=torch.bool)
        boxes = target.get("boxes", torch.zeros(0, 4)).float()  # integer boxes in a JSON load as int64
        labels = [self.label_of[int(c)] for c in target.get("labels", [])]
        contiguous = {
            "image_id": target["image_id"],
            "boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=size),
            "labels": torch.tensor(labels, dtype=torch.int64)[keep],
            "iscrowd": iscrowd[keep],
            "area": torch.tensor(target.get("area", []), dtype=torch.float32).reshape(count)[keep],
        }
        if self.has_masks:
            masks = target.get("masks", torch.zeros(0, *size, dtype=torch.uint8))
            contiguous["masks"] = tv_tensors.Mask(masks[keep])
        return contiguous


class _CocoFromDocument(CocoDetection):
    """torchvision's ``CocoDetection`` on an annotation document already read (and cleaned): a 450 MB
    ``instances_train2017.json`` is parsed once, not again by pycocotools."""

    def __init__(self, image_dir: Path, document: dict):
        from pycocotools.coco import COCO

        VisionDataset.__init__(self, str(image_dir))
        self.coco = COCO()
        self.coco.dataset = document
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs.keys())


def collate_detection(batch: list) -> tuple[list, list]:
    """Images of different sizes stay a list; the model pads them into one batch tensor."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class COCODataModule(TaskDataModule):
    """COCO instance segmentation in the official layout (see the module docstring).

    Args:
        root: folder with ``train2017/``, ``val2017/`` and ``annotations/``.
        batch_size: images per device (official: 2 on each of 8 GPUs).
        num_workers: loader processes per device.
        train_split: name of the training split's image folder and annotation suffix.
        val_split: the same for validation, testing and prediction.
        train_scales: shorter sides of the multi-scale training resize (official 480..800 step 32).
        crop_scales: shorter sides before the random crop (official 400, 500, 600).
        crop_size: range of the random crop's sides (official 384..600).
        max_size: longest side after any resize (official 1333).
    """

    def __init__(
        self,
        root: str = "data/coco",
        batch_size: PositiveInt = 2,
        num_workers: NonNegativeInt = 2,
        train_split: str = "train2017",
        val_split: str = "val2017",
        train_scales: tuple[PositiveInt, ...] = TRAIN_SCALES,
        crop_scales: tuple[PositiveInt, ...] = CROP_SCALES,
        crop_size: tuple[PositiveInt, PositiveInt] = CROP_SIZE,
        max_size: PositiveInt = MAX_SIZE,
    ):
        super().__init__()
        check_augmentation_options(train_scales, crop_scales, crop_size)
        self.save_hyperparameters()  # a subclass's own arguments when called from a subclass (Lightning's rule)
        self.root = Path(root)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_split, self.val_split = train_split, val_split
        self.augmentation = dict(
            scales=list(train_scales),
            crop_scales=list(crop_scales),
            crop_size=tuple(crop_size),
            max_size=max_size,
        )
        self.datasets: dict[str, COCOInstances] = {}

    def split_paths(self, split: str) -> tuple[Path, Path]:
        """The image folder and annotation file of a split."""
        return self.root / split, self.root / "annotations" / f"instances_{split}.json"

    @property
    def num_classes(self) -> int | None:
        """Object classes (without the background), read from the annotation file's categories."""
        path = self.split_paths(self.val_split)[1]
        if "val" in self.datasets:
            return len(self.datasets["val"].category_ids)
        if not path.is_file():
            return None  # unknown until the data exists; the model's num_classes is then used as written
        try:
            return len(json.loads(path.read_text()).get("categories", []))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None  # setup() names the broken file in one sentence

    def instances(self, split: str, train: bool, transform: v2.Transform | None = None) -> COCOInstances:
        """One split's data set (from shards: ``streaming/coco.py``)."""
        return COCOInstances(*self.split_paths(split), train=train, transform=transform)

    def setup(self, stage: str) -> None:
        if stage == "fit" and "train" not in self.datasets:
            transform = detr_train_transform(**self.augmentation)
            self.datasets["train"] = self.instances(self.train_split, train=True, transform=transform)
        if "val" not in self.datasets:
            self.datasets["val"] = self.instances(self.val_split, train=False)
        if stage == "fit":
            train, val = self.datasets["train"], self.datasets["val"]
            check_same_categories(
                train.categories,
                val.categories,
                self.split_paths(self.train_split)[1],
                self.split_paths(self.val_split)[1],
            )
            if train.summary and (self.trainer is None or self.trainer.is_global_zero):
                print(train.summary, file=sys.stderr, flush=True)

    @property
    def has_masks(self) -> bool | None:
        """Whether the annotations have masks (False: a box-only export, for a box-only detector; None: not set
        up yet)."""
        return self.datasets["val"].has_masks if "val" in self.datasets else None

    @property
    def category_ids(self) -> list[int]:
        """COCO category id of each label 1..K (index 0 is label 1), for writing COCO results."""
        return self.datasets["val"].category_ids

    @property
    def class_names(self) -> list[str]:
        return self.datasets["val"].class_names

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=self.evaluation_sampler(self.datasets[split]),  # every image once across ranks
            num_workers=self.num_workers,
            collate_fn=collate_detection,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, resumable mid-epoch (``data/base.py``); the last smaller batch is kept."""
        return self.resumable_train_loader(
            self.datasets["train"],
            self.batch_size,
            self.num_workers,
            collate_fn=collate_detection,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("val")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("val")


class COCOShapesDataModule(COCODataModule):
    """The offline default: synthetic shapes written once as a genuine COCO data set, read as COCO is.

    ``prepare_data`` writes ``root`` with :func:`convnext_pl.data.detection.coco_synthetic.write_coco_shapes` when its
    annotation files are absent; an existing folder is read as it is, never overwritten.

    Args:
        root: where the data set is written.
        train_images: training images.
        val_images: validation images.
        image_size: image width (heights vary from 3/4 of it to all of it).
        seed: the data set is a function of the seed.
        **coco_options: any other :class:`COCODataModule` argument (batch size, scales, ...).
    """

    def __init__(
        self,
        root: str = "data/coco_shapes",
        train_images: PositiveInt = 64,
        val_images: PositiveInt = 16,
        image_size: PositiveInt = 128,
        seed: int = 0,
        batch_size: PositiveInt = 4,
        num_workers: NonNegativeInt = 0,
        train_scales: tuple[PositiveInt, ...] = (96, 112, 128, 144, 160),
        crop_scales: tuple[PositiveInt, ...] = (80, 96, 112),
        crop_size: tuple[PositiveInt, PositiveInt] = (64, 112),
        max_size: PositiveInt = 224,
    ):
        super().__init__(
            root=root,
            batch_size=batch_size,
            num_workers=num_workers,
            train_scales=train_scales,
            crop_scales=crop_scales,
            crop_size=crop_size,
            max_size=max_size,
        )
        self.synthetic = dict(
            train_images=train_images, val_images=val_images, image_size=image_size, seed=seed
        )

    @property
    def num_classes(self) -> int:
        from convnext_pl.data.detection.coco_synthetic import CATEGORIES

        return len(CATEGORIES)

    def prepare_data(self) -> None:
        if all(self.split_paths(s)[1].is_file() for s in (self.train_split, self.val_split)):
            return
        from convnext_pl.data.detection.coco_synthetic import write_coco_shapes

        write_coco_shapes(self.root, **self.synthetic)
