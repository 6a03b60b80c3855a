"""CPU time per image of each stage of the ImageNet training transform, the recipe's path and the fast path.

Used by ``data_throughput.py --stages``. Each round runs every stage of one path over the same images, with the
generators seeded alike for both paths (so both draw the same crops, flips and RandAugment ops), and times each
stage with ``time.thread_time``: CPU seconds of this thread only, so other jobs on a shared machine slow a stage
less than wall time would (they still share caches and cores). Rounds alternate old and new; the table shows the
median of the rounds per stage, and the ratio is the median of the rounds' ratios. What the fast path leaves to the
device (RandAugment applied to the batch, normalise + erase, and Mixup/CutMix on both paths) is timed on this CPU
too, on the last round's batch, for scale, and on the GPU where there is one (``gpu_suite.py`` shows it).
"""

import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup
from timm.data.auto_augment import NAME_TO_OP
from torch.utils.data import default_collate

from convnext_pl.data.augment.batch_augment import DeviceAugment
from convnext_pl.data.augment.fast_augment import DecodeRandomResizedCrop, mean_abs_difference, read_encoded
from convnext_pl.data.augment.rand_augment import (
    KERNEL_OF_TIMM_OP,
    KERNELS,
    AugmentedImage,
    device_rand_augment,
)
from convnext_pl.data.augment.transforms import RECIPE_RE_PROB, fast_train_transform, train_transform
from convnext_pl.data.images import load_rgb

Stage = tuple[str, Callable[[list], list]]


def _each(fn: Callable) -> Callable[[list], list]:
    return lambda items: [fn(item) for item in items]


def recipe_stages(image_size: int) -> list[Stage]:
    """The recipe's path: every stage in the DataLoader worker."""
    crop, flip, rand_augment, to_tensor, normalize, erase = train_transform(image_size).transforms
    return [
        ("read + decode", _each(load_rgb)),
        ("random resized crop", _each(crop)),
        ("flip", _each(flip)),
        ("RandAugment", _each(rand_augment)),
        ("to tensor + normalise", _each(lambda image: normalize(to_tensor(image)))),
        ("random erasing", _each(erase)),
    ]


def fast_stages(image_size: int) -> list[Stage]:
    """The fast path's worker stages (the device stages are timed separately)."""
    crop, flip, rand_augment = fast_train_transform(image_size).transforms
    return [
        ("read + decode", _each(lambda path: DecodeRandomResizedCrop.decode(read_encoded(path)))),
        ("random resized crop", _each(crop.crop)),  # -> a uint8 tensor, where the rest of the path stays
        ("flip", _each(flip)),
        ("RandAugment", _each(rand_augment)),  # drawn only; applied on the device
        ("to tensor + normalise", lambda items: items),  # uint8 already; normalising is on the device
        ("random erasing", lambda items: items),  # on the device
    ]


def _run(stages: list[Stage], paths: list[str], seed: int) -> tuple[dict[str, float], list]:
    """Milliseconds of CPU per image of each stage, over ``paths``, with the generators seeded by ``seed``, and
    the last stage's outputs."""
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    items, times = paths, {}
    for name, stage in stages:
        start = time.thread_time()
        items = stage(items)
        times[name] = (time.thread_time() - start) * 1e3 / len(paths)
    return times, items


def _timed(step: Callable, device: torch.device) -> tuple[object, float]:
    """``step()`` and its seconds: CPU time of this thread on the CPU, wall time between syncs on a GPU."""
    if device.type != "cuda":
        start = time.thread_time()
        return step(), time.thread_time() - start
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = step()
    torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def device_stages(
    samples: list[AugmentedImage], image_size: int, device: str = "cpu", seed: int = 0
) -> dict[str, float]:
    """ms per image, on ``device``, of what the fast path leaves to the device (on the fast path's own images and
    draws), and of Mixup/CutMix (both paths); each step once untimed first (a GPU loads its kernels then)."""
    device = torch.device(device)
    batch = default_collate(samples)  # as the DataLoader collates them
    images, ops, args = (field.to(device) for field in batch)
    targets = (torch.arange(len(samples)) % 10).to(device)
    rand_augment = device_rand_augment(fast_train_transform(image_size))
    finish = DeviceAugment(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, RECIPE_RE_PROB)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    finished = finish(images, seed)
    steps = {
        "RandAugment (batch)": lambda: rand_augment(images, ops, args),
        "normalise + erase (batch)": lambda: finish(images, seed),
        "Mixup/CutMix": lambda: mixup(finished, targets),  # mixes in place: the cost is the same every time
    }
    times = {}
    for name, step in steps.items():
        step()
        times[name] = _timed(step, device)[1] * 1e3 / len(samples)
    return times


def measure_stages(paths: list[str], image_size: int, rounds: int) -> dict:
    """Per-stage medians of both paths, their totals, and the median ratio of the totals."""
    old, new = recipe_stages(image_size), fast_stages(image_size)
    old_rounds, new_rounds = [], []
    for r in range(rounds):
        old_rounds.append(_run(old, paths, seed=r)[0])
        times, samples = _run(new, paths, seed=r)
        new_rounds.append(times)
    median = lambda rs: {name: statistics.median(r[name] for r in rs) for name in rs[0]}  # noqa: E731
    ratios = [sum(o.values()) / sum(n.values()) for o, n in zip(old_rounds, new_rounds, strict=True)]
    return {
        "old": median(old_rounds),
        "new": median(new_rounds),
        "old_total": statistics.median(sum(r.values()) for r in old_rounds),
        "new_total": statistics.median(sum(r.values()) for r in new_rounds),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "device": device_stages(samples, image_size),
        "device_gpu": device_stages(samples, image_size, "cuda") if torch.cuda.is_available() else None,
    }


def pixel_differences(paths: list[str], image_size: int) -> dict[str, float]:
    """Mean absolute differences (0..255 levels) of each changed piece against the recipe's, on ``paths``."""
    crop = DecodeRandomResizedCrop(image_size)
    pil_crop = train_transform(image_size).transforms[0]
    decoder, resize = [], []
    for i, path in enumerate(paths):
        fast_decoded = crop.decode(read_encoded(path))
        decoder.append(mean_abs_difference(load_rgb(path), fast_decoded))
        pil_image = load_rgb(path)
        random.seed(i)
        want = pil_crop(pil_image)
        random.seed(i)  # the same crop box, resized by each kernel from the same decoded pixels
        got = crop.crop(T.functional.pil_to_tensor(pil_image))
        resize.append(mean_abs_difference(want, got))
    return {"decoder (torchvision.io vs PIL)": float(np.mean(decoder)),
            "crop resize (torchvision uint8 vs PIL bicubic)": float(np.mean(resize)),
            "RandAugment (device kernels vs timm's PIL ops)": rand_augment_difference(paths, image_size)}  # fmt: skip


def _recipe_crops(paths: list[str], image_size: int) -> list:
    """The recipe's crop of each image (PIL), seeded by its position."""
    pil_crop = train_transform(image_size).transforms[0]
    crops = []
    for i, path in enumerate(paths):
        random.seed(i)
        crops.append(pil_crop(load_rgb(path)))
    return crops


def rand_augment_difference(paths: list[str], image_size: int) -> float:
    """Whole RandAugment (two layers, the recipe's draws): timm's on the PIL crop vs the fast path's draws of the
    same seed applied by the device kernels."""
    timm_rand_augment = train_transform(image_size).transforms[2]  # the recipe's, posterize patched
    draws = fast_train_transform(image_size).transforms[2]
    device = draws.device_half()
    differences = []
    for i, image in enumerate(_recipe_crops(paths, image_size)):
        random.seed(i), np.random.seed(i)
        want = timm_rand_augment(image)
        random.seed(i), np.random.seed(i)
        drawn = draws(T.functional.pil_to_tensor(image))
        got = device(drawn.image[None], drawn.ops[None], drawn.args[None])[0]
        differences.append(mean_abs_difference(want, got))
    return float(np.mean(differences))


def rand_augment_op_differences(paths: list[str], image_size: int, magnitude: float = 9.0) -> dict:
    """Each op of the recipe's RandAugment at ``magnitude`` (its random sign seeded per image): timm's PIL op vs
    its device kernel on the recipe's crops, mean abs difference."""
    ops = train_transform(image_size).transforms[2].ops
    device = fast_train_transform(image_size).transforms[2].device_half()
    images = _recipe_crops(paths, image_size)
    batch = torch.stack([T.functional.pil_to_tensor(image) for image in images])
    differences = {}
    for op in ops:
        args = []
        for i, _ in enumerate(images):
            random.seed(i)
            args.append(op.level_fn(magnitude, op.hparams) if op.level_fn is not None else ())
        want = [op.aug_fn(image, *arg, **op.kwargs) for image, arg in zip(images, args, strict=True)]
        # By name: the recipe swaps posterize for its own.
        kernel = KERNELS.index(KERNEL_OF_TIMM_OP[NAME_TO_OP[op.name]])
        values = torch.tensor([[float(arg[0]) if arg else 0.0] for arg in args], dtype=torch.float64)
        got = device(batch, torch.full((len(images), 1), kernel), values)
        differences[op.name] = float(
            np.mean([mean_abs_difference(*pair) for pair in zip(want, got, strict=True)])
        )
    return differences


def print_stage_table(result: dict) -> None:
    old, new = result["old"], result["new"]
    print(f"\n{'ms of CPU per image':<26}{'recipe path':>14}{'fast path':>12}")
    print("-" * 52)
    notes = {"RandAugment": "  (drawn only; applied on the device)", "to tensor + normalise": "  (uint8 already)",
             "random erasing": "  (on the device)"}  # fmt: skip
    for name in old:
        print(f"{name:<26}{old[name]:>14.3f}{new[name]:>12.3f}{notes.get(name, '')}")
    print(f"{'total in the workers':<26}{result['old_total']:>14.3f}{result['new_total']:>12.3f}")
    print(f"{'images/s per core':<26}{1e3 / result['old_total']:>14.1f}{1e3 / result['new_total']:>12.1f}")
    ratios = ", ".join(f"{r:.2f}" for r in result["ratios"])
    print(f"ratio (median of rounds): {result['ratio']:.2f}x   rounds: {ratios}")
    for name, ms in result["device"].items():
        print(f"  on the device, timed on this CPU: {name} {ms:.3f} ms/image")
    for name, ms in (result["device_gpu"] or {}).items():
        print(f"  on the device, timed on the GPU: {name} {ms:.4f} ms/image")


def stage_paths(folder: Path, count: int) -> list[str]:
    """The first ``count`` training JPEGs of the benchmark's image folder."""
    return sorted(str(p) for p in (folder / "train").rglob("*.JPEG"))[:count]
