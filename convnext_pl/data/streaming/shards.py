"""The shard format: tar files in webdataset's layout plus an index that gives every sample's byte range.

A split ``<location>/<split>/`` holds

* ``shard-000000.tar`` ...: POSIX tars whose members are ``<key>.cls`` (the label, ASCII) and ``<key>.<ext>`` (the
  image's original encoded bytes, ``ext`` its lower-cased suffix): what ``webdataset``, ``tar`` and most shard tools
  read as they are. ``key`` is the sample's index in the split, zero-padded;
* ``shard-000000.json``: written after its tar is complete, with the tar's size and SHA-256 and the byte range and
  label of each of its images (what lets ``--resume`` keep the shard and the reader fetch one image);
* ``index.npz`` (arrays ``shard``, ``offset``, ``size``, ``label``, one row per sample, in ImageFolder's order)
  and ``index.json`` (classes, shards with size and hash, counts), written last: a split without ``index.json``
  is an unfinished conversion.

The samples keep torchvision ``ImageFolder``'s order (sorted classes, sorted files), so sample ``i`` of a split is
image ``i`` of the folder it came from, and the same sampler seed draws the same images and augmentations.
"""

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np

from convnext_pl.data.streaming.store import Store, join
from convnext_pl.errors import UserError

FORMAT_VERSION = 1
INDEX_JSON = "index.json"
INDEX_ARRAYS = "index.npz"
HASH_CHUNK = 1 << 22


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def sidecar_name(shard: str) -> str:
    return shard.removesuffix(".tar") + ".json"


def sha256_of_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class SplitIndex:
    """One split's index: where each sample's bytes are and its label.

    Args:
        location: the split's folder or URL (``<root>/<split>``).
        classes: class names, in label order.
        shards: per shard ``{"name", "bytes", "sha256", "count"}``.
        shard, offset, size, label: one entry per sample (numpy arrays).
    """

    location: str
    classes: list[str]
    shards: list[dict]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def load_split_index(root: str, split: str) -> SplitIndex:
    """Read ``<root>/<split>/index.json`` and ``index.npz``.

    Raises:
        UserError: the index is missing (no conversion, or an unfinished one), damaged, or of another version.
    """
    location = join(root, split)
    store = Store(location)
    fix = f"convert the images with `python -m convnext_pl.data.streaming write --src <folder> --out {root}`"
    try:
        manifest = json.loads(store.read(INDEX_JSON))
        arrays = np.load(io.BytesIO(store.read(INDEX_ARRAYS)))
        columns = {name: arrays[name] for name in ("shard", "offset", "size", "label")}
    except FileNotFoundError:
        raise UserError(
            f"{join(location, INDEX_JSON)} is missing (no conversion, or an unfinished one); {fix} "
            "(add --resume to finish an interrupted one)"
        ) from None
    except (ValueError, KeyError, OSError) as err:  # json/npz damaged or truncated
        raise UserError(
            f"the index of {location} is damaged ({type(err).__name__}); {fix} --overwrite"
        ) from None
    if manifest.get("format") != FORMAT_VERSION:
        raise UserError(
            f"{join(location, INDEX_JSON)} is of format {manifest.get('format')}, not {FORMAT_VERSION}; {fix} --overwrite"
        )
    lengths = {len(column) for column in columns.values()}
    if lengths != {manifest["count"]}:
        raise UserError(
            f"the index of {location} lists {lengths} samples but {manifest['count']} are recorded; {fix} --overwrite"
        )
    return SplitIndex(location, manifest["classes"], manifest["shards"], **columns)


def write_split_index(store: Store, classes: list[str], shards: list[dict], rows: list[list[int]]) -> None:
    """Write ``index.npz`` then ``index.json`` (the marker of a finished split). ``rows``: (shard, offset, size,
    label) per sample, in sample order."""
    table = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    buffer = io.BytesIO()
    np.savez(buffer, shard=table[:, 0].astype(np.int32), offset=table[:, 1], size=table[:, 2].astype(np.int32),
             label=table[:, 3].astype(np.int32))  # fmt: skip
    store.write(INDEX_ARRAYS, buffer.getvalue())
    manifest = {"format": FORMAT_VERSION, "count": len(table), "classes": classes, "shards": shards}
    store.write(INDEX_JSON, json.dumps(manifest).encode())
