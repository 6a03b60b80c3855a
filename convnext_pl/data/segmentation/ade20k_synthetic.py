"""Synthetic scenes written as a genuine ADE20K folder: the offline default of the segmentation task.

``write_scenes(root)`` paints a sky and a ground split by a wavy horizon, then rectangles, ellipses and
triangles with their own textures, and a few patches of unlabelled clutter (label 0, ADE20K's "other"), and
writes them in the official layout (``images/{training,validation}/*.jpg``, ``annotations/.../*.png``) so that
:class:`convnext_pl.data.ADE20KDataModule`'s code path (JPEG decoding, reduce_zero_label, the crop rule) runs
on them. The whole data set is a function of the seed.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("sky", "ground", "rectangle", "ellipse", "triangle")  # labels 1..5 on disk; 0 = other
# Base colour (RGB) of each class's texture; the textures differ in pattern too, not only in colour.
_COLOURS = {1: (110, 160, 230), 2: (120, 95, 60), 3: (200, 60, 50), 4: (60, 170, 80), 5: (230, 200, 60)}


def write_scenes(
    root: str | Path, train_images: int = 96, val_images: int = 16, image_size: int = 96, seed: int = 0
) -> Path:
    """Write the scenes under ``root`` (the ``ADEChallengeData2016`` folder) and return ``root``.

    Args:
        root: folder to write into (created).
        train_images: images in ``images/training``.
        val_images: images in ``images/validation``.
        image_size: width of every image; heights vary between 3/4 and 1 of it.
        seed: the data set is a function of the seed.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("training", train_images), ("validation", val_images)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for index in range(1, count + 1):
            height = int(rng.integers(image_size * 3 // 4, image_size + 1))
            image, label = draw_scene(rng, image_size, height)
            name = f"ADE_{split[:5]}_{index:08d}"  # ADE20K's own naming: ADE_train_00000001.jpg
            Image.fromarray(image).save(root / "images" / split / f"{name}.jpg", quality=92)
            Image.fromarray(label, mode="L").save(root / "annotations" / split / f"{name}.png")
    return root


def draw_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: an (H, W, 3) uint8 image and its (H, W) uint8 label map (0 = other, 1..5 = ``CLASSES``)."""
    label = Image.new("L", (width, height), 2)  # ground
    draw = ImageDraw.Draw(label)
    horizon = height * rng.uniform(0.3, 0.6)
    phase, amplitude = rng.uniform(0, 2 * np.pi), height * rng.uniform(0.02, 0.08)
    xs = np.arange(width + 1)
    top = [
        (0, 0),
        *((int(x), int(horizon + amplitude * np.sin(phase + x / width * 6))) for x in xs),
        (width, 0),
    ]
    draw.polygon(top, fill=1)  # sky above the wavy horizon
    for _ in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(3, 6))
        w, h = rng.integers(width // 6, width // 2), rng.integers(height // 6, height // 2)
        x0, y0 = rng.integers(0, width - w), rng.integers(0, height - h)
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        if cls == 3:
            draw.rectangle(box, fill=cls)
        elif cls == 4:
            draw.ellipse(box, fill=cls)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=cls)
    for _ in range(int(rng.integers(0, 3))):  # unlabelled clutter: ignored after reduce_zero_label
        x0, y0 = rng.integers(0, width - 4), rng.integers(0, height - 4)
        size = int(rng.integers(3, max(4, width // 10)))
        draw.ellipse([int(x0), int(y0), int(x0) + size, int(y0) + size], fill=0)
    labels = np.array(label)
    image = np.zeros((height, width, 3), np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    for cls, colour in _COLOURS.items():
        texture = np.asarray(colour, np.float32) * rng.uniform(0.85, 1.15)
        pattern = {
            1: 20 * (yy / height)[..., None],  # sky: a vertical gradient
            2: rng.normal(0, 18, (height, width, 1)),  # ground: grain
            3: 25 * (((xx + yy) // 4) % 2)[..., None],  # rectangle: diagonal stripes
            4: 25 * ((xx // 3 + yy // 3) % 2)[..., None],  # ellipse: checks
            5: rng.normal(0, 6, (height, width, 1)),  # triangle: nearly flat
        }[cls]
        image = np.where((labels == cls)[..., None], texture + pattern, image)
    clutter = rng.uniform(0, 255, (height, width, 3))
    image = np.where((labels == 0)[..., None], clutter, image)
    image += rng.normal(0, 4, image.shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), labels
