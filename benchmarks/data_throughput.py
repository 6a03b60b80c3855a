"""Images per second of each DataModule's training loader, by DataLoader worker count, and the CPU time of each
stage of the ImageNet training transform on the recipe's path and the fast path, side by side.

    python benchmarks/data_throughput.py --workers 0 1 2 --json runs/data_throughput.json
    python benchmarks/data_throughput.py --stages --only jpeg-folder-224 jpeg-folder-224-fast --workers 0 1 2

CIFAR and the JPEG image folder are written into a temporary folder in their genuine formats first
(``convnext_pl.data.classification.synthetic_files``), so nothing is downloaded. The image folder holds ImageNet-like JPEGs
(500x375, quality 90) read with the full ImageNet training transform at 224: RandomResizedCrop, flip,
RandAugment rand-m9-mstd0.5-inc1, normalise, random erasing 0.25. Each measurement iterates the training
loader: ``--warmup`` batches untimed (worker start-up included there), then ``--batches`` timed batches.
``jpeg-folder-224-fast`` is the same folder with ``fast_pipeline: true``; the device half of its transform
(RandAugment, normalise + random erasing, done on the GPU in a training run) is outside the timed loop, and timed on
this CPU, for scale, by ``--stages``. ``--stages`` adds the per-stage table (``data_stages.py``) and the CPU cores per
GPU a given training speed needs at each path's per-core rate.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import data_stages
import torch
import torchvision.datasets.cifar as tv_cifar

from convnext_pl.data import (
    CIFARDataModule,
    ClassificationDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
)
from convnext_pl.data.augment.transforms import RECIPE_AUTO_AUGMENT
from convnext_pl.data.classification.synthetic_files import write_cifar, write_image_folder

# Training speeds to convert into CPU cores per GPU. An estimate, not measured here: ConvNeXt-T at 224 in bf16 on
# one H100 trains at roughly 3000-4000 images/s (issue 15; benchmarks/gpu_suite.sh measures it where a GPU is).
GPU_IMAGES_PER_S = (3000, 4000)

IMAGENET_LIKE_SIZE = (500, 375)  # the most common ImageNet photo size (width, height)
FOLDER_CLASSES = 10


def _modules(data_dir: Path) -> dict[str, Callable[[int, int], ClassificationDataModule]]:
    """Benchmark name -> factory(batch_size, num_workers), each configured as the repo's data configs are."""
    recipe = {"auto_augment": RECIPE_AUTO_AUGMENT, "re_prob": 0.25}
    return {
        "digits-32": lambda bs, nw: DigitsDataModule(image_size=32, batch_size=bs, num_workers=nw),
        "synthetic-224": lambda bs, nw: SyntheticDataModule(
            image_size=224, train_size=100_000, batch_size=bs, num_workers=nw
        ),
        "cifar10-32": lambda bs, nw: CIFARDataModule(
            root=str(data_dir), image_size=32, batch_size=bs, num_workers=nw, **recipe
        ),
        "cifar10-224": lambda bs, nw: CIFARDataModule(
            root=str(data_dir), image_size=224, batch_size=bs, num_workers=nw, **recipe
        ),
        "jpeg-folder-224": lambda bs, nw: ImageFolderDataModule(
            root=str(data_dir / "folder"), num_classes=FOLDER_CLASSES, batch_size=bs, num_workers=nw, **recipe
        ),
        "jpeg-folder-224-fast": lambda bs, nw: ImageFolderDataModule(
            root=str(data_dir / "folder"),
            num_classes=FOLDER_CLASSES,
            batch_size=bs,
            num_workers=nw,
            fast_pipeline=True,
            **recipe,
        ),  # fmt: skip
    }


def write_data(data_dir: Path, images_needed: int, cifar: bool = True) -> None:
    """Write CIFAR-10 pickles (unless ``cifar`` is False) and an ImageNet-like JPEG folder with at least
    ``images_needed`` training images."""
    if cifar:
        write_cifar(data_dir, "cifar10", n_train=max(images_needed, 1000), n_test=100)
    per_class = -(-images_needed // FOLDER_CLASSES)  # ceil division
    write_image_folder(
        data_dir / "folder", FOLDER_CLASSES, per_class, size=IMAGENET_LIKE_SIZE, splits=("train",)
    )
    # The folder module checks that val has the same classes; one image each is enough.
    write_image_folder(data_dir / "folder", FOLDER_CLASSES, 1, size=IMAGENET_LIKE_SIZE, splits=("val",))


def measure(module: ClassificationDataModule, warmup: int, batches: int) -> float:
    """Images per second the training loader delivers over ``batches`` batches, after ``warmup`` untimed ones.

    The fast path's device half (RandAugment, normalise, erase) is not in the timed loop: a training run does it on
    the GPU, and here it would take this process's CPU from the workers. The last batch is finished afterwards,
    untimed, by the module's hooks, so the measurement covers a batch the model can take.
    """
    module.setup("fit")
    iterator = iter(module.train_dataloader())
    for _ in range(warmup):
        next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(iterator)
        images += len(batch[1])
    elapsed = time.perf_counter() - start
    finished = module.on_after_batch_transfer(module.on_before_batch_transfer(batch, 0), 0)
    if len(finished) != 2 or finished[0].dtype != torch.float32:
        raise RuntimeError(f"{type(module).__name__} did not finish its training batch")
    del iterator  # shut the workers down before the next measurement
    return images / elapsed


def print_table(results: list[dict], workers: list[int]) -> None:
    """One row per data set, one images/s column per worker count."""
    rates = {(r["data"], r["workers"]): r["images_per_s"] for r in results}
    names = list(dict.fromkeys(r["data"] for r in results))
    header = f"{'images/s':<18}" + "".join(f"{f'{w} workers':>12}" for w in workers)
    print("\n" + header + "\n" + "-" * len(header))
    for name in names:
        print(f"{name:<18}" + "".join(f"{rates[name, w]:>12.1f}" for w in workers))


def print_cores_per_gpu(stages: dict, gpu_rates: list[float]) -> None:
    """CPU cores one GPU needs to be fed at each rate, at each path's measured per-core worker rate."""
    per_core = {"recipe path": 1e3 / stages["old_total"], "fast path": 1e3 / stages["new_total"]}
    print(f"\n{'cores per GPU':<26}" + "".join(f"{f'{rate:.0f} img/s':>14}" for rate in gpu_rates))
    for name, rate in per_core.items():
        print(f"{name:<26}" + "".join(f"{gpu / rate:>14.1f}" for gpu in gpu_rates))
    print("(the training speeds are an estimate for ConvNeXt-T bf16 on one H100, not measured here)")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per measurement")
    parser.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    parser.add_argument("--only", nargs="+", help="benchmark names to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads here (DataLoader workers always use 1)"
    )
    parser.add_argument(
        "--stages", action="store_true", help="also time each transform stage, old and new path"
    )
    parser.add_argument("--stage-images", type=int, default=64, help="images per stage round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating old/new stage rounds")
    parser.add_argument("--gpu-images-per-s", type=float, nargs="+", default=GPU_IMAGES_PER_S,
                        help="training speeds to convert into cores per GPU (an estimate unless measured)")  # fmt: skip
    args = parser.parse_args(argv)
    # With 0 workers the transforms run in this process; its default of one thread per core contends with
    # the loader's own work (and other jobs) and makes the 0-worker numbers incomparable with the rest.
    torch.set_num_threads(args.threads)

    # Generated CIFAR files differ from the published ones; let torchvision read them (tests do the same).
    tv_cifar.CIFAR10._check_integrity = lambda self: True
    tv_cifar.check_integrity = lambda fpath, md5=None: True

    results, stages = [], None
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        names = args.only or list(_modules(data_dir))
        needed = max(args.batch_size * (args.warmup + args.batches), args.stage_images)
        write_data(data_dir, needed, cifar=any(name.startswith("cifar") for name in names))
        if args.stages:
            paths = data_stages.stage_paths(data_dir / "folder", args.stage_images)
            stages = data_stages.measure_stages(paths, 224, args.rounds)
            stages["pixel_differences"] = data_stages.pixel_differences(paths, 224)
            stages["rand_augment_op_differences"] = data_stages.rand_augment_op_differences(paths, 224)
            data_stages.print_stage_table(stages)
            print_cores_per_gpu(stages, args.gpu_images_per_s)
            for name, mad in stages["pixel_differences"].items():
                print(f"mean abs difference, {name}: {mad:.5f} of 255 ({len(paths)} images)")
            ops = ", ".join(f"{op} {mad:.5f}" for op, mad in stages["rand_augment_op_differences"].items())
            print(f"mean abs difference per RandAugment op at magnitude 9, device vs timm's PIL: {ops}")
            print(flush=True)
        factories = _modules(data_dir)
        for name in names:
            for workers in args.workers:
                rate = measure(factories[name](args.batch_size, workers), args.warmup, args.batches)
                results.append({"data": name, "workers": workers, "images_per_s": round(rate, 1)})
                print(f"{name:<18} workers {workers:>2}  {rate:>9.1f} images/s", flush=True)

    print_table(results, args.workers)
    environment = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch_size": args.batch_size,
        "timed_batches": args.batches,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"environment": environment, "results": results, "stages": stages}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
