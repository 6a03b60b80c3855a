"""COCO DataModule on a tiny hand-written genuine-format annotation file, and the synthetic shapes generator.

The file holds what the real ``instances_*.json`` holds: polygon and compressed-RLE masks, a crowd in
uncompressed RLE, a box reaching outside its image, an image without annotations, non-contiguous category ids.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

from convnext_pl.data.detection.coco import (
    COCODataModule,
    COCOInstances,
    COCOShapesDataModule,
    collate_detection,
    detr_train_transform,
)
from convnext_pl.data.detection.coco_synthetic import write_coco_shapes
from convnext_pl.errors import UserError

H, W = 48, 64


def _polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _ann(ann_id, image_id, category_id, segmentation, bbox, iscrowd=0):
    return dict(id=ann_id, image_id=image_id, category_id=category_id, segmentation=segmentation, bbox=bbox,
                area=float(bbox[2] * bbox[3]), iscrowd=iscrowd)  # fmt: skip


@pytest.fixture
def tiny_coco(tmp_path):
    """``tmp_path`` in the official layout: val2017 (== train2017) with 3 images and their annotations."""
    ellipse = np.zeros((H, W), dtype=np.uint8)
    ellipse[20:40, 30:50] = 1
    rle = mask_utils.encode(np.asfortranarray(ellipse))
    crowd = np.zeros((H, W), dtype=np.uint8)
    crowd[2:10, 2:30] = 1
    # Uncompressed RLE, as COCO stores crowds: column-major run lengths starting with zeros.
    flat = crowd.flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])) != 0)
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    annotations = [
        _ann(1, 1, 5, _polygon(4, 14, 20, 30), [4, 14, 16, 16]),
        _ann(2, 1, 9, {"size": rle["size"], "counts": rle["counts"].decode()}, [30, 20, 20, 20]),
        _ann(3, 1, 5, {"size": [H, W], "counts": counts}, [2, 2, 28, 8], iscrowd=1),
        _ann(4, 1, 9, _polygon(50, 5, 80, 15), [50, 5, 30, 10]),  # reaches 16 px beyond the right edge
        _ann(5, 3, 5, _polygon(10, 10, 40, 40), [10, 10, 30, 30]),
    ]
    document = {
        "images": [{"id": i, "file_name": f"{i:012d}.png", "width": W, "height": H} for i in (1, 2, 3)],
        "annotations": annotations,
        "categories": [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}],
    }
    for split in ("train2017", "val2017"):
        (tmp_path / split).mkdir()
        for i in (1, 2, 3):
            Image.fromarray(np.full((H, W, 3), 40 * i, dtype=np.uint8)).save(
                tmp_path / split / f"{i:012d}.png"
            )
    (tmp_path / "annotations").mkdir()
    for split in ("train2017", "val2017"):
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    return tmp_path


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def test_training_skips_empty_images_and_crowds_evaluation_keeps_both(tiny_coco):
    data = COCODataModule(root=str(tiny_coco), batch_size=2, num_workers=0)
    data.setup("fit")
    train, val = data.datasets["train"], data.datasets["val"]
    assert train.ids == [1, 3] and val.ids == [1, 2, 3]  # image 2 has no annotation: not trained on
    assert data.num_classes == 2 and data.category_ids == [5, 9] and data.class_names == ["five", "nine"]
    _, target = val[0]
    assert target["labels"].tolist() == [1, 2, 1, 2]  # COCO ids 5, 9 -> labels 1, 2 (0 is the background)
    assert target["iscrowd"].tolist() == [0, 0, 1, 0]
    assert target["masks"].shape == (4, H, W) and target["masks"][2].sum() == 8 * 28  # the crowd's RLE
    assert target["area"].tolist() == [256.0, 400.0, 224.0, 300.0]
    image, empty = val[1]
    assert (
        empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, H, W) and empty["labels"].shape == (0,)
    )
    _, trained = train[0]
    assert trained["iscrowd"].tolist() == [0, 0, 0]  # the crowd is gone
    assert (trained["boxes"][:, 0::2] <= trained["masks"].shape[-1]).all()  # the outside box is clipped
    images, targets = next(iter(data.val_dataloader()))
    assert isinstance(images, list) and len(images) == 2 and images[0].dtype == torch.float32
    assert len(targets) == 2


def test_flip_and_resize_keep_every_mask_inside_its_box(tiny_coco):
    dataset = COCOInstances(
        tiny_coco / "val2017", tiny_coco / "annotations/instances_val2017.json", train=True
    )
    image, target = dataset[0]
    boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(H, W))
    sample = (image, {**target, "boxes": boxes, "masks": tv_tensors.Mask(target["masks"])})
    flip_resize = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.Resize((96, 128)), v2.ClampBoundingBoxes()])
    _, out = flip_resize(*sample)
    expected_first = torch.tensor([W - 20, 14, W - 4, 30]) * 2.0  # flipped, then scaled by 2
    assert torch.allclose(out["boxes"][0], expected_first)
    for box, mask in zip(out["boxes"], out["masks"], strict=True):
        assert torch.allclose(mask_box(mask), box, atol=2.0)
    for seed in range(4):  # the official augmentation, whichever branch and crop it draws
        torch.manual_seed(seed)
        augmented, out = detr_train_transform((40, 56), (32, 40), (24, 40), 96)(*sample)
        assert out["masks"].shape[-2:] == augmented.shape[-2:]
        for box, mask in zip(out["boxes"], out["masks"], strict=True):
            if mask.any():  # nearest resampling moves a mask edge by up to a pixel per resize (three here)
                assert torch.allclose(mask_box(mask), box, atol=3.0)


def test_malformed_annotation_file_is_one_sentence_naming_it(tiny_coco):
    path = tiny_coco / "annotations/instances_val2017.json"
    path.write_text('{"images": [')
    with pytest.raises(UserError, match=f"{path} is not valid JSON"):
        COCODataModule(root=str(tiny_coco)).setup("validate")
    path.write_text('{"images": []}')
    with pytest.raises(UserError, match="is not a COCO annotation file .it lacks annotations, categories"):
        COCODataModule(root=str(tiny_coco)).setup("validate")


def test_missing_image_is_one_sentence_naming_it(tiny_coco):
    (tiny_coco / "val2017" / "000000000003.png").unlink()
    data = COCODataModule(root=str(tiny_coco))
    data.setup("validate")
    with pytest.raises(UserError, match=r"COCO image .*000000000003.png is missing"):
        data.datasets["val"][2]
    with pytest.raises(UserError, match="does not exist; download the annotations or fix data.root"):
        COCODataModule(root=str(tiny_coco / "nowhere")).setup("validate")


def test_synthetic_shapes_are_a_genuine_coco_data_set(tmp_path):
    write_coco_shapes(tmp_path, train_images=6, val_images=2, image_size=64)
    coco = COCO(str(tmp_path / "annotations/instances_train2017.json"))
    anns = list(coco.anns.values())
    assert {type(a["segmentation"]) for a in anns} == {list, dict}  # polygons and RLE
    for ann in anns:
        image = coco.imgs[ann["image_id"]]
        assert (tmp_path / "train2017" / image["file_name"]).is_file()
        assert coco.annToMask(ann).sum() == ann["area"]
    data = COCOShapesDataModule(
        root=str(tmp_path),
        batch_size=3,
        train_scales=(48, 64),
        crop_scales=(40,),
        crop_size=(32, 48),
        max_size=96,
    )
    data.prepare_data()  # the files exist: nothing is rewritten
    data.setup("fit")
    images, targets = next(iter(data.train_dataloader()))
    assert len(images) == 3 and all(len(t["boxes"]) == len(t["masks"]) == len(t["labels"]) for t in targets)
    assert collate_detection([(images[0], targets[0])])[0][0] is images[0]
