"""Writers of small data sets in the genuine on-disk formats, for tests (never download anything).

The writers live in :mod:`convnext_pl.data.classification.synthetic_files` so the data benchmark can use them too; this module is the
name tests import them by, plus a writer of images that cannot be decoded and one of loose digit images.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from convnext_pl.data.classification.synthetic_files import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    truncate_file,
    write_cifar,
    write_image_folder,
    write_imagenet_meta,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "corrupt_jpeg",
    "truncate_file",
    "write_cifar",
    "write_image_folder",
    "write_digit_images",
    "write_imagenet_meta",
]


def corrupt_jpeg(path: str | Path, keep_fraction: float = 0.5) -> Path:
    """Truncate an existing JPEG to ``keep_fraction`` of its bytes: its header still parses (``verify()``
    passes) but a full decode fails, as with an interrupted download."""
    path = Path(path)
    truncate_file(path, int(path.stat().st_size * keep_fraction))
    return path


def write_digit_images(folder: Path, count: int) -> dict[str, int]:
    """The first ``count`` scikit-learn digits as 24x24 8-bit PNGs (white ink on black, as load_digits stores
    them), every other one in a sub-folder, plus a text file ``predict`` must skip. Returns path -> true digit."""
    digits = load_digits()
    truths = {}
    for i in range(count):
        path = folder / ("nested" if i % 2 else ".") / f"digit_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((24, 24), Image.BILINEAR).save(path)  # any size: predict resizes
        truths[str(path)] = int(digits.target[i])
    (folder / "notes.txt").write_text("not an image: predict must skip it")
    return truths
