"""The training order for shards: each rank reads its own run of shards, a few at a time, and stops and resumes
anywhere exactly.

A global permutation (``DistributedSampler``'s) touches every shard in every batch: from object storage that
means holding the whole split in the cache before training can go fast. Here an epoch is ordered as streaming
libraries order it (MosaicML streaming's block shuffle, litdata's chunk shuffle): the shards in a permutation of
``(seed, epoch)``, their samples laid end to end and cut into one contiguous part per rank, and each part shuffled
within windows of ``window`` consecutive samples. A rank therefore reads about ``window / images per shard``
shards at once and every other rank reads other shards. The order is a pure function of ``(seed, epoch, world
size, rank)``, so :class:`~convnext_pl.data.resumable.ResumableSampler`'s offset resumes it exactly, and each
sample is still augmented under the seed of ``(seed, epoch, index)``.

Written here rather than taken from a streaming library: their loaders keep their own position and their own
worker RNG, which Lightning does not restore (litData#775), while this order plugs into the loader and the
per-sample seeding every other data module of the project resumes with (measured in docs/scaling.md).
"""

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset

from convnext_pl.data.resumable import ResumableSampler


class ShardOrderSampler(ResumableSampler):
    """Shards shuffled, one contiguous part of them per rank, samples shuffled within windows of each part.

    Like ``DistributedSampler`` (``drop_last=False``) every rank yields ``ceil(N / world)`` samples: the last parts
    are completed with the epoch's first samples.

    Args:
        dataset: the data set (only its length is used).
        shard_samples: per shard, the indices of its samples in the order they are stored.
        window: samples shuffled together; the larger, the closer to a global shuffle and the more shards at once.
        num_replicas: number of ranks sharing each epoch.
        rank: this process's rank.
        seed: seed of the order; equal on every rank.
    """

    def __init__(
        self,
        dataset: Dataset,
        shard_samples: Sequence[Sequence[int]],
        window: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed)
        if sum(len(samples) for samples in shard_samples) != len(dataset):
            raise ValueError(
                f"the shards hold {sum(map(len, shard_samples))} samples but the data set {len(dataset)}"
            )
        self.shard_samples = [torch.as_tensor(list(samples), dtype=torch.long) for samples in shard_samples]
        self.window = window

    def epoch_indices(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)  # DistributedSampler's rule
        shards = torch.randperm(len(self.shard_samples), generator=generator).tolist()
        order = torch.cat([self.shard_samples[s] for s in shards])
        total = self.num_samples * self.num_replicas
        if total > len(order):  # the last parts are completed from the start, as DistributedSampler pads
            order = order.repeat(-(-total // len(order)))[:total]
        part = order[self.rank * self.num_samples : (self.rank + 1) * self.num_samples]
        # Every rank's generator is in the same state here; each shuffles its own part's windows with it.
        for start in range(0, len(part), self.window):
            block = part[start : start + self.window]
            yield from block[torch.randperm(len(block), generator=generator)].tolist()
