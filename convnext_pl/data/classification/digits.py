"""scikit-learn's bundled 8x8 handwritten digits: the offline default data set (no download, trains in seconds)."""

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveInt
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from convnext_pl.data.base import ClassificationDataModule

# Pixel statistics of all 1797 images scaled to 0..1 (load_digits().images / 16: mean 0.3053, std 0.3760).
DIGITS_MEAN = (0.3053,) * 3
DIGITS_STD = (0.3760,) * 3
DIGITS_MAX_VALUE = 16.0  # load_digits stores 4-bit ink counts, 0..16


def stratified_split(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Sorted train and validation indices holding out ``val_fraction`` of every class, fixed by ``seed``."""
    train, val = train_test_split(
        np.arange(len(targets)), test_size=val_fraction, random_state=seed, stratify=targets
    )
    return sorted(train.tolist()), sorted(val.tolist())


# Augmentation ranges: digits are centred strokes; 10% shifts, 10 degrees and 10% zoom keep them legible.
MAX_SHIFT = 0.1  # fraction of the image side
MAX_ROTATION = 10.0  # degrees
MAX_ZOOM = 0.1


def random_affine(n: int) -> torch.Tensor:
    """``n`` random shift/rotation/zoom matrices (N, 2, 3) in ``affine_grid``'s normalised coordinates."""
    angle = torch.empty(n).uniform_(-MAX_ROTATION, MAX_ROTATION).deg2rad()
    zoom = torch.empty(n).uniform_(1 - MAX_ZOOM, 1 + MAX_ZOOM)
    shift = torch.empty(n, 2).uniform_(-MAX_SHIFT, MAX_SHIFT) * 2  # the side spans 2 units in [-1, 1]
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    rows = [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)]
    return torch.stack(rows, dim=1)  # 2 x (N, 3) -> (N, 2, 3)


class DigitsDataset(Dataset):
    """8x8 digits rendered at ``image_size`` (bilinear), grey in 3 channels, normalised; all in memory.

    Images are kept at 8x8 and rendered a batch at a time by ``__getitems__``, which the DataLoader calls
    with a whole batch of indices: upsampling and the random affine are then one ``grid_sample`` call for the
    batch. torchvision's ``RandomAffine`` draws one set of parameters per call, so per-image parameters
    would cost a call per image (about 0.6 ms each, most of an epoch's time).

    Args:
        images: FloatTensor[N, 8, 8] with values 0..1.
        targets: LongTensor[N] of digits.
        image_size: output side length.
        augment: apply a random shift, rotation and zoom to each image.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, image_size: int, augment: bool):
        self.images = images
        self.targets = targets
        self.image_size = image_size
        self.augment = augment
        self.mean = torch.tensor(DIGITS_MEAN[0])
        self.std = torch.tensor(DIGITS_STD[0])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        n, size = len(indices), self.image_size
        images = self.images[indices][:, None]  # (B, 8, 8) -> (B, 1, 8, 8)
        theta = random_affine(n) if self.augment else torch.eye(2, 3).expand(n, 2, 3)
        # With the identity this is exactly F.interpolate(mode="bilinear"); "border" repeats the edge pixels,
        # which in these digits are the blank background.
        grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        images = ((images - self.mean) / self.std).expand(-1, 3, -1, -1)  # (B, 1, S, S) -> (B, 3, S, S)
        return list(zip(images, self.targets[indices].tolist(), strict=True))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]


class DigitsDataModule(ClassificationDataModule):
    """The 1797 8x8 digits of scikit-learn, split once into train/val by a stratified, seeded split.

    Args:
        image_size: side the 8x8 images are upsampled to (bilinear).
        val_fraction: share of each digit held out for validation (and test).
        seed: seed of the train/val split; the same seed always gives the same split.
        batch_size: samples per batch on each device.
        num_workers: DataLoader worker processes; 0 is fastest for this in-memory set.
        augment: random affine jitter on training images.
        predict_dir: folder of images to classify with ``predict`` (converted to grey).
    """

    def __init__(
        self,
        image_size: PositiveInt = 32,
        val_fraction: OpenUnitInterval = 0.2,
        seed: int = 0,
        batch_size: PositiveInt = 64,
        num_workers: NonNegativeInt = 0,
        augment: bool = True,
        predict_dir: str | None = None,
    ):
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, image_size=image_size, predict_dir=predict_dir
        )
        self.val_fraction = val_fraction
        self.seed = seed
        self.augment = augment
        self.mean, self.std = DIGITS_MEAN, DIGITS_STD

    @property
    def num_classes(self) -> int:
        return 10

    def _predict_class_names(self) -> list[str]:
        return [str(d) for d in range(10)]

    def _setup_splits(self, stage: str) -> None:
        digits = load_digits()
        images = torch.from_numpy(digits.images).float() / DIGITS_MAX_VALUE  # (1797, 8, 8) in 0..1
        targets = torch.from_numpy(digits.target).long()
        train_idx, val_idx = stratified_split(digits.target, self.val_fraction, self.seed)
        self.class_names = self._predict_class_names()
        self.train_dataset = DigitsDataset(
            images[train_idx], targets[train_idx], self.image_size, self.augment
        )
        self.val_dataset = DigitsDataset(images[val_idx], targets[val_idx], self.image_size, augment=False)
        self.test_dataset = self.val_dataset

    def evaluation_transform(self) -> T.Compose:
        return T.Compose(
            [
                T.Grayscale(num_output_channels=3),
                T.Resize((self.image_size, self.image_size)),
                T.ToTensor(),
                T.Normalize(DIGITS_MEAN, DIGITS_STD),
            ]
        )
