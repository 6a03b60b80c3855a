"""COCO annotation files as people have them: read once, checked, and cleaned the way the official pipelines are.

What real files hold and what happens to it (mmdet 2.x ``CocoDataset._parse_ann_info``, which ConvNeXt's
detection code uses, and torchvision's detection reference ``ConvertCocoPolysToMask``):

- training drops crowd annotations (mmdet keeps them aside as ``gt_bboxes_ignore``, unused by Mask R-CNN),
  annotations without a usable ``bbox`` (absent, not four numbers), and degenerate boxes: width or height under
  one pixel, or no overlap with the image (mmdet's rule). One summary line counts what was dropped and why;
- evaluation keeps the ground truth as pycocotools scores it (crowds included, with their ``iscrowd``), so an
  annotation pycocotools cannot score (no ``bbox``, a box of negative size) is refused naming its id;
- a box-only export (no ``segmentation`` in any annotation) trains and evaluates a box-only detector; a file
  with masks drops the annotations without one from training;
- training and validation files must share one category list.
"""

import json
import math
from collections import Counter
from pathlib import Path

from convnext_pl.errors import UserError


def read_annotation_file(path: Path) -> dict:
    """The parsed ``instances_*.json``, checked to be a COCO annotation document.

    Raises:
        UserError: the file is missing, is not JSON, or lacks ``images``/``annotations``/``categories``.
    """
    if not path.is_file():
        raise UserError(
            f"COCO annotation file {path} does not exist; download the annotations or fix data.root."
        )
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); download it again") from err
    missing = [key for key in ("images", "annotations", "categories") if key not in document]
    if not isinstance(document, dict) or missing:
        raise UserError(
            f"{path} is not a COCO annotation file (it lacks {', '.join(missing) or 'a top-level dict'})."
        )
    if not document["categories"]:
        raise UserError(f"{path} lists no categories; a COCO file names its classes under 'categories'.")
    for ann in document[
        "annotations"
    ]:  # what other tools' exports leave out, as pycocotools' loadRes fills it
        box = _box(ann)
        ann.setdefault("iscrowd", 0)
        if box is not None:
            ann.setdefault("area", box[2] * box[3])
    return document


def has_segmentations(document: dict) -> bool:
    """Whether any annotation has a ``segmentation``: False for a box-only export."""
    return any("segmentation" in ann for ann in document["annotations"])


def _box(ann: dict) -> list[float] | None:
    box = ann.get("bbox")
    if not isinstance(box, list | tuple) or len(box) != 4:
        return None
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in box):
        return None
    return [float(v) for v in box]


def _why_not_trained(ann: dict, image: dict | None, masks: bool) -> str | None:
    """Why mmdet would leave ``ann`` out of the training targets, or None when it is kept."""
    if ann.get("iscrowd", 0):
        return "crowd"
    box = _box(ann)
    if box is None:
        return "without a bbox"
    x, y, w, h = box
    if w < 1 or h < 1:
        return "smaller than a pixel or of negative size"
    if image is not None:
        overlap_w = max(0.0, min(x + w, image["width"]) - max(x, 0.0))
        overlap_h = max(0.0, min(y + h, image["height"]) - max(y, 0.0))
        if overlap_w * overlap_h == 0:
            return "outside the image"
    if masks and "segmentation" not in ann:
        return "without a segmentation"
    return None


def clean_for_training(document: dict, path: Path, masks: bool) -> tuple[dict, str | None]:
    """``document`` with only the annotations training uses, and one line counting the others (None: all kept).

    Raises:
        UserError: no annotation is left to train on.
    """
    images = {image["id"]: image for image in document["images"]}
    kept, dropped = [], Counter()
    for ann in document["annotations"]:
        reason = _why_not_trained(ann, images.get(ann.get("image_id")), masks)
        if reason is None:
            kept.append(ann)
        else:
            dropped[reason] += 1
    if not kept:
        found = f" ({_counts(dropped)})" if dropped else ""
        raise UserError(
            f"{path} has no annotation to train on{found}: training needs boxes (bbox [x, y, width, height] of at "
            "least a pixel); check the export"
        )
    summary = None
    if dropped:
        summary = (
            f"{path.name}: {sum(dropped.values())} of {len(document['annotations'])} annotations left out of "
            f"training as in the official pipeline ({_counts(dropped)})"
        )
    return {**document, "annotations": kept}, summary


def check_for_evaluation(document: dict, path: Path, masks: bool) -> None:
    """Refuse an annotation pycocotools cannot score: evaluation uses the ground truth as it is.

    Raises:
        UserError: naming the annotation's id, its field and the fix.
    """
    for ann in document["annotations"]:
        if masks and "segmentation" not in ann:
            raise UserError(
                f"annotation {ann.get('id')} of {path} has no 'segmentation' while others have one; mask AP needs "
                "one for every annotation: add it, or remove 'segmentation' from all for a box-only data set"
            )
        box = _box(ann)
        if box is None:
            raise UserError(
                f"annotation {ann.get('id')} of {path} has no usable 'bbox' (got {ann.get('bbox')!r}); evaluation "
                "scores every annotation as pycocotools does: give it [x, y, width, height] or remove it"
            )
        if box[2] < 0 or box[3] < 0:
            raise UserError(
                f"annotation {ann.get('id')} of {path} has a bbox of negative size {box}; COCO boxes are [x, y, "
                "width, height]: fix it (an export writing [x1, y1, x2, y2]?) or remove it"
            )


def check_same_categories(train: list[dict], val: list[dict], train_path: Path, val_path: Path) -> None:
    """Training labels index the validation file's categories: both files must list the same ones.

    Raises:
        UserError: naming the categories only one of them has.
    """
    names = {
        which: {cat["id"]: cat.get("name", str(cat["id"])) for cat in categories}
        for which, categories in (("train", train), ("val", val))
    }
    if names["train"] == names["val"]:
        return
    only_train = [f"{i} {n}" for i, n in names["train"].items() if names["val"].get(i) != n]
    only_val = [f"{i} {n}" for i, n in names["val"].items() if names["train"].get(i) != n]
    raise UserError(
        f"the categories of {train_path.name} and {val_path.name} differ (only in training: "
        f"{', '.join(only_train) or 'none'}; only in validation: {', '.join(only_val) or 'none'}); "
        "export both splits with one category list"
    )


def _counts(reasons: Counter) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
