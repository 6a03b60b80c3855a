"""Random images with a learnable class signal, generated on the fly: for benchmarks and tests."""

import math

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch.utils.data import Dataset

from convnext_pl.data.augment.transforms import eval_transform
from convnext_pl.data.base import ClassificationDataModule

# Side of each class's random colour pattern before upsampling: coarse enough to survive a 32x downsampling
# network, rich enough (3 x 4 x 4 = 48 numbers) to keep 1000 classes apart.
PATTERN_SIDE = 4


class SyntheticDataset(Dataset):
    """Item ``i`` is ``(pattern[i % num_classes] + noise_i) / sqrt(2)``, the same every time it is read.

    Each image has zero mean and unit variance per pixel, so it is already normalised.

    Args:
        num_classes: number of classes; labels cycle through them, so every class is equally frequent.
        image_size: side length.
        length: number of items.
        seed: seed of the class patterns and, with the index, of each image's noise.
        offset: added to the index before seeding the noise, so train and val splits hold different images.
    """

    def __init__(self, num_classes: int, image_size: int, length: int, seed: int, offset: int = 0):
        self.num_classes = num_classes
        self.image_size = image_size
        self.length = length
        self.seed = seed
        self.offset = offset
        generator = torch.Generator().manual_seed(seed)
        self.patterns = torch.randn(num_classes, 3, PATTERN_SIDE, PATTERN_SIDE, generator=generator)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        target = index % self.num_classes
        # One generator per item: the image depends only on (seed, index), not on worker or read order.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.offset + index + 1)
        noise = torch.randn(3, self.image_size, self.image_size, generator=generator)
        pattern = F.interpolate(self.patterns[target][None], size=self.image_size, mode="nearest")[0]
        return (pattern + noise) / math.sqrt(2.0), target


class SyntheticDataModule(ClassificationDataModule):
    """Deterministic random images a model can learn to classify; no files at all.

    Args:
        num_classes: number of classes.
        image_size: side length.
        train_size: training images per epoch.
        val_size: validation (and test) images.
        batch_size: samples per batch on each device.
        num_workers: DataLoader worker processes.
        seed: seed of the class patterns and the noise.
        predict_dir: folder of images to classify with ``predict``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        train_size: int = 256,
        val_size: int = 64,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        predict_dir: str | None = None,
    ):
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, image_size=image_size, predict_dir=predict_dir
        )
        self._num_classes = num_classes
        self.train_size = train_size
        self.val_size = val_size
        self.seed = seed
        # Generated images are zero-mean, unit-variance; real images given to predict are mapped to [-1, 1].
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def _predict_class_names(self) -> list[str]:
        return [f"class_{i}" for i in range(self.num_classes)]

    def _setup_splits(self, stage: str) -> None:
        self.class_names = self._predict_class_names()
        self.train_dataset = SyntheticDataset(self.num_classes, self.image_size, self.train_size, self.seed)
        self.val_dataset = SyntheticDataset(
            self.num_classes, self.image_size, self.val_size, self.seed, offset=self.train_size
        )
        self.test_dataset = self.val_dataset

    def evaluation_transform(self) -> T.Compose:
        return eval_transform(self.image_size, crop_pct=1.0, mean=self.mean, std=self.std)
