"""CIFAR-10 and CIFAR-100 through torchvision, at their native 32x32 or upsampled for fine-tuning."""

import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torchvision.transforms as T
from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveInt
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity

from convnext_pl.data.augment.transforms import (
    RECIPE_CROP_PCT,
    eval_transform,
    small_image_train_transform,
    train_transform,
)
from convnext_pl.data.base import ClassificationDataModule
from convnext_pl.errors import UserError
from convnext_pl.ranges import LeftOpenUnitInterval

CIFAR_SIDE = 32
# Per-channel pixel mean and std of each training set (all 50,000 images, values scaled to 0..1).
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_DATASETS = {"cifar10": CIFAR10, "cifar100": CIFAR100}
_PRETTY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR files hold (dicts, lists, strings, numpy arrays) and refuses any other class.

    torchvision unpickles a file only after its md5 matched the published one; the files read here are the ones
    that did not match, or are not checked, and may have been replaced: unpickling an arbitrary object runs code.
    """

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # arrays pickled by numpy 1 (the published files)
        ("numpy._core.multiarray", "_reconstruct"),  # and by numpy 2
        ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR file")
        return super().find_class(module, name)


def _load_pickle(path: Path):
    with open(path, "rb") as f:
        return _CifarUnpickler(f, encoding="latin1").load()


def _pickle_problem(path: Path, is_meta: bool) -> str | None:
    """Why ``path`` is not a readable CIFAR pickle, or None when it is."""
    try:
        entry = _load_pickle(path)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as err:
        return f"it cannot be unpickled: {err}"
    if is_meta:
        return None if isinstance(entry, dict) and ("label_names" in entry or "fine_label_names" in entry) else (
            "it holds no label names"
        )  # fmt: skip
    if not isinstance(entry, dict) or "data" not in entry:
        return "it holds no 'data' array"
    data, labels = np.asarray(entry["data"]), entry.get("labels", entry.get("fine_labels"))
    if (
        data.ndim != 2
        or data.shape[1] != 3 * CIFAR_SIDE * CIFAR_SIDE
        or labels is None
        or len(labels) != len(data)
    ):
        return f"its data has shape {data.shape} instead of [N, 3072] with N labels"
    return None


def find_broken_cifar_file(folder: Path, dataset_cls: type[CIFAR10]) -> tuple[Path, str] | None:
    """The first file of a CIFAR folder that is missing, unreadable, or differs from the published md5.

    Files are first checked for readability, so a truncated file is named even when an earlier intact
    file fails the md5 comparison (as every generated test file does).

    Args:
        folder: ``cifar-10-batches-py`` or ``cifar-100-python``.
        dataset_cls: ``CIFAR10`` or ``CIFAR100``, whose class attributes list the files and their md5 sums.

    Returns:
        ``(path, reason)``, or None when every file is present, readable and matches its md5.
    """
    files = [(name, md5, False) for name, md5 in dataset_cls.train_list + dataset_cls.test_list]
    files.append((dataset_cls.meta["filename"], dataset_cls.meta["md5"], True))
    for name, _, is_meta in files:
        path = folder / name
        if not path.is_file():
            return path, "it is missing"
        if problem := _pickle_problem(path, is_meta):
            return path, problem
    for name, md5, _ in files:
        if not check_integrity(str(folder / name), md5):
            return folder / name, "its md5 differs from the published file's"
    return None


class CIFARDataModule(ClassificationDataModule):
    """CIFAR-10/100: torchvision's data sets; the test split serves as validation and test.

    At ``image_size`` 32 the images keep their size and train with a padded random crop, flip, optional
    RandAugment and random erasing, normalised with CIFAR's own statistics. At any other size (fine-tuning
    ImageNet weights at 224) they go through the ImageNet recipe's transforms, upsampled, with ImageNet's mean/std.

    Args:
        root: folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` (or receiving the download).
        variant: ``cifar10`` or ``cifar100``.
        download: fetch the data into ``root`` in ``prepare_data`` when it is not there yet.
        image_size: training and evaluation size.
        batch_size: samples per batch on each device.
        num_workers: DataLoader worker processes.
        auto_augment: timm RandAugment string (e.g. ``rand-m9-mstd0.5-inc1``); None disables it.
        re_prob: random erasing probability.
        re_mode: random erasing fill mode.
        interpolation: resampling filter.
        crop_pct: evaluation center-crop fraction when ``image_size`` is not 32.
        predict_dir: folder of images to classify with ``predict``.
    """

    def __init__(
        self,
        root: str = "data/cifar",
        variant: Literal["cifar10", "cifar100"] = "cifar10",
        download: bool = False,
        image_size: PositiveInt = CIFAR_SIDE,
        batch_size: PositiveInt = 128,
        num_workers: NonNegativeInt = 4,
        auto_augment: str | None = None,
        re_prob: ClosedUnitInterval = 0.0,
        re_mode: str = "pixel",
        interpolation: str = "bicubic",
        crop_pct: LeftOpenUnitInterval = RECIPE_CROP_PCT,
        predict_dir: str | None = None,
    ):
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, image_size=image_size, predict_dir=predict_dir
        )
        if variant not in _DATASETS:
            raise UserError(
                f"variant must be cifar10 or cifar100, got {variant!r}; set data.init_args.variant"
            )
        self.root = root
        self.variant = variant
        self.download = download
        self.auto_augment = auto_augment
        self.re_prob = re_prob
        self.re_mode = re_mode
        self.interpolation = interpolation
        self.crop_pct = crop_pct
        native = image_size == CIFAR_SIDE
        self.mean, self.std = (
            CIFAR_STATS[variant] if native else (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        )

    @property
    def num_classes(self) -> int:
        return 10 if self.variant == "cifar10" else 100

    @property
    def folder(self) -> Path:
        """The extracted data set's folder under ``root``."""
        return Path(self.root) / _DATASETS[self.variant].base_folder

    def prepare_data(self) -> None:
        """Download and extract the archive (once per node) when ``download`` is set."""
        if not self.download:
            return
        try:
            for train in (True, False):
                _DATASETS[self.variant](self.root, train=train, download=True)
        except OSError as err:  # URLError and friends: no network, proxy, full disk
            raise UserError(
                f"could not download {_PRETTY[self.variant]} into {self.root} ({err}); check the network, or "
                f"extract {_DATASETS[self.variant].filename} there yourself and set data.init_args.download: false"
            ) from err

    def train_transform(self) -> T.Compose:
        """The training transform for ``image_size``."""
        kwargs = dict(auto_augment=self.auto_augment, re_prob=self.re_prob, re_mode=self.re_mode,
                      interpolation=self.interpolation, mean=self.mean, std=self.std)  # fmt: skip
        if self.image_size == CIFAR_SIDE:
            return small_image_train_transform(CIFAR_SIDE, **kwargs)
        return train_transform(self.image_size, **kwargs)

    def evaluation_transform(self) -> T.Compose:
        # At 32 the resize and crop are identities on CIFAR images and only matter for other files.
        crop_pct = 1.0 if self.image_size == CIFAR_SIDE else self.crop_pct
        return eval_transform(self.image_size, crop_pct, self.interpolation, self.mean, self.std)

    def _load(self, train: bool, transform: T.Compose) -> CIFAR10:
        name, dataset_cls = _PRETTY[self.variant], _DATASETS[self.variant]
        if not self.folder.is_dir():
            raise UserError(
                f"{name} not found: {self.folder} does not exist; set data.init_args.download: true to fetch it, "
                f"or extract {dataset_cls.filename} into {self.root}"
            )
        try:
            return dataset_cls(self.root, train=train, transform=transform, download=False)
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError, KeyError) as err:
            # torchvision says only "not found or corrupted" (md5) or fails inside pickle; name the file.
            broken = find_broken_cifar_file(self.folder, dataset_cls)
            if broken is None:
                raise
            path, reason = broken
            raise UserError(
                f"{name} file {path} is unusable ({reason}); delete it and set data.init_args.download: true "
                "to fetch the data set again"
            ) from err

    def _setup_splits(self, stage: str) -> None:
        test = self._load(train=False, transform=self.evaluation_transform())
        if stage == "fit":
            self.train_dataset = self._load(train=True, transform=self.train_transform())
        self.val_dataset = self.test_dataset = test
        self.class_names = list(test.classes)

    def _predict_class_names(self) -> list[str]:
        meta = self.folder / _DATASETS[self.variant].meta["filename"]
        if _pickle_problem(meta, is_meta=True) is not None:
            return []
        entry = _load_pickle(meta)
        return list(entry[_DATASETS[self.variant].meta["key"]])
