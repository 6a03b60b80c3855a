"""Writers of small data sets in the genuine on-disk formats, for tests (never download anything).

The writers live in :mod:`convnext_pl.data.fake` so the data benchmark can use them too; this module is the
name tests import them by, plus a writer of images that cannot be decoded.
"""

from pathlib import Path

from convnext_pl.data.fake import (
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
    "write_imagenet_meta",
]


def corrupt_jpeg(path: str | Path, keep_fraction: float = 0.5) -> Path:
    """Truncate an existing JPEG to ``keep_fraction`` of its bytes: its header still parses (``verify()``
    passes) but a full decode fails, as with an interrupted download."""
    path = Path(path)
    truncate_file(path, int(path.stat().st_size * keep_fraction))
    return path
