"""Training batches that a resumed run sees exactly as an uninterrupted run would.

Lightning restores weights, optimizer, schedule and loop counters from a checkpoint, but not where the data
stood: a run restarted mid-epoch would shuffle again and redo the epoch from its first batch, and every random
augmentation would draw from wherever the global generators happened to be. Here every random choice the data
makes is a function of the run's seed and the sample's place in training, never of what ran before:

* :class:`ResumableSampler` shuffles with the permutation fixed by ``(seed, epoch)`` (DistributedSampler's rule,
  so ranks keep disjoint shards) and can start an epoch part-way through;
* each index travels with a seed derived from ``(seed, epoch, index)``, and :class:`SeededSamples` seeds torch,
  numpy and python's ``random`` with it while the data set reads that sample, then puts the generators back.
  A sample's augmentation is therefore the same in the main process or any worker, before or after a restart;
* :class:`ResumableDataLoader` counts the batches it has handed out and implements ``state_dict`` /
  ``load_state_dict``, the interface Lightning saves and restores for resumable loaders, so a restarted epoch
  skips exactly the batches already trained on.

Written here because torch's ``DistributedSampler`` cannot start mid-epoch and no library seeds per sample;
torchdata's ``StatefulDataLoader`` restores worker RNG states instead, but is not a dependency of this project.
"""

import itertools
from collections.abc import Iterator

from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from convnext_pl.errors import UserError
from convnext_pl.training.seeding import derive_seed, seeded_cpu_generators


class ResumableSampler(DistributedSampler):
    """Shuffles by ``(seed, epoch)``, yields ``(index, sample_seed)`` keys and can start an epoch at an offset.

    A ``DistributedSampler``, so Lightning keeps it under DDP instead of injecting its own, and every rank
    draws its own shard of the same permutation.

    Args:
        dataset: the data set to index (only its length is used).
        num_replicas: number of ranks sharing each epoch.
        rank: this process's rank.
        seed: seed of the permutations and of the per-sample augmentation seeds; equal on every rank.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0  # samples of this rank's shard to skip in the next iteration (set when resuming)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0  # a restored offset belongs to the epoch it was saved in
        super().set_epoch(epoch)

    def epoch_indices(self) -> Iterator[int]:
        """This rank's sample indices for the current epoch, in order (``DistributedSampler``'s permutation);
        subclasses that order samples otherwise (``streaming/sampler.py``) override only this."""
        return super().__iter__()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # A generator: the permutation is drawn at the first request, after Lightning's set_epoch.
        start, self.start = self.start, 0
        for index in itertools.islice(self.epoch_indices(), start, None):
            yield index, derive_seed(self.seed, self.epoch, index)


class SeededSamples(Dataset):
    """Reads ``dataset[index]`` with the CPU generators seeded from the key ``(index, seed)`` of a
    :class:`ResumableSampler`.

    Plain integer keys, from a sampler Lightning substituted (``overfit_batches``), read the sample unseeded.
    In the main process the generators are restored after each read, so training draws what it would have drawn;
    a worker process only loads data and skips that (measured on a busy 2-core machine: 0.26 ms per read with
    the restore, 0.02 ms without, against milliseconds to decode and augment an image).

    Args:
        dataset: the training data set.
        with_seed: append the sample's seed to each sample (-1 for a plain key), so that augmentations done on the
            whole batch later (``batch_augment.py``) can be seeded by it as well.
    """

    def __init__(self, dataset: Dataset, with_seed: bool = False):
        self.dataset = dataset
        self.with_seed = with_seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        if isinstance(key, int):
            return (*self.dataset[key], -1) if self.with_seed else self.dataset[key]
        index, seed = key
        with seeded_cpu_generators(seed, restore=get_worker_info() is None):
            sample = self.dataset[index]
        return (*sample, seed) if self.with_seed else sample

    def __getitems__(self, keys: list) -> list:
        # The DataLoader hands over a whole batch of keys when the data set has __getitems__.
        read_batch = getattr(self.dataset, "__getitems__", None)
        if read_batch is None or self.with_seed:
            return [self[key] for key in keys]
        if all(isinstance(key, int) for key in keys):
            return read_batch(keys)
        # A data set that augments a batch in one call draws once for the batch: seed it by the batch's first key.
        with seeded_cpu_generators(keys[0][1], restore=get_worker_info() is None):
            return read_batch([index for index, _ in keys])


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler` whose position Lightning saves in every checkpoint.

    ``state_dict()`` is ``{"seed", "epoch", "batches", "world_size"}`` (batches handed out in this epoch so far,
    by each of ``world_size`` ranks); after ``load_state_dict`` the next iteration of that epoch starts at the
    following batch. A mid-epoch state of another world size is refused (each rank's part depends on it).
    Takes the arguments of :class:`~torch.utils.data.DataLoader`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._batches_seen = 0

    def __iter__(self):
        # A generator, so nothing (workers included) starts before the first batch is requested: Lightning
        # creates the iterator before calling set_epoch when it resumes, and the epoch decides the permutation.
        skipped = self.sampler.start if isinstance(self.sampler, ResumableSampler) else 0
        self._batches_seen = skipped // self.batch_size if self.batch_size else 0
        for batch in super().__iter__():
            self._batches_seen += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        if not isinstance(self.sampler, ResumableSampler):
            return {}
        return {
            "seed": self.sampler.seed,
            "epoch": self.sampler.epoch,
            "batches": self._batches_seen,
            "world_size": self.sampler.num_replicas,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if not state_dict or not isinstance(self.sampler, ResumableSampler):
            return
        saved_world = state_dict.get("world_size", self.sampler.num_replicas)  # absent in older checkpoints
        if state_dict["batches"] and saved_world != self.sampler.num_replicas:
            # Each rank's part of an epoch depends on the number of ranks: with another count, the rest of the
            # interrupted epoch would repeat some samples and skip others.
            raise UserError(
                f"the checkpoint was saved {state_dict['batches']} batches into an epoch by {saved_world} "
                f"processes, and this run has {self.sampler.num_replicas}; resume it with {saved_world} "
                "(trainer.devices x trainer.num_nodes), or from a checkpoint saved at the end of an epoch"
            )
        # The saved seed wins over this run's: the rest of the interrupted epoch must follow the same permutation.
        self.sampler.seed = state_dict["seed"]
        self.sampler.epoch = state_dict["epoch"]
        self.sampler.start = state_dict["batches"] * self.batch_size


class EveryImageOnce(DistributedSampler):
    """Evaluation order for ``num_replicas`` ranks: rank ``r`` reads samples ``r, r + R, r + 2R, ...``, so every
    image is evaluated exactly once across the ranks (``DistributedSampler`` pads the last ranks with repeated
    images, which top-1 would count twice). A ``DistributedSampler``, so Lightning keeps it.

    The last ranks may then run one batch fewer; the tasks' metrics reduce once at the end of the epoch
    (torchmetrics states, ``sync_dist`` on epoch-level values), so uneven counts do not block. For every task's
    evaluation and prediction loaders (:meth:`~convnext_pl.data.base.TaskDataModule.evaluation_sampler`).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
