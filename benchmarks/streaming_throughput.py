"""Folder vs shards on the same JPEGs: images/s per core, time to first batch and files opened per 1,000 images
of the training loader, and the shard write rate, on a local disk and from a local S3-compatible server.

    python benchmarks/streaming_throughput.py --images 960 --json runs/streaming_throughput.json

ImageNet-like JPEGs (500x375, quality 90) are written as an ImageFolder tree, converted into shards
(``python -m convnext_pl.data.streaming write``'s ``convert``) locally and into a bucket of moto's S3 server
started on 127.0.0.1 (needs the ``dev`` extra), and each source is read by its training loader with the ImageNet
recipe on the fast path (``fast_pipeline: true``, configs/data/imagenet.yaml): ImageFolderDataModule and
StreamingImageDataModule, one thread, no worker processes, so one core does all the work and every file open is
counted in this process (an audit hook on ``open``). "S3, cold" starts with an empty cache (the downloads are in
the timing), "S3, warm" reads the same cache again. Time to first batch is from ``setup`` to the first batch.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the S3 server helper of the tests

from convnext_pl.data import ImageFolderDataModule  # noqa: E402
from convnext_pl.data.classification.synthetic_files import write_image_folder  # noqa: E402
from convnext_pl.data.streaming import StreamingImageDataModule  # noqa: E402
from convnext_pl.data.streaming.writer import convert  # noqa: E402

IMAGENET_LIKE_SIZE = (500, 375)
CLASSES = 10
OPENS = [0]


def _count_opens(event: str, args) -> None:
    if event == "open":
        OPENS[0] += 1


def measure(module, batches: int) -> dict:
    """Time to first batch (setup included) and images/s over ``batches`` batches after it."""
    OPENS[0] = 0
    started = time.perf_counter()
    module.setup("fit")
    iterator = iter(module.train_dataloader())
    next(iterator)
    first = time.perf_counter() - started
    opened_before, timed = OPENS[0], time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - timed
    images = batches * module.batch_size
    return {
        "time_to_first_batch_s": round(first, 3),
        "images_per_s_per_core": round(images / seconds, 1),
        "files_opened_per_1000_images": round((OPENS[0] - opened_before) * 1000 / images, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=960, help="training JPEGs (and as many for val)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches after the first")
    parser.add_argument("--rounds", type=int, default=3, help="folder/local-shard passes, in turn")
    parser.add_argument("--shard-size-mb", type=float, default=16, help="shard size (64 MB in use; smaller here so "
                        "the sample has several shards)")  # fmt: skip
    parser.add_argument("--write-workers", type=int, default=2, help="threads writing shards")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 server measurements")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.addaudithook(_count_opens)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_image_folder(tmp / "folder", CLASSES, args.images // CLASSES, size=IMAGENET_LIKE_SIZE)
        source_mb = sum(p.stat().st_size for p in (folder / "train").rglob("*.JPEG")) / 2**20
        options = dict(num_classes=CLASSES, batch_size=args.batch_size, num_workers=0, image_size=224,
                       fast_pipeline=True)  # fmt: skip
        results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "images": args.images,
                   "train_MB": round(source_mb, 1), "write": {}, "read": {}}  # fmt: skip

        def write(out: str, name: str) -> None:
            started = time.perf_counter()
            counts = convert(str(folder), out, ["train", "val"], args.shard_size_mb, args.write_workers,
                             progress=False)  # fmt: skip
            seconds = time.perf_counter() - started
            total = sum(counts.values())
            results["write"][name] = {"images_per_s": round(total / seconds, 1),
                                      "MB_per_s": round(2 * source_mb / seconds, 1), "workers": args.write_workers}  # fmt: skip

        write(str(tmp / "shards"), "local disk")
        # Folder and local shards take turns, and each reports its median round: one pass each is within the
        # machine's noise of the other (decoding is the work), so the order of two single passes would decide.
        local = {"folder (ImageFolderDataModule)": lambda: ImageFolderDataModule(str(folder), **options),
                 "shards, local disk": lambda: StreamingImageDataModule(str(tmp / "shards"), **options)}  # fmt: skip
        rounds = {name: [] for name in local}
        for _ in range(args.rounds):
            for name, module in local.items():
                rounds[name].append(measure(module(), args.batches))
        for name, measured in rounds.items():
            ranked = sorted(measured, key=lambda r: r["images_per_s_per_core"])
            results["read"][name] = ranked[len(measured) // 2]
            results["read"][name]["rounds_images_per_s"] = [r["images_per_s_per_core"] for r in measured]
        if not args.no_s3:
            from helpers.s3 import S3Server

            server = S3Server()
            try:
                server.bucket("bench")
                os.environ.update(server.env)
                write("s3://bench/shards", "local S3 server")
                remote = dict(cache_dir=str(tmp / "cache"), cache_limit_gb=1.0, **options)
                for name in ("shards, local S3 server, cold cache", "shards, local S3 server, warm cache"):
                    results["read"][name] = measure(StreamingImageDataModule("s3://bench/shards", **remote),
                                                    args.batches)  # fmt: skip
            finally:
                server.stop()
    print(f"{results['machine']}; {args.images} train JPEGs of {IMAGENET_LIKE_SIZE[0]}x{IMAGENET_LIKE_SIZE[1]} "
          f"({results['train_MB']} MB), batch {args.batch_size}, fast path, 1 thread, no workers")  # fmt: skip
    print(f"{'source':40s} {'img/s/core':>11s} {'first batch s':>14s} {'opens/1000 img':>15s}")
    for name, r in results["read"].items():
        spread = f"  rounds {r['rounds_images_per_s']}" if "rounds_images_per_s" in r else ""
        print(f"{name:40s} {r['images_per_s_per_core']:11.1f} {r['time_to_first_batch_s']:14.3f} "
              f"{r['files_opened_per_1000_images']:15.1f}{spread}")  # fmt: skip
    for name, r in results["write"].items():
        print(
            f"write shards to {name}: {r['images_per_s']} images/s, {r['MB_per_s']} MB/s ({r['workers']} writer threads)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
