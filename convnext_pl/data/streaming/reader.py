"""Reading samples out of shards by their index, from a local folder or through a bounded local cache of an
object store's shards.

Local shards are read in place: one open file per shard (a few kept open per process), ``pread`` of the sample's
byte range. Remote shards (``s3://``) are downloaded whole into the cache the first time one of their samples is
needed: to a temporary name, checked against the size and SHA-256 the index records, then renamed, so a half
download is never used; one process downloads a shard while the others wait for it (a lock file per shard). To
stay under ``cache_limit_bytes`` the least recently used shards are deleted first; with the shard order of
``sampler.py`` a rank needs only the few shards of its current window, so eviction does not re-download within an
epoch as long as the cache holds a window's shards (the DataModule checks that). Every DataLoader worker opens its
own files and client.
"""

import fcntl
import hashlib
import io
import os
from collections import OrderedDict
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from convnext_pl.data.images import CorruptImageError
from convnext_pl.data.streaming.shards import SplitIndex, sha256_of_file, stored_order, write_command
from convnext_pl.data.streaming.store import Store, is_s3, join
from convnext_pl.errors import UserError, WorkerUserError
from convnext_pl.training.seeding import cpu_generators_untouched

OPEN_SHARDS = 16  # shard files each process keeps open (a window's worth; the least recently used is closed)


class ShardError(WorkerUserError):
    """A shard that is missing, truncated or does not match its index."""


def rewrite_hint(location: str, layout: str = "imagefolder") -> str:
    return f"rewrite it with `{write_command(location.rsplit('/', 1)[0], layout)} --resume`"


class ShardReader:
    """The bytes of sample ``i`` of a split, from local shards or through the bounded cache.

    Args:
        index: the split's index.
        cache_dir: local folder for remote shards (one sub-folder per split URL).
        cache_limit_bytes: most bytes the cache folder may hold.
    """

    def __init__(self, index: SplitIndex, cache_dir: str, cache_limit_bytes: int):
        self.index = index
        self.remote = is_s3(index.location)
        self.cache_root = Path(cache_dir).expanduser()
        self.cache = self.cache_root / hashlib.sha256(index.location.encode()).hexdigest()[:16]
        self.cache_limit_bytes = cache_limit_bytes
        self._reset()

    def _reset(self) -> None:
        self._pid, self._files, self._store = os.getpid(), OrderedDict(), None

    def __getstate__(self) -> dict:  # a worker process gets no open file or client of its parent
        state = dict(self.__dict__)
        state.update(_files=OrderedDict(), _store=None)
        return state

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.index.location)
        return self._store

    def url(self, i: int) -> str:
        return join(self.index.location, self.index.shards[int(self.index.shard[i])]["name"])

    def hint(self) -> str:
        return rewrite_hint(self.index.location, self.index.layout)

    def read(self, i: int) -> bytes:
        """The encoded image of sample ``i``."""
        return self._read_range(i, int(self.index.offset[i]), int(self.index.size[i]))

    def read_seg(self, i: int) -> bytes:
        """The encoded label map of sample ``i`` (``ade20k`` shards)."""
        return self._read_range(i, int(self.index.seg_offset[i]), int(self.index.seg_size[i]))

    def _read_range(self, i: int, offset: int, size: int) -> bytes:
        if os.getpid() != self._pid:  # forked after files were opened: those belong to the parent
            self._reset()
        record = self.index.shards[int(self.index.shard[i])]
        data = os.pread(self._open(record), size, offset)
        if len(data) != size:
            raise ShardError(f"shard {self.url(i)} is truncated; {self.hint()}")
        return data

    def _open(self, record: dict) -> int:
        """A file descriptor of the shard (its cached copy for a remote split)."""
        name = record["name"]
        if name in self._files:
            self._files.move_to_end(name)
            return self._files[name]
        if self.remote:
            self._files[name] = self._open_cached(record)
        else:
            path = Path(join(self.index.location, name))
            if not path.is_file() or path.stat().st_size != record["bytes"]:
                state = "missing" if not path.is_file() else "truncated or changed"
                raise ShardError(f"shard {path} is {state}; {self.hint()}")
            self._files[name] = os.open(path, os.O_RDONLY)
        if len(self._files) > OPEN_SHARDS:
            os.close(self._files.popitem(last=False)[1])
        return self._files[name]

    def _open_cached(self, record: dict) -> int:
        """A file descriptor of the shard's cached copy, downloaded first if needed. Opened under the shard's lock
        (one process downloads it, the others wait), so another process's eviction cannot delete it in between;
        once open it stays readable even if it is evicted."""
        path = self.cache / record["name"]
        self.cache.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            if path.is_file() and path.stat().st_size == record["bytes"]:
                os.utime(path)  # most recently used
            else:
                self._make_room(record["bytes"])
                with cpu_generators_untouched():  # the sample being read is augmented after this
                    self._download(record, path)
            return os.open(path, os.O_RDONLY)

    def _make_room(self, needed: int) -> None:
        """Delete the least recently used cached shards (of any split) until ``needed`` more bytes fit. A shard
        whose lock another process holds (it is downloading or opening it) is left alone; one it already has open
        stays readable through its file descriptor after the deletion."""
        if needed > self.cache_limit_bytes:
            raise UserError(
                f"shards of {self.index.location} are {needed / 2**30:.2f} GiB, more than cache_limit_gb "
                f"{self.cache_limit_bytes / 2**30:.2f}; raise data.init_args.cache_limit_gb"
            )
        cached = []
        for path in self.cache_root.glob("*/*.tar"):
            try:
                cached.append((path.stat().st_mtime, path.stat().st_size, path))
            except FileNotFoundError:  # evicted by another process meanwhile
                pass
        used = sum(size for _, size, _ in cached)
        for _, size, path in sorted(cached, key=lambda c: c[0]):
            if used + needed <= self.cache_limit_bytes:
                break
            with open(path.with_name(path.name + ".lock"), "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                path.unlink(missing_ok=True)
            used -= size

    def _download(self, record: dict, path: Path) -> None:
        url = join(self.index.location, record["name"])
        try:
            matches = download_checked(self.store, record, path)
        except FileNotFoundError:
            raise ShardError(f"shard {url} is missing; {self.hint()}") from None
        if not matches:
            raise ShardError(
                f"shard {url} does not match the size and SHA-256 its index records (damaged or replaced); "
                f"{self.hint()}"
            )


def download_checked(store: Store, record: dict, path: Path) -> bool:
    """Download ``record["name"]`` of ``store`` to ``path`` through a partial file, kept only when its size and
    SHA-256 are the ``bytes`` and ``sha256`` the index records (False: nothing kept). The rename is atomic: another
    process sees the whole file or none. A missing object raises ``FileNotFoundError``."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        store.download(record["name"], partial)
        if partial.stat().st_size != record["bytes"] or sha256_of_file(partial) != record["sha256"]:
            return False
        os.replace(partial, path)
        return True
    finally:
        partial.unlink(missing_ok=True)


class ShardImages(Dataset):
    """``(transform(image), label)`` for each sample of a split, like torchvision's ``ImageFolder``.

    Args:
        reader: where the bytes come from.
        transform: applied to the PIL RGB image, or (``encoded``) to ``(name, uint8 tensor of the file's bytes)``
            as the fast path's transforms expect (``fast_augment.read_encoded``).
        encoded: hand the transform the encoded bytes instead of a decoded image.
    """

    def __init__(self, reader: ShardReader, transform, encoded: bool = False):
        self.reader, self.transform, self.encoded = reader, transform, encoded
        self.targets = reader.index.label.tolist()
        self.classes = reader.index.classes

    def __len__(self) -> int:
        return len(self.reader.index)

    def shard_samples(self) -> list[list[int]]:
        """Per shard, the indices of its samples in the order they are stored."""
        return stored_order(self.reader.index)

    def name(self, i: int) -> str:
        """Where sample ``i`` is: its shard's URL and the sample's key in it."""
        return f"{self.reader.url(i)}#{i:09d}"

    def __getitem__(self, i: int):
        data = self.reader.read(i)
        if self.encoded:
            sample = (self.name(i), torch.frombuffer(bytearray(data), dtype=torch.uint8))
        else:
            try:
                sample = Image.open(io.BytesIO(data)).convert("RGB")
            except (OSError, SyntaxError, ValueError) as err:
                raise CorruptImageError(
                    f"cannot decode image {self.name(i)} ({err}); {self.reader.hint()}"
                ) from err
        return self.transform(sample), self.targets[i]
