"""Converting a source tree (``layouts.py``: an ImageFolder, COCO or ADE20K) into shards (``shards.py``): planned by
file size, written by parallel workers, each shard complete before it is visible, and an interrupted conversion
continued with its finished shards kept."""

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from convnext_pl.data.streaming.layouts import Sample, SourceSplit, source_splits
from convnext_pl.data.streaming.shards import sha256_of_file, shard_name, sidecar_name, write_split_index
from convnext_pl.data.streaming.store import forget_stores, is_s3, join, open_store
from convnext_pl.errors import UserError

TAR_MEMBER_OVERHEAD = 1536  # two 512-byte headers (label and image) and padding, per sample
RESIZED_JPEG_QUALITY = 95  # a second lossy generation only when --resize-longer asks for one
PARTIAL_PREFIX = ".partial-"  # shards being written; what a killed conversion leaves, removed by --resume
LABEL_MEMBER = {"imagefolder": ".cls", "coco": ".id"}  # the label as ASCII beside the image; ade20k: its PNG
SEG_MEMBER = ".seg.png"


@dataclass
class ShardJob:
    """One shard to write: its split folder, number, samples, options and source layout."""

    out: str
    number: int
    samples: list[Sample]
    resize_longer: int | None
    layout: str = "imagefolder"

    @property
    def plan_hash(self) -> str:  # the same source files and options give the same shard
        planned = [(s.index, os.path.basename(s.image), s.label) for s in self.samples]
        if self.layout != "imagefolder":  # imagefolder's text is the one written before the dense layouts
            seg = [s.seg and os.path.basename(s.seg) for s in self.samples]
            planned = [self.layout, [p + (name,) for p, name in zip(planned, seg, strict=True)]]
        text = json.dumps([self.resize_longer, planned])
        return hashlib.sha256(text.encode()).hexdigest()


def plan_shards(out: str, split: SourceSplit, shard_bytes: int, resize_longer: int | None, layout: str,
                seed: int = 0) -> list[ShardJob]:  # fmt: skip
    """The split's shard jobs. The samples are laid out in a fixed random order (``seed``) and cut where a shard
    would pass ``shard_bytes`` (the original files' sizes; resized images only make shards smaller): an ImageFolder
    lists one class after another, and shards of one class each would give batches of a few classes under the
    shard order (``sampler.py``). Sample ``i`` stays item ``i`` of the folder data set."""
    jobs, current, filled = [], [], 0
    for index in np.random.default_rng(seed).permutation(len(split.samples)).tolist():
        sample = split.samples[index]
        size = os.path.getsize(sample.image) + TAR_MEMBER_OVERHEAD
        size += os.path.getsize(sample.seg) if sample.seg else 0
        if current and filled + size > shard_bytes:
            jobs.append(ShardJob(out, len(jobs), current, resize_longer, layout))
            current, filled = [], 0
        current.append(sample)
        filled += size
    if current:
        jobs.append(ShardJob(out, len(jobs), current, resize_longer, layout))
    return jobs


def encoded_bytes(path: str, resize_longer: int | None) -> bytes:
    """The file's bytes as they are, or re-encoded (JPEG, quality 95) with its longer side cut to
    ``resize_longer`` when it is longer."""
    data = Path(path).read_bytes()
    if resize_longer is None:
        return data
    image = Image.open(io.BytesIO(data))
    if max(image.size) <= resize_longer:
        return data
    scale = resize_longer / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    buffer = io.BytesIO()
    image.convert("RGB").resize(size, Image.BICUBIC).save(buffer, "JPEG", quality=RESIZED_JPEG_QUALITY)
    return buffer.getvalue()


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: the same input gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def _members(job: ShardJob, sample: Sample) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The sample's tar members ``(name, bytes)`` (its label as ASCII and its image, or its image and its label
    map for ade20k) and the names of those whose byte ranges the index keeps (the image, then the label map)."""
    key = f"{sample.index:09d}"
    suffix = ".jpg" if job.resize_longer else Path(sample.image).suffix.lower() or ".jpg"
    image = (f"{key}{suffix}", encoded_bytes(sample.image, job.resize_longer))
    if sample.seg is not None:
        seg = (key + SEG_MEMBER, Path(sample.seg).read_bytes())
        return [image, seg], [image[0], seg[0]]
    return [(key + LABEL_MEMBER[job.layout], str(sample.label).encode()), image], [image[0]]


def write_shard(job: ShardJob) -> dict:
    """Write one shard and its sidecar; returns the sidecar. The tar is written under a temporary name and
    renamed (or uploaded) only when complete, then the sidecar, so a shard with a sidecar is whole."""
    store, name = open_store(job.out), shard_name(job.number)
    local_tmp = None if is_s3(job.out) else job.out  # same file system as the output: the rename is atomic
    with tempfile.TemporaryDirectory(prefix=PARTIAL_PREFIX, dir=local_tmp) as tmp:
        path = Path(tmp) / name
        indexed = []  # per sample, the names of the members whose byte ranges the index keeps
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in job.samples:
                members, kept = _members(job, sample)
                for member, data in members:
                    _member(tar, member, data)
                indexed.append(kept)
        with tarfile.open(path) as tar:  # where each member's bytes start, read back from the headers
            ranges = {m.name: [m.offset_data, m.size] for m in tar.getmembers()}
        digest, size = sha256_of_file(path), path.stat().st_size
        if is_s3(job.out):
            store.upload(path, name, metadata={"sha256": digest})
        else:
            os.replace(path, join(job.out, name))
    # Per sample [offset, size, label] of its image, then [offset, size] of its label map (ade20k).
    samples = [ranges[image] + [s.label] + [v for name in rest for v in ranges[name]]
               for (image, *rest), s in zip(indexed, job.samples, strict=True)]  # fmt: skip
    sidecar = {"name": name, "bytes": size, "sha256": digest, "plan": job.plan_hash, "samples": samples}
    store.write(sidecar_name(name), json.dumps(sidecar).encode())
    return sidecar


def finished_shard(job: ShardJob) -> dict | None:
    """The sidecar of a shard a previous run completed, when the tar's size and hash match it (re-hashed locally;
    on S3 the hash recorded with the object) and it was planned from the same files; else None."""
    store, name = open_store(job.out), shard_name(job.number)
    try:
        sidecar = json.loads(store.read(sidecar_name(name)))
    except (FileNotFoundError, ValueError):
        return None
    found = store.size_and_metadata(name)
    if found is None or found[0] != sidecar["bytes"] or sidecar.get("plan") != job.plan_hash:
        return None
    recorded = found[1].get("sha256") if is_s3(job.out) else sha256_of_file(join(job.out, name))
    return sidecar if recorded == sidecar["sha256"] else None


def refuse_non_empty(out: str, overwrite: bool, resume: bool) -> None:
    store = open_store(out)
    if overwrite:
        store.delete_all()
    elif store.names() and not resume:
        raise UserError(f"--out {out} is not empty; add --overwrite to replace it or --resume to continue it")


def copy_annotations(split: SourceSplit, split_out: str) -> dict | None:
    """Put the split's annotation file (``coco``) beside its shards, byte for byte; returns its record."""
    if split.annotations is None:
        return None
    digest = sha256_of_file(split.annotations)
    open_store(split_out).upload(split.annotations, split.annotations.name, metadata={"sha256": digest})
    return {"name": split.annotations.name, "bytes": split.annotations.stat().st_size, "sha256": digest}


def convert(src: str, out: str, splits: list[str] | None = None, shard_size_mb: float = 64, workers: int = 4,
            resize_longer: int | None = None, overwrite: bool = False, resume: bool = False,
            progress: bool = True, layout: str = "imagefolder") -> dict[str, int]:  # fmt: skip
    """Convert ``src`` (in ``layout``: ImageFolder splits or a flat tree of class folders, COCO or ADE20K) into
    shards under ``out``; ``splits``: the split folders to convert (None: the layout's own).

    Returns:
        ``split -> number of images`` written.
    """
    if resize_longer is not None and layout != "imagefolder":
        raise UserError(
            f"--resize-longer would re-encode the images but not their {layout} annotations, which are in the "
            "original pixels; leave it out"
        )
    sources = source_splits(src, layout, splits)
    forget_stores()  # this conversion's endpoint and credentials, not an earlier one's
    refuse_non_empty(out, overwrite, resume)
    if not is_s3(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in sources:
        split_out = join(out, split.name)
        if not is_s3(split_out):
            Path(split_out).mkdir(parents=True, exist_ok=True)
        jobs = plan_shards(split_out, split, int(shard_size_mb * 2**20), resize_longer, layout)
        if resume and not is_s3(split_out):
            for leftover in Path(split_out).glob(PARTIAL_PREFIX + "*"):
                shutil.rmtree(leftover, ignore_errors=True)
        done = {job.number: s for job in jobs if resume and (s := finished_shard(job)) is not None}
        todo = [job for job in jobs if job.number not in done]
        bar = tqdm(total=len(split.samples), unit="img", desc=split.name, disable=not progress)
        bar.update(sum(len(jobs[n].samples) for n in done))
        # Threads, not processes: the work is file I/O, hashing and (with resizing) Pillow, which all release the
        # GIL; and forking a process that runs threads (torch's, boto3's) can deadlock the children.
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for job, sidecar in zip(todo, pool.map(write_shard, todo), strict=True):
                done[job.number] = sidecar
                bar.update(len(job.samples))
        bar.close()
        rows = [None] * len(split.samples)  # in the folder data set's order
        for job in jobs:
            for sample, ranges in zip(job.samples, done[job.number]["samples"], strict=True):
                rows[sample.index] = [job.number, *ranges]
        shards = [{key: done[job.number][key] for key in ("name", "bytes", "sha256")} | {"count": len(job.samples)}
                  for job in jobs]  # fmt: skip
        annotations = copy_annotations(split, split_out)
        write_split_index(open_store(split_out), split.classes, shards, rows, layout, annotations)
        counts[split.name] = len(rows)
    return counts
