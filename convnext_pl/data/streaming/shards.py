"""The shard format: tar files in webdataset's layout plus an index that gives every sample's byte range.

A split ``<location>/<split>/`` holds

* ``shard-000000.tar`` ...: POSIX tars whose members are, per sample, ``<key>.<ext>`` (the image's original
  encoded bytes, ``ext`` its lower-cased suffix) and what the layout adds: ``<key>.cls`` (the class, ASCII;
  ``imagefolder``), ``<key>.id`` (the COCO image id, ASCII; ``coco``) or ``<key>.seg.png`` (the label map's
  original bytes; ``ade20k``): what ``webdataset``, ``tar`` and most shard tools read as they are. ``key`` is the
  sample's index in the split, zero-padded;
* ``shard-000000.json``: written after its tar is complete, with the tar's size and SHA-256 and the byte ranges and
  label of each of its samples (what lets ``--resume`` keep the shard and the reader fetch one sample);
* ``index.npz`` (arrays ``shard``, ``offset``, ``size``, ``label`` and, for ``ade20k``, ``seg_offset`` and
  ``seg_size``: one row per sample) and ``index.json`` (layout, classes, shards with size and hash, counts, and for
  ``coco`` the split's annotation file copied beside the shards), written last: a split without ``index.json`` is
  an unfinished conversion.

``label`` is the class (``imagefolder``), the COCO image id (``coco``) or 0 (``ade20k``). The samples keep the
order of the folder data set they came from (torchvision ``ImageFolder``'s sorted classes and files; COCO's sorted
image ids; ADE20K's sorted image names), so sample ``i`` of a split is image ``i`` of that data set, and the same
sampler seed draws the same images and augmentations. Format 1 (before the dense layouts) is ``imagefolder``
without a ``layout`` field and is still read.
"""

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np

from convnext_pl.data.streaming.store import Store, join
from convnext_pl.errors import UserError

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # 1: classification shards written before the dense layouts (no "layout" field)
# The DataModule that reads each layout (named in the error for shards of another layout).
READER_OF_LAYOUT = {
    "imagefolder": "StreamingImageDataModule",
    "coco": "StreamingCOCODataModule",
    "ade20k": "StreamingADE20KDataModule",
}
SEG_COLUMNS = ("seg_offset", "seg_size")  # the label PNG's byte range, ade20k only
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
        shard, offset, size, label: one entry per sample (numpy arrays; ``label`` as the module docstring says).
        layout: ``imagefolder``, ``coco`` or ``ade20k``.
        seg_offset, seg_size: the label PNG's byte range per sample (``ade20k``), else None.
        annotations: ``{"name", "bytes", "sha256"}`` of the annotation file beside the shards (``coco``), else None.
    """

    location: str
    classes: list[str]
    shards: list[dict]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    label: np.ndarray
    layout: str = "imagefolder"
    seg_offset: np.ndarray | None = None
    seg_size: np.ndarray | None = None
    annotations: dict | None = None

    def __len__(self) -> int:
        return len(self.label)


def stored_order(index: SplitIndex, samples: list[int] | None = None) -> list[list[int]]:
    """Per shard, the data set's items whose samples it stores, in the order they are stored. ``samples[j]`` is
    the sample of item ``j`` (None: item ``j`` is sample ``j``); a shard whose samples the data set leaves out
    (COCO training skips images without annotations) gives a shorter or empty list."""
    item_of = np.arange(len(index)) if samples is None else np.full(len(index), -1)
    if samples is not None:
        item_of[np.asarray(samples, dtype=np.int64)] = np.arange(len(samples))
    stored = np.lexsort((index.offset, index.shard))
    parts = np.split(stored, np.cumsum([record["count"] for record in index.shards])[:-1])
    return [[int(item) for item in item_of[part] if item >= 0] for part in parts]


def write_command(root: str, layout: str = "imagefolder") -> str:
    """The converter's command line that writes ``root`` (for the fixes the errors give)."""
    source = "<folder>" if layout == "imagefolder" else f"<{layout} root> --layout {layout}"
    return f"python -m convnext_pl.data.streaming write --src {source} --out {root}"


def load_split_index(root: str, split: str, layout: str = "imagefolder") -> SplitIndex:
    """Read ``<root>/<split>/index.json`` and ``index.npz``, written in ``layout``.

    Raises:
        UserError: the index is missing (no conversion, or an unfinished one), damaged, of another version or of
            another layout.
    """
    location = join(root, split)
    store = Store(location)
    fix = f"convert the images with `{write_command(root, layout)}`"
    try:
        manifest = json.loads(store.read(INDEX_JSON))
        arrays = np.load(io.BytesIO(store.read(INDEX_ARRAYS)))
        names = ("shard", "offset", "size", "label") + (SEG_COLUMNS if layout == "ade20k" else ())
        columns = {name: arrays[name] for name in names}
    except FileNotFoundError:
        raise UserError(
            f"{join(location, INDEX_JSON)} is missing (no conversion, or an unfinished one); {fix} "
            "(add --resume to finish an interrupted one)"
        ) from None
    except (ValueError, KeyError, OSError) as err:  # json/npz damaged or truncated
        raise UserError(
            f"the index of {location} is damaged ({type(err).__name__}); {fix} --overwrite"
        ) from None
    if manifest.get("format") not in READABLE_FORMATS:
        raise UserError(
            f"{join(location, INDEX_JSON)} is of format {manifest.get('format')}, not {FORMAT_VERSION}; {fix} --overwrite"
        )
    written = manifest.get("layout", "imagefolder")
    if written != layout:
        raise UserError(
            f"{location} holds {written} shards, not {layout}; read it with convnext_pl.data.streaming."
            f"{READER_OF_LAYOUT.get(written, written)} or {fix} --overwrite"
        )
    lengths = {len(column) for column in columns.values()}
    if lengths != {manifest["count"]}:
        raise UserError(
            f"the index of {location} lists {lengths} samples but {manifest['count']} are recorded; {fix} --overwrite"
        )
    return SplitIndex(location, manifest["classes"], manifest["shards"], **columns, layout=layout,
                      annotations=manifest.get("annotations"))  # fmt: skip


def write_split_index(store: Store, classes: list[str], shards: list[dict], rows: list[list[int]],
                      layout: str = "imagefolder", annotations: dict | None = None) -> None:  # fmt: skip
    """Write ``index.npz`` then ``index.json`` (the marker of a finished split). ``rows``: (shard, offset, size,
    label) per sample, in sample order, followed by (seg_offset, seg_size) for ``ade20k``."""
    width = 6 if layout == "ade20k" else 4
    table = np.asarray(rows, dtype=np.int64).reshape(-1, width)
    # label stays int64: COCO image ids are not bounded by 2**31.
    columns = dict(shard=table[:, 0].astype(np.int32), offset=table[:, 1], size=table[:, 2].astype(np.int32),
                   label=table[:, 3])  # fmt: skip
    if layout == "ade20k":
        columns.update(seg_offset=table[:, 4], seg_size=table[:, 5].astype(np.int32))
    buffer = io.BytesIO()
    np.savez(buffer, **columns)
    store.write(INDEX_ARRAYS, buffer.getvalue())
    manifest = {"format": FORMAT_VERSION, "layout": layout, "count": len(table), "classes": classes,
                "shards": shards} | ({"annotations": annotations} if annotations else {})  # fmt: skip
    store.write(INDEX_JSON, json.dumps(manifest).encode())
