"""CPU time per image of each stage of the ImageNet training transform, the recipe's path and the fast path.

Used by ``data_throughput.py --stages``. Each round runs every stage of one path over the same images, with the
generators seeded alike for both paths (so both draw the same crops, flips and RandAugment ops), and times each
stage with ``time.thread_time``: CPU seconds of this thread only, so other jobs on a shared machine slow a stage
less than wall time would (they still share caches and cores). Rounds alternate old and new; the table shows the
median of the rounds per stage, and the ratio is the median of the rounds' ratios.
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

from convnext_pl.data.batch_augment import NormalizeErase
from convnext_pl.data.fast_augment import DecodeRandomResizedCrop, mean_abs_difference, read_encoded
from convnext_pl.data.images import load_rgb
from convnext_pl.data.transforms import RECIPE_RE_PROB, fast_train_transform, train_transform

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
    crop, flip, rand_augment, to_tensor = fast_train_transform(image_size).transforms
    return [
        ("read + decode", _each(lambda path: DecodeRandomResizedCrop.decode(read_encoded(path)))),
        ("random resized crop", _each(crop.crop)),
        ("flip", _each(flip)),
        ("RandAugment", _each(rand_augment)),
        ("to tensor + normalise", _each(to_tensor)),  # to a uint8 tensor only; normalising is on the device
        ("random erasing", lambda items: items),  # on the device
    ]


def _run(stages: list[Stage], paths: list[str], seed: int) -> dict[str, float]:
    """Milliseconds of CPU per image of each stage, over ``paths``, with the generators seeded by ``seed``."""
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    items, times = paths, {}
    for name, stage in stages:
        start = time.thread_time()
        items = stage(items)
        times[name] = (time.thread_time() - start) * 1e3 / len(paths)
    return times


def device_stages(image_size: int, batch_size: int, seed: int = 0) -> dict[str, float]:
    """ms per image, on this CPU, of what the fast path leaves to the device, and of Mixup/CutMix (both paths)."""
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8)
    targets = torch.arange(batch_size) % 10
    finish = NormalizeErase(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, RECIPE_RE_PROB)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    start = time.thread_time()
    batch = finish(images, seed)
    normalize_erase = time.thread_time() - start
    start = time.thread_time()
    mixup(batch, targets)
    mix = time.thread_time() - start
    return {
        "normalise + erase (batch)": normalize_erase * 1e3 / batch_size,
        "Mixup/CutMix": mix * 1e3 / batch_size,
    }


def measure_stages(paths: list[str], image_size: int, rounds: int) -> dict:
    """Per-stage medians of both paths, their totals, and the median ratio of the totals."""
    old, new = recipe_stages(image_size), fast_stages(image_size)
    old_rounds, new_rounds = [], []
    for r in range(rounds):
        old_rounds.append(_run(old, paths, seed=r))
        new_rounds.append(_run(new, paths, seed=r))
    median = lambda rs: {name: statistics.median(r[name] for r in rs) for name in rs[0]}  # noqa: E731
    ratios = [sum(o.values()) / sum(n.values()) for o, n in zip(old_rounds, new_rounds, strict=True)]
    return {
        "old": median(old_rounds),
        "new": median(new_rounds),
        "old_total": statistics.median(sum(r.values()) for r in old_rounds),
        "new_total": statistics.median(sum(r.values()) for r in new_rounds),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "device": device_stages(image_size, batch_size=64),
    }


def pixel_differences(paths: list[str], image_size: int) -> dict[str, float]:
    """Mean absolute differences (0..255 levels) of each changed piece against the recipe's, on ``paths``."""
    crop = DecodeRandomResizedCrop(image_size)
    pil_crop = train_transform(image_size).transforms[0]
    decoder, resize = [], []
    for i, path in enumerate(paths):
        fast_decoded = crop.decode(read_encoded(path))
        decoder.append(mean_abs_difference(load_rgb(path), fast_decoded.permute(1, 2, 0).numpy()))
        pil_image = load_rgb(path)
        random.seed(i)
        want = pil_crop(pil_image)
        random.seed(i)  # the same crop box, resized by each kernel from the same decoded pixels
        got = crop.crop(T.functional.pil_to_tensor(pil_image))
        resize.append(mean_abs_difference(want, got))
    return {"decoder (torchvision.io vs PIL)": float(np.mean(decoder)),
            "crop resize (torchvision uint8 vs PIL bicubic)": float(np.mean(resize))}  # fmt: skip


def print_stage_table(result: dict) -> None:
    old, new = result["old"], result["new"]
    print(f"\n{'ms of CPU per image':<26}{'recipe path':>14}{'fast path':>12}")
    print("-" * 52)
    for name in old:
        note = "  (on the device)" if name == "random erasing" else ""
        print(f"{name:<26}{old[name]:>14.3f}{new[name]:>12.3f}{note}")
    print(f"{'total in the workers':<26}{result['old_total']:>14.3f}{result['new_total']:>12.3f}")
    print(f"{'images/s per core':<26}{1e3 / result['old_total']:>14.1f}{1e3 / result['new_total']:>12.1f}")
    ratios = ", ".join(f"{r:.2f}" for r in result["ratios"])
    print(f"ratio (median of rounds): {result['ratio']:.2f}x   rounds: {ratios}")
    for name, ms in result["device"].items():
        print(f"  on the device, timed on this CPU: {name} {ms:.3f} ms/image")


def stage_paths(folder: Path, count: int) -> list[str]:
    """The first ``count`` training JPEGs of the benchmark's image folder."""
    return sorted(str(p) for p in (folder / "train").rglob("*.JPEG"))[:count]
