"""Converting an ImageFolder tree into shards (``shards.py``): planned by file size, written by parallel workers,
each shard complete before it is visible, and an interrupted conversion continued with its finished shards kept."""

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

from convnext_pl.data.classification.folder import VisibleImageFolder, list_class_folders
from convnext_pl.data.streaming.shards import sha256_of_file, shard_name, sidecar_name, write_split_index
from convnext_pl.data.streaming.store import forget_stores, is_s3, join, open_store
from convnext_pl.errors import UserError

TAR_MEMBER_OVERHEAD = 1536  # two 512-byte headers (label and image) and padding, per sample
RESIZED_JPEG_QUALITY = 95  # a second lossy generation only when --resize-longer asks for one
PARTIAL_PREFIX = ".partial-"  # shards being written; what a killed conversion leaves, removed by --resume


@dataclass
class ShardJob:
    """One shard to write: its split folder, number and ``(global index, path, label)`` samples."""

    out: str
    number: int
    samples: list[tuple[int, str, int]]
    resize_longer: int | None

    @property
    def plan_hash(self) -> str:  # the same source files and options give the same shard
        text = json.dumps([self.resize_longer, [(i, os.path.basename(p), y) for i, p, y in self.samples]])
        return hashlib.sha256(text.encode()).hexdigest()


def list_splits(src: str, splits: list[str]) -> dict[str, str]:
    """``split -> folder``: ``src/<split>`` for each split present, or ``{"train": src}`` for a flat tree of class
    folders (ImageNet-22K's ``<wnid>/*.JPEG``)."""
    if not Path(src).is_dir():
        raise UserError(
            f"--src {src} does not exist; give the folder holding train/ and val/ (or class folders)"
        )
    present = {split: str(Path(src) / split) for split in splits if (Path(src) / split).is_dir()}
    if present:
        return present
    if list_class_folders(src):
        return {"train": src}
    raise UserError(
        f"{src} has neither {'/'.join(splits)} folders nor class folders; give an ImageFolder root"
    )


def plan_shards(out: str, folder: str, shard_bytes: int, resize_longer: int | None, seed: int = 0):
    """The split's classes and shard jobs. The images are laid out in a fixed random order (``seed``) and cut
    where a shard would pass ``shard_bytes`` (the original files' sizes; resized images only make shards
    smaller): an ImageFolder lists one class after another, and shards of one class each would give batches of a
    few classes under the shard order (``sampler.py``). Sample ``i`` stays image ``i`` of the ImageFolder."""
    dataset = VisibleImageFolder(folder, allow_empty=True)
    jobs, current, filled = [], [], 0
    for index in np.random.default_rng(seed).permutation(len(dataset.samples)).tolist():
        path, label = dataset.samples[index]
        size = os.path.getsize(path) + TAR_MEMBER_OVERHEAD
        if current and filled + size > shard_bytes:
            jobs.append(ShardJob(out, len(jobs), current, resize_longer))
            current, filled = [], 0
        current.append((index, path, label))
        filled += size
    if current:
        jobs.append(ShardJob(out, len(jobs), current, resize_longer))
    return dataset.classes, jobs


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


def write_shard(job: ShardJob) -> dict:
    """Write one shard and its sidecar; returns the sidecar. The tar is written under a temporary name and
    renamed (or uploaded) only when complete, then the sidecar, so a shard with a sidecar is whole."""
    store, name = open_store(job.out), shard_name(job.number)
    local_tmp = None if is_s3(job.out) else job.out  # same file system as the output: the rename is atomic
    with tempfile.TemporaryDirectory(prefix=PARTIAL_PREFIX, dir=local_tmp) as tmp:
        path = Path(tmp) / name
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index, source, label in job.samples:
                suffix = ".jpg" if job.resize_longer else Path(source).suffix.lower() or ".jpg"
                key = f"{index:09d}"
                _member(tar, f"{key}.cls", str(label).encode())
                _member(tar, f"{key}{suffix}", encoded_bytes(source, job.resize_longer))
        with tarfile.open(path) as tar:  # where each image's bytes start, read back from the headers
            images = [m for m in tar.getmembers() if not m.name.endswith(".cls")]
        digest, size = sha256_of_file(path), path.stat().st_size
        if is_s3(job.out):
            store.upload(path, name, metadata={"sha256": digest})
        else:
            os.replace(path, join(job.out, name))
    sidecar = {"name": name, "bytes": size, "sha256": digest, "plan": job.plan_hash,
               "samples": [[m.offset_data, m.size, label] for m, (_, _, label) in zip(images, job.samples, strict=True)]}  # fmt: skip
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


def convert(src: str, out: str, splits: list[str], shard_size_mb: float = 64, workers: int = 4,
            resize_longer: int | None = None, overwrite: bool = False, resume: bool = False,
            progress: bool = True) -> dict[str, int]:  # fmt: skip
    """Convert ``src`` (ImageFolder splits or a flat tree of class folders) into shards under ``out``.

    Returns:
        ``split -> number of images`` written.
    """
    folders = list_splits(src, splits)
    forget_stores()  # this conversion's endpoint and credentials, not an earlier one's
    refuse_non_empty(out, overwrite, resume)
    if not is_s3(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, folder in folders.items():
        split_out = join(out, split)
        if not is_s3(split_out):
            Path(split_out).mkdir(parents=True, exist_ok=True)
        classes, jobs = plan_shards(split_out, folder, int(shard_size_mb * 2**20), resize_longer)
        if not jobs:
            raise UserError(f"{folder} has no images; put each class's images in {folder}/<class>/")
        if resume and not is_s3(split_out):
            for leftover in Path(split_out).glob(PARTIAL_PREFIX + "*"):
                shutil.rmtree(leftover, ignore_errors=True)
        done = {job.number: s for job in jobs if resume and (s := finished_shard(job)) is not None}
        todo = [job for job in jobs if job.number not in done]
        bar = tqdm(total=sum(len(j.samples) for j in jobs), unit="img", desc=split, disable=not progress)
        bar.update(sum(len(jobs[n].samples) for n in done))
        # Threads, not processes: the work is file I/O, hashing and (with resizing) Pillow, which all release the
        # GIL; and forking a process that runs threads (torch's, boto3's) can deadlock the children.
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for job, sidecar in zip(todo, pool.map(write_shard, todo), strict=True):
                done[job.number] = sidecar
                bar.update(len(job.samples))
        bar.close()
        rows = [None] * sum(len(job.samples) for job in jobs)  # in ImageFolder order
        for job in jobs:
            for (index, _, _), (offset, size, label) in zip(
                job.samples, done[job.number]["samples"], strict=True
            ):
                rows[index] = [job.number, offset, size, label]
        shards = [{key: done[job.number][key] for key in ("name", "bytes", "sha256")} | {"count": len(job.samples)}
                  for job in jobs]  # fmt: skip
        write_split_index(open_store(split_out), classes, shards, rows)
        counts[split] = len(rows)
    return counts
