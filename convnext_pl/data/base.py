"""The data modules' bases: :class:`TaskDataModule`, under every task's data (a training loader that resumes
mid-epoch, its position kept in checkpoints, the loader-size checks), and :class:`ClassificationDataModule` on it
(argument storage, the four loaders, prediction over a folder of loose images)."""

from collections.abc import Callable, Sequence

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from convnext_pl.data.augment.batch_augment import DeviceAugment
from convnext_pl.data.augment.rand_augment import AugmentedImage
from convnext_pl.data.images import ImagePathDataset
from convnext_pl.data.resumable import EveryImageOnce, ResumableDataLoader, ResumableSampler, SeededSamples
from convnext_pl.errors import UserError
from convnext_pl.training.seeding import run_seed


def check_loader_sizes(batch_size: int, num_workers: int) -> None:
    """Refuse a batch size below 1 or a negative worker count now: the DataLoader would only when training starts.

    Raises:
        UserError: naming both values.
    """
    if batch_size < 1 or num_workers < 0:
        raise UserError(
            f"data.init_args.batch_size must be at least 1 and num_workers at least 0, got {batch_size} "
            f"and {num_workers}; fix them in the data config"
        )


class TaskDataModule(L.LightningDataModule):
    """What every task's data module shares: a training loader that a run resumed mid-epoch continues exactly.

    :meth:`resumable_train_loader` builds it (order and augmentations follow from ``(seed, epoch, sample)``,
    ``resumable.py``), and :meth:`state_dict` / :meth:`load_state_dict` carry its position through checkpoints.
    Subclasses store their arguments in ``__init__`` (no disk), build data sets in ``setup`` and call
    :meth:`resumable_train_loader` from ``train_dataloader``.
    """

    def __init__(self):
        super().__init__()
        self._train_loader: ResumableDataLoader | None = None
        self._train_loader_state: dict | None = None  # from a checkpoint, for the next train_dataloader()

    def resumable_train_loader(
        self,
        dataset: Dataset,
        batch_size: int,
        num_workers: int,
        collate_fn=None,
        drop_last: bool = True,
        with_seed: bool = False,
    ) -> ResumableDataLoader:
        """The training loader: shuffled by ``(seed, epoch)``, each sample read under its own seed, workers kept
        alive across epochs, and positioned where a restored checkpoint left it.

        Args:
            dataset: the training data set.
            batch_size: samples per batch on each device.
            num_workers: loader processes (0: the main process).
            collate_fn: the batch collation (None: torch's default).
            drop_last: drop the last incomplete batch.
            with_seed: append each sample's seed to it (for augmentations done later on the whole batch).
        """
        trainer = self.trainer
        sampler = self.train_sampler(
            dataset,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            seed=run_seed(),
        )
        self._train_loader = ResumableDataLoader(
            SeededSamples(dataset, with_seed=with_seed),
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
            # Re-forking workers every epoch costs seconds with large transforms; keep them alive.
            persistent_workers=num_workers > 0,
            collate_fn=collate_fn,
        )
        if self._train_loader_state:
            self._train_loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        return self._train_loader

    def train_sampler(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> ResumableSampler:
        """The training order: a permutation of the whole split per epoch; data read from shards orders by shard
        instead (``streaming/datamodule.py``)."""
        return ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, seed=seed)

    def evaluation_sampler(self, dataset: Dataset | None) -> EveryImageOnce | None:
        """The order of the evaluation and prediction loaders on several ranks: every image exactly once across
        them (:class:`~convnext_pl.data.resumable.EveryImageOnce`; Lightning's own sampler would repeat images to
        even out the ranks, and top-1, mIoU and AP would count them twice). None on one process."""
        trainer = self.trainer
        if dataset is None or trainer is None or trainer.world_size == 1:
            return None
        return EveryImageOnce(dataset, trainer.world_size, trainer.global_rank)

    def state_dict(self) -> dict:
        """Where the training loader stands; checkpoints keep it so a resumed run continues with the next batch.

        Lightning also keeps loader states with its loops, but restores them only into a loader built after the
        checkpoint is read, and ``configure_optimizers`` (``estimated_stepping_batches``) builds it before.
        """
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._train_loader_state = state_dict.get("train_loader")
        if (
            self._train_loader is not None and self._train_loader_state
        ):  # built before the checkpoint was read
            self._train_loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None


class ClassificationDataModule(TaskDataModule):
    """Loaders of ``(images: FloatTensor[N, 3, H, W], targets: LongTensor[N])`` for image classification.

    ``__init__`` only stores arguments, so a config can be instantiated on a machine without the data;
    ``setup`` reads the disk and raises :class:`UserError` for anything the user can fix. Subclasses set
    ``mean``/``std`` in ``__init__`` and implement :attr:`num_classes`, :meth:`_setup_splits` and
    :meth:`evaluation_transform`.

    Args:
        batch_size: samples per batch on each device.
        num_workers: DataLoader worker processes (0: load in the main process).
        image_size: side length of the square images the loaders yield.
        predict_dir: folder whose images (recursively) ``predict`` classifies.
    """

    mean: Sequence[float]
    std: Sequence[float]

    def __init__(self, batch_size: int, num_workers: int, image_size: int, predict_dir: str | None = None):
        super().__init__()
        check_loader_sizes(batch_size, num_workers)
        if image_size < 1:  # every subclass passes its image_size here: one check for all of them
            raise UserError(
                f"data.init_args.image_size must be at least 1, got {image_size}; fix it in the data config"
            )
        # Records every subclass's init args too; checkpoints keep them as ``datamodule_hyper_parameters``.
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.predict_dir = predict_dir
        self.class_names: list[str] = []
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: ImagePathDataset | None = None
        # Set by subclasses whose training loader yields uint8 images: it finishes them on the device.
        self.batch_augment: DeviceAugment | None = None
        # Of the batch between on_before_ and on_after_batch_transfer: its seed and its RandAugment draws (on the
        # host, where BatchRandAugment groups the images by op).
        self._batch_seed: int | None = None
        self._batch_draws: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes, known from the init args alone."""
        raise NotImplementedError

    def _setup_splits(self, stage: str) -> None:
        """Build the data sets ``stage`` ("fit", "validate" or "test") needs and set ``class_names``."""
        raise NotImplementedError

    def evaluation_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The evaluation transform, applied to a PIL RGB image of any size."""
        raise NotImplementedError

    def _predict_class_names(self) -> list[str]:
        """Class names when they can be known without the training images (empty when they cannot)."""
        return []

    def setup(self, stage: str) -> None:
        """Build the data sets of ``stage``: "fit", "validate", "test" or "predict".

        Raises:
            UserError: data missing, malformed, inconsistent with the arguments, or too small for one batch.
        """
        if stage == "predict":
            if self.predict_dir is None:
                raise UserError("predict needs images; set data.init_args.predict_dir to a folder of images")
            self.predict_dataset = ImagePathDataset(self.predict_dir, self.evaluation_transform())
            self.class_names = self._predict_class_names()
            return
        self._setup_splits(stage)
        # drop_last would leave an epoch with no batch at all, and Lightning would silently train nothing.
        if stage == "fit" and len(self.train_dataset) < self.batch_size:
            raise UserError(
                f"the training split has {len(self.train_dataset)} images, fewer than one batch of "
                f"{self.batch_size}; lower data.init_args.batch_size"
            )

    def _loader(
        self, dataset: Dataset | None, stage: str, persistent: bool = False, collate_fn=None, sampler=None
    ) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup('{stage}') must run before its data loader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=persistent and self.num_workers > 0,
            collate_fn=collate_fn,
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Fast path: take the sample seeds and RandAugment draws off a uint8 training batch before it travels to
        the device."""
        self._batch_seed, self._batch_draws = None, None
        if self.batch_augment is None or len(batch) != 3:
            return batch
        images, targets, seeds = batch
        if isinstance(images, AugmentedImage):  # collated: images [N, 3, S, S], ops and args [N, L]
            images, self._batch_draws = images.image, (images.ops, images.args)
        if images.dtype != torch.uint8:
            return batch
        # The first sample's seed stands for the batch (-1: a sampler Lightning substituted, unseeded).
        self._batch_seed = int(seeds[0]) if int(seeds[0]) >= 0 else None
        return images, targets

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Fast path: RandAugment, normalise and randomly erase a uint8 training batch on its device
        (``batch_augment.py``).

        Evaluation batches are float already (the evaluation transform is the released weights' own) and pass.
        """
        images, *rest = batch
        if self.batch_augment is None or images.dtype != torch.uint8:
            return batch
        return (self.batch_augment(images, self._batch_seed, self._batch_draws), *rest)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, resumable mid-epoch; the last incomplete batch is dropped (Mixup/CutMix mix
        a batch with its flipped self and need every batch full, official main.py)."""
        if self.train_dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup('fit') must run before its data loader")
        return self.resumable_train_loader(
            self.train_dataset, self.batch_size, self.num_workers, with_seed=self.batch_augment is not None
        )

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order, every image once across ranks."""
        dataset = self.val_dataset
        return self._loader(dataset, "fit", persistent=True, sampler=self.evaluation_sampler(dataset))

    def test_dataloader(self) -> DataLoader:
        """The held-out split in a fixed order, every image once across ranks."""
        return self._loader(self.test_dataset, "test", sampler=self.evaluation_sampler(self.test_dataset))

    def predict_dataloader(self) -> DataLoader:
        """``(images, paths: list[str])`` batches over every image under ``predict_dir``, each on one rank."""
        dataset = self.predict_dataset
        return self._loader(dataset, "predict", collate_fn=ImagePathDataset.collate,
                            sampler=self.evaluation_sampler(dataset))  # fmt: skip
