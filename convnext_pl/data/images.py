"""Reading image files: a loader that names the file it cannot decode, a scan for unreadable files, and the
data set of loose images that ``predict`` runs on."""

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from convnext_pl.errors import UserError, WorkerUserError

# Suffixes PIL decodes that people keep photos in; matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class CorruptImageError(WorkerUserError):
    """An image file that PIL cannot decode (truncated download, wrong extension, zero bytes)."""


def load_rgb(path: str) -> Image.Image:
    """Open an image file and decode it fully into an RGB PIL image (what torchvision's ``pil_loader`` does).

    Args:
        path: image file.

    Raises:
        CorruptImageError: naming the file, when PIL cannot decode all of it. A truncated JPEG passes
            ``Image.verify()`` and only fails at the full decode ``convert`` performs.
    """
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # PIL's decoders raise all three for damaged files
        raise CorruptImageError(
            f"cannot decode image {path} ({err}); replace or delete the file, or set "
            "data.init_args.skip_corrupt: true to leave unreadable images out"
        ) from err


class _DecodeProbe(Dataset):
    """Index -> whether ``paths[index]`` decodes, so a DataLoader can spread the scan over its workers."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> bool:
        try:
            load_rgb(self.paths[index])
        except CorruptImageError:
            return False
        return True


def find_unreadable(paths: list[str], num_workers: int = 0) -> list[str]:
    """Decode every file once and return those that fail, in input order.

    Args:
        paths: image files to check.
        num_workers: DataLoader worker processes sharing the decoding (0: in this process).
    """
    loader = DataLoader(_DecodeProbe(paths), batch_size=256, num_workers=num_workers)
    readable = torch.cat([batch for batch in loader]) if paths else torch.zeros(0, dtype=torch.bool)
    return [path for path, ok in zip(paths, readable.tolist(), strict=True) if not ok]


def find_image_files(root: str | Path) -> list[str]:
    """Every file under ``root`` (recursively) with an image extension, sorted by path."""
    return sorted(
        str(p) for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


class ImagePathDataset(Dataset):
    """Every image file under a folder, yielding ``(transformed image, path)`` for prediction.

    Args:
        root: folder searched recursively for jpg/jpeg/png/bmp/webp files (any letter case).
        transform: maps a PIL RGB image to a tensor (the data module's evaluation transform).

    Raises:
        UserError: when ``root`` is not a folder or holds no image files.
    """

    def __init__(self, root: str | Path, transform: Callable[[Image.Image], torch.Tensor]):
        if not Path(root).is_dir():
            raise UserError(
                f"predict folder {root} does not exist; set data.init_args.predict_dir to a folder of images"
            )
        self.paths = find_image_files(root)
        if not self.paths:
            raise UserError(
                f"predict folder {root} holds no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files; "
                "set data.init_args.predict_dir to a folder of images"
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        path = self.paths[index]
        return self.transform(load_rgb(path)), path

    @staticmethod
    def collate(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
        """Stack the images; keep the paths as a list (the default collate would make them a tuple)."""
        images, paths = zip(*items, strict=True)
        return torch.stack(images), list(paths)
