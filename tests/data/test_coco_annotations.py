"""COCO annotation files as people have them, built as real files (the synthetic shapes, then edited the way other
tools' exports and real COCO look) and run through ``main.py``'s CLI: what the official pipeline drops is dropped
and counted in one line, what cannot be scored or trained is one ``error:`` line naming the file and the field."""

import json
from pathlib import Path

import pytest
from helpers import refused, tiny_detection

from convnext_pl.data.detection.annotations import clean_for_training
from convnext_pl.data.detection.coco import COCOInstances
from convnext_pl.data.detection.coco_synthetic import write_coco_shapes
from convnext_pl.training.cli import cli_main


@pytest.fixture
def shapes(tmp_path) -> Path:
    return write_coco_shapes(tmp_path / "shapes", train_images=8, val_images=4, image_size=64, seed=3)


def _edit(root: Path, split: str, change) -> Path:
    path = root / "annotations" / f"instances_{split}.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return path


def _fit(root: Path, runs: Path, *extra: str) -> list[str]:
    return ["fit", *tiny_detection(root, runs), "--trainer.max_epochs=1", *extra]


def test_degenerate_crowd_and_boxless_training_annotations_are_dropped_and_counted_in_one_line(
    shapes, tmp_path, capsys
):
    def spoil(document):
        anns = document["annotations"]
        del anns[0]["bbox"]  # before: IndexError: The shape of the mask [3] ... [2, 4]
        anns[1]["bbox"][2] = -5.0  # negative width
        anns[2]["bbox"][:2] = [500.0, 500.0]  # outside the 64-pixel image
        anns[3]["iscrowd"] = 1

    path = _edit(shapes, "train2017", spoil)
    total = len(json.loads(path.read_text())["annotations"])
    cli_main(_fit(shapes, tmp_path / "runs"))
    lines = [line for line in capsys.readouterr().err.splitlines() if "left out of training" in line]
    assert lines == [
        f"instances_train2017.json: 4 of {total} annotations left out of training as in the official pipeline "
        "(1 without a bbox, 1 smaller than a pixel or of negative size, 1 outside the image, 1 crowd)"
    ]
    # What training sees: every box has a positive size inside the image, no crowd.
    data = COCOInstances(shapes / "train2017", path, train=True)
    for index in range(len(data)):
        _, target = data[index]
        boxes = target["boxes"]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (target["iscrowd"] == 0).all()


def test_validation_annotations_pycocotools_cannot_score_are_refused_naming_the_id(shapes, tmp_path, capsys):
    path = _edit(shapes, "val2017", lambda d: d["annotations"][0].pop("bbox"))
    first = json.loads(path.read_text())["annotations"][0]["id"]
    assert refused(_fit(shapes, tmp_path / "runs"), capsys, tmp_path) == (
        f"error: annotation {first} of {path} has no usable 'bbox' (got None); evaluation scores every annotation "
        "as pycocotools does: give it [x, y, width, height] or remove it"
    )

    def x2_before_x1(document):
        document["annotations"][0]["bbox"] = [40.0, 10.0, -12.0, 8.0]  # before: scored as given

    _edit(shapes, "val2017", x2_before_x1)
    assert refused(_fit(shapes, tmp_path / "runs"), capsys, tmp_path) == (
        f"error: annotation {first} of {path} has a bbox of negative size [40.0, 10.0, -12.0, 8.0]; COCO boxes are "
        "[x, y, width, height]: fix it (an export writing [x1, y1, x2, y2]?) or remove it"
    )


def test_a_training_file_without_annotations_is_one_line(shapes, tmp_path, capsys):
    path = _edit(shapes, "train2017", lambda d: d.update(annotations=[]))
    # before: ValueError: num_samples should be a positive integer value, but got num_samples=0
    assert refused(_fit(shapes, tmp_path / "runs"), capsys, tmp_path) == (
        f"error: {path} has no annotation to train on: training needs boxes (bbox [x, y, width, height] of at "
        "least a pixel); check the export"
    )


def test_training_and_validation_category_lists_that_differ_are_refused_naming_the_difference(
    shapes, tmp_path, capsys
):
    def one_more(document):
        document["categories"].append({"id": 99, "name": "kite", "supercategory": "shape"})
        document["annotations"][0]["category_id"] = 99

    _edit(shapes, "train2017", one_more)
    # before: IndexError: Target 3 is out of bounds
    assert refused(_fit(shapes, tmp_path / "runs"), capsys, tmp_path) == (
        "error: the categories of instances_train2017.json and instances_val2017.json differ (only in training: "
        "99 kite; only in validation: none); export both splits with one category list"
    )


def test_a_box_only_export_trains_a_box_only_detector_and_mask_rcnn_is_refused_in_one_line(
    shapes, tmp_path, capsys
):
    def boxes_only(document):
        for ann in document["annotations"]:
            del ann["segmentation"]
            del ann["area"]  # other tools' exports often leave it out too

    for split in ("train2017", "val2017"):
        _edit(shapes, split, boxes_only)
    # before: KeyError: 'segmentation', even with masks false
    assert refused(_fit(shapes, tmp_path / "runs"), capsys, tmp_path) == (
        "error: the COCO annotations have no 'segmentation' (a box-only export) but the network is Mask R-CNN; "
        "train a box-only detector with --model.init_args.net.init_args.masks false"
    )
    cli = cli_main(_fit(shapes, tmp_path / "runs", "--model.init_args.net.init_args.masks=false"))
    assert cli.trainer.global_step == 2
    assert "val/box_AP" in cli.trainer.callback_metrics and "val/mask_AP" not in cli.trainer.callback_metrics


def test_cleaning_keeps_every_usable_annotation_untouched():
    document = {
        "images": [{"id": 1, "width": 10, "height": 10}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "bbox": [0, 0, 4, 4],
                "segmentation": [[0, 0, 4, 0, 4, 4]],
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 1,
                "bbox": [8, 8, 0.5, 4],
                "segmentation": [[8, 8, 9, 9, 8, 9]],
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    cleaned, summary = clean_for_training(document, Path("x.json"), masks=True)
    assert cleaned["annotations"] == document["annotations"][:1]
    assert summary == (
        "x.json: 1 of 2 annotations left out of training as in the official pipeline (1 smaller than a pixel or "
        "of negative size)"
    )
