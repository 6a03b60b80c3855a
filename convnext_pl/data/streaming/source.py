"""What every streaming DataModule adds to the folder module it mirrors: where the shards are, the bounded cache
and the training order by shard. A mixin placed before the folder module (``class X(ShardSource, FolderModule)``),
so that everything else (transforms, checks, loaders, evaluation) stays the folder module's own."""

from typing import Literal

from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Dataset

from convnext_pl.data.resumable import ResumableSampler
from convnext_pl.data.streaming.reader import ShardReader
from convnext_pl.data.streaming.sampler import ShardOrderSampler
from convnext_pl.data.streaming.shards import load_split_index
from convnext_pl.data.streaming.store import is_s3
from convnext_pl.errors import UserError

GIB = 2**30
CACHE_SPARE_SHARDS = 2  # a window straddles shard boundaries: two more shards than it spans on average


class ShardSource:
    """Shards written by ``python -m convnext_pl.data.streaming write`` read instead of the folder's files.

    :meth:`store_source` keeps the options (the subclass's ``__init__`` calls it); :meth:`shard_reader` opens a split;
    :meth:`train_sampler` orders training by shard (``shuffle: shards``) or as the folder module (``global``).
    The training data set gives ``shard_samples()`` (:func:`~convnext_pl.data.streaming.shards.stored_order`).
    """

    def store_source(self, root: str, shuffle: Literal["shards", "global"], shuffle_window: int, cache_dir: str,
                     cache_limit_gb: float) -> None:  # fmt: skip
        self.root = root  # a string: an s3:// URL is no Path
        self.shuffle, self.shuffle_window = shuffle, shuffle_window
        self.cache_dir, self.cache_limit_gb = cache_dir, cache_limit_gb

    def shard_reader(self, split: str, layout: str) -> ShardReader:
        """The reader of ``<root>/<split>``, whose index must be of ``layout``."""
        index = load_split_index(self.root, split, layout)
        return ShardReader(index, self.cache_dir, int(self.cache_limit_gb * GIB))

    def check_cache(self, reader: ShardReader) -> None:
        """Refuse a cache too small for the shards a training window reads at once (it would re-download them
        over and over), and warn when a global shuffle from object storage cannot keep the split cached."""
        if not is_s3(self.root):
            return
        location, shards = reader.index.location, reader.index.shards
        total = sum(record["bytes"] for record in shards)
        limit = self.cache_limit_gb * GIB
        if self.shuffle == "global":
            if limit < total:
                rank_zero_warn(
                    f"shuffle: global reads every shard of {location} ({total / GIB:.1f} GiB) in every batch but "
                    f"cache_limit_gb is {self.cache_limit_gb}: shards will be downloaded again and again; use "
                    "shuffle: shards or a cache that holds the split"
                )
            return
        per_shard = len(reader.index) / len(shards)
        spanned = min(len(shards), int(self.shuffle_window / per_shard) + CACHE_SPARE_SHARDS)
        trainer = self.trainer
        ranks = trainer.num_devices if trainer is not None else 1  # the ranks of a node share its cache
        needed = min(total, ranks * spanned * max(record["bytes"] for record in shards))
        if limit < needed:
            raise UserError(
                f"a shuffle window of {self.shuffle_window} samples reads {spanned} shards of {location} at once "
                f"on each of {ranks} ranks ({needed / GIB:.2f} GiB) but cache_limit_gb is {self.cache_limit_gb}; "
                f"raise data.init_args.cache_limit_gb to {needed / GIB:.2f} or lower data.init_args.shuffle_window"
            )

    def train_sampler(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> ResumableSampler:
        if self.shuffle == "global":
            return super().train_sampler(dataset, num_replicas, rank, seed)
        return ShardOrderSampler(
            dataset, dataset.shard_samples(), self.shuffle_window, num_replicas, rank, seed
        )
