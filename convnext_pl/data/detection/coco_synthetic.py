"""Synthetic shapes written as a genuine COCO data set: the offline default of the detection task.

``write_coco_shapes(root)`` draws rectangles, ellipses and triangles on textured backgrounds and writes them in
the official layout (``train2017/``, ``val2017/``, ``annotations/instances_{train,val}2017.json``), so
:class:`convnext_pl.data.COCODataModule` reads them through exactly the code path of the real COCO. The
annotations exercise what the real file holds: polygon masks (rectangles, triangles), compressed RLE masks
(ellipses), non-contiguous category ids (1, 3, 7, as COCO's 1..90 with gaps) and ``area`` from the mask.
"""

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# COCO-style non-contiguous ids: the data module must map them to contiguous labels and back.
CATEGORIES = [
    {"id": 1, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "ellipse", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
]


def write_coco_shapes(
    root: str | Path,
    train_images: int = 64,
    val_images: int = 16,
    image_size: int = 128,
    max_objects: int = 3,
    seed: int = 0,
) -> Path:
    """Write the synthetic shapes data set under ``root`` in the official COCO layout and return ``root``.

    Args:
        root: folder to write into (created); existing files there are replaced only by the same names.
        train_images: images in ``train2017``.
        val_images: images in ``val2017``.
        image_size: width of every image; heights vary between 3/4 and 1 of it (COCO's are not square).
        max_objects: at most this many shapes per image (at least one).
        seed: the whole data set is a function of the seed.
    """
    root = Path(root)
    rng = random.Random(seed)
    for split, count, first_id in (("train2017", train_images, 1), ("val2017", val_images, 100_001)):
        images, annotations = [], []
        (root / split).mkdir(parents=True, exist_ok=True)
        for image_id in range(first_id, first_id + count):
            width, height = image_size, rng.randint(image_size * 3 // 4, image_size)
            image, objects = _draw_image(rng, width, height, max_objects)
            file_name = f"{image_id:012d}.png"  # lossless: JPEG artefacts would blur the tiny shapes' edges
            image.save(root / split / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for category_id, segmentation, mask in objects:
                annotations.append(
                    _annotation(len(annotations) + first_id, image_id, category_id, segmentation, mask)
                )
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        document = {
            "info": {"description": "convnext-pl synthetic shapes", "version": "1.0"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": CATEGORIES,
        }
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    return root


def _draw_image(rng: random.Random, width: int, height: int, max_objects: int):
    """An image with 1..max_objects shapes; each object is ``(category_id, segmentation, binary mask)``."""
    background = np.asarray([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 25, (height, width, 3))
    canvas = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8)).filter(ImageFilter.BLUR)
    draw = ImageDraw.Draw(canvas)
    objects = []
    for _ in range(rng.randint(1, max_objects)):
        category = rng.choice(CATEGORIES)["id"]
        side = rng.randint(min(width, height) // 5, min(width, height) // 2)
        x0, y0 = rng.randint(0, width - side), rng.randint(0, height - side)
        color = tuple(rng.randint(0, 255) for _ in range(3))
        mask_image = Image.new("L", (width, height), 0)
        mask_draw = ImageDraw.Draw(mask_image)
        if category == 3:  # ellipse: stored as RLE, the form COCO uses for crowds and converted masks
            box = [x0, y0, x0 + side - 1, y0 + rng.randint(side // 2, side) - 1]
            draw.ellipse(box, fill=color)
            mask_draw.ellipse(box, fill=1)
            segmentation = None
        else:  # rectangle or triangle: stored as a polygon, the form of most COCO annotations
            if category == 1:
                h = rng.randint(side // 2, side)
                polygon = [(x0, y0), (x0 + side, y0), (x0 + side, y0 + h), (x0, y0 + h)]
            else:
                polygon = [(x0 + side / 2, y0), (x0 + side, y0 + side), (x0, y0 + side)]
            draw.polygon(polygon, fill=color)
            segmentation = [[float(c) for point in polygon for c in point]]
        mask = np.array(mask_image, dtype=np.uint8)
        if (
            segmentation is not None
        ):  # the polygon's mask as pycocotools rasterises it, so area and bbox agree
            from pycocotools import mask as mask_utils

            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
        # A later shape covers an earlier one: the earlier masks lose the covered pixels, as in real photos, and
        # an occluded polygon no longer describes its mask, so that object is stored as RLE.
        for earlier in objects:
            if (earlier[2] & mask).any():
                earlier[2] &= 1 - mask
                earlier[1] = None
        objects.append([category, segmentation, mask])
    return canvas, [obj for obj in objects if obj[2].sum() >= 4]


def _annotation(annotation_id: int, image_id: int, category_id: int, segmentation, mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask))
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    if segmentation is None:
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "area": float(mask_utils.area(rle)),
        "bbox": [x, y, w, h],
        "iscrowd": 0,
    }
