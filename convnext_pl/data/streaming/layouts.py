"""What the converter reads from each source layout: per split, the samples in the order of the folder data set
that reads the same tree, so that sample ``i`` of the shards is item ``i`` of that data set.

* ``imagefolder``: ``src/<split>/<class>/*`` (or a flat tree of class folders: split ``train``), torchvision
  ``ImageFolder``'s order (``VisibleImageFolder``);
* ``coco``: ``src/<split>/`` images and ``src/annotations/instances_<split>.json``, in sorted image ids
  (``detection/coco.py``'s ``_CocoFromDocument``); the annotation file is copied beside the shards, as it is;
* ``ade20k``: ``src/images/<split>/*.jpg`` and ``src/annotations/<split>/*.png``, in sorted image names
  (``segmentation/folder.py``'s ``SegmentationFolder``, which lists them here too).
"""

from dataclasses import dataclass
from pathlib import Path

from convnext_pl.data.classification.folder import VisibleImageFolder, list_class_folders
from convnext_pl.data.detection.annotations import read_annotation_file
from convnext_pl.data.segmentation.folder import SegmentationFolder
from convnext_pl.errors import UserError

DEFAULT_SPLITS = {
    "imagefolder": ["train", "val"],
    "coco": ["train2017", "val2017"],  # the official download's folders
    "ade20k": ["training", "validation"],  # ADEChallengeData2016's folders
}


@dataclass(frozen=True)
class Sample:
    """One sample to write: its index in the split, its image file, its label (class, COCO image id or 0) and its
    label map (``ade20k``)."""

    index: int
    image: str
    label: int
    seg: str | None = None


@dataclass
class SourceSplit:
    """One split of the source: its name, class names (COCO: category names in id order), samples, and the
    annotation file to copy beside the shards (``coco``)."""

    name: str
    classes: list[str]
    samples: list[Sample]
    annotations: Path | None = None


def _require_folder(src: str, layout: str) -> Path:
    if not Path(src).is_dir():
        raise UserError(f"--src {src} does not exist; give the {layout} root to convert")
    return Path(src)


def _imagefolder_splits(src: str, splits: list[str]) -> list[SourceSplit]:
    root = _require_folder(src, "ImageFolder")
    folders = {split: root / split for split in splits if (root / split).is_dir()}
    if not folders and list_class_folders(src):  # ImageNet-22K's <wnid>/*.JPEG with no split folders
        folders = {"train": root}
    if not folders:
        raise UserError(
            f"{src} has neither {'/'.join(splits)} folders nor class folders; give an ImageFolder root"
        )
    out = []
    for split, folder in folders.items():
        dataset = VisibleImageFolder(str(folder), allow_empty=True)
        if not dataset.samples:
            raise UserError(f"{folder} has no images; put each class's images in {folder}/<class>/")
        samples = [Sample(i, path, label) for i, (path, label) in enumerate(dataset.samples)]
        out.append(SourceSplit(split, dataset.classes, samples))
    return out


def _coco_splits(src: str, splits: list[str]) -> list[SourceSplit]:
    root = _require_folder(src, "COCO")
    out = []
    for split in splits:
        annotation_file = root / "annotations" / f"instances_{split}.json"
        if not annotation_file.is_file():
            continue
        document = read_annotation_file(annotation_file)
        # image id -> file; a repeated id keeps its last entry, as pycocotools' index does
        files = {image["id"]: image["file_name"] for image in document["images"]}
        samples = [Sample(i, str(root / split / files[key]), key) for i, key in enumerate(sorted(files))]
        missing = [s.image for s in samples if not Path(s.image).is_file()]
        if missing:
            raise UserError(
                f"{len(missing)} images of {annotation_file} are missing, the first {missing[0]}; put the split's "
                f"images in {root / split}/"
            )
        classes = [c["name"] for c in sorted(document["categories"], key=lambda c: c["id"])]
        out.append(SourceSplit(split, classes, samples, annotations=annotation_file))
    if not out:
        raise UserError(
            f"{root}/annotations has none of {', '.join(f'instances_{s}.json' for s in splits)}; give the COCO "
            "root (train2017/, val2017/, annotations/)"
        )
    return out


def _ade20k_splits(src: str, splits: list[str]) -> list[SourceSplit]:
    root = _require_folder(src, "ADE20K")
    out = []
    for split in splits:
        if not (root / "images" / split).is_dir():
            continue
        # num_classes only bounds the labels when they are read; the converter keeps the bytes as they are.
        folder = SegmentationFolder(root / "images" / split, root / "annotations" / split, num_classes=256)
        samples = [
            Sample(i, str(image), 0, str(label))
            for i, (image, label) in enumerate(zip(folder.images, folder.labels, strict=True))
        ]
        out.append(SourceSplit(split, [], samples))
    if not out:
        raise UserError(
            f"{root}/images has none of {', '.join(splits)}; give the ADEChallengeData2016 folder "
            "(images/ and annotations/)"
        )
    return out


def source_splits(src: str, layout: str, splits: list[str] | None = None) -> list[SourceSplit]:
    """The splits of ``src`` present among ``splits`` (the layout's own when None), read in ``layout``.

    Raises:
        UserError: ``src`` is missing, holds none of the splits, or misses files its layout needs.
    """
    splits = splits or DEFAULT_SPLITS[layout]
    reader = {"imagefolder": _imagefolder_splits, "coco": _coco_splits, "ade20k": _ade20k_splits}[layout]
    return reader(src, splits)
