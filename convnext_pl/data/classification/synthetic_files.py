"""Writers of small data sets in the genuine on-disk formats, with learnable content.

Tests and the data benchmark use them instead of downloading; a user can use them to smoke-test a config
on a machine without the real data. Every writer is deterministic for a given ``seed``.
"""

import colorsys
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
CIFAR100_SUPERCLASSES = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2"
).split()
CIFAR10_TRAIN_BATCHES = 5  # data_batch_1 .. data_batch_5


def class_colour_images(
    targets: np.ndarray, num_classes: int, height: int, width: int, seed: int
) -> np.ndarray:
    """uint8 images [N, H, W, 3]: a class-specific hue (evenly spaced on the colour wheel) plus pixel noise."""
    rng = np.random.default_rng(seed)
    palette = np.array([colorsys.hsv_to_rgb(c / num_classes, 0.8, 0.9) for c in range(num_classes)]) * 255
    noise = rng.normal(0.0, 25.0, size=(len(targets), height, width, 3))
    return np.clip(palette[targets][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar(
    root: str | Path, variant: str = "cifar10", n_train: int = 50, n_test: int = 20, seed: int = 0
) -> Path:
    """Write CIFAR in the python-pickle layout torchvision reads, under ``root``.

    CIFAR-10: ``cifar-10-batches-py/`` with ``data_batch_1..5``, ``test_batch`` and ``batches.meta``;
    CIFAR-100: ``cifar-100-python/`` with ``train``, ``test`` and ``meta``. Each batch is a dict whose
    ``data`` is uint8 [N, 3072] (the R, G and B 32x32 planes of each image) with labels, as in the real files.
    The md5 sums differ from the real files', so torchvision's integrity check rejects them.

    Args:
        root: folder to write into (created).
        variant: ``cifar10`` or ``cifar100``.
        n_train: training images in total (spread over the five CIFAR-10 batches).
        n_test: test images.
        seed: seed of labels and pixels.

    Returns:
        The data set's folder (``root/cifar-10-batches-py`` or ``root/cifar-100-python``).
    """
    if variant not in ("cifar10", "cifar100"):
        raise ValueError(f"variant must be cifar10 or cifar100, got {variant!r}")
    num_classes = 10 if variant == "cifar10" else 100
    rng = np.random.default_rng(seed)

    def batch(n: int, name: str, split_seed: int) -> dict:
        targets = np.arange(n) % num_classes
        rng.shuffle(targets)
        # (N, 32, 32, 3) -> (N, 3, 32, 32) -> (N, 3072): channel planes, row-major, as the real files store them.
        data = (
            class_colour_images(targets, num_classes, 32, 32, split_seed).transpose(0, 3, 1, 2).reshape(n, -1)
        )
        names = [f"{name}_{i:05d}.png" for i in range(n)]
        if variant == "cifar10":
            return {"batch_label": name, "labels": targets.tolist(), "data": data, "filenames": names}
        # Real fine->coarse pairs come from WordNet; the placeholder fine // 5 keeps the field well formed.
        coarse = (targets // 5).tolist()
        return {"batch_label": name, "fine_labels": targets.tolist(), "coarse_labels": coarse, "data": data,
                "filenames": names}  # fmt: skip

    folder = Path(root) / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    if variant == "cifar10":
        sizes = np.array_split(np.arange(n_train), CIFAR10_TRAIN_BATCHES)
        for i, part in enumerate(sizes, start=1):
            _pickle(folder / f"data_batch_{i}", batch(len(part), f"training batch {i} of 5", seed + i))
        _pickle(folder / "test_batch", batch(n_test, "testing batch 1 of 1", seed + 100))
        meta = {"num_cases_per_batch": int(len(sizes[0])), "label_names": CIFAR10_CLASSES, "num_vis": 3072}
        _pickle(folder / "batches.meta", meta)
    else:
        _pickle(folder / "train", batch(n_train, "training batch 1 of 1", seed + 1))
        _pickle(folder / "test", batch(n_test, "testing batch 1 of 1", seed + 100))
        _pickle(
            folder / "meta",
            {"fine_label_names": CIFAR100_CLASSES, "coarse_label_names": CIFAR100_SUPERCLASSES},
        )
    return folder


def write_image_folder(
    root: str | Path,
    num_classes: int,
    per_class: int,
    size: int | tuple[int, int] = 48,
    splits: tuple[str, ...] = ("train", "val"),
    class_names: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write JPEGs in the ImageFolder layout ``root/<split>/<class>/<class>_<i>.JPEG``.

    Args:
        root: folder to write into (created).
        num_classes: number of class folders per split.
        per_class: images per class and split.
        size: side of square images, or ``(width, height)``.
        splits: split folders to write.
        class_names: folder names (default ``class_00``, ``class_01``, ...).
        seed: seed of the pixels.

    Returns:
        ``root``.
    """
    width, height = (size, size) if isinstance(size, int) else size
    class_names = class_names or [f"class_{c:02d}" for c in range(num_classes)]
    targets = np.repeat(np.arange(num_classes), per_class)
    for split_index, split in enumerate(splits):
        images = class_colour_images(targets, num_classes, height, width, seed + split_index)
        for i, (image, target) in enumerate(zip(images, targets, strict=True)):
            folder = Path(root) / split / class_names[target]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{class_names[target]}_{i:05d}.JPEG", quality=90)
    return Path(root)


def write_imagenet_meta(
    root: str | Path, wnid_to_classes: dict[str, tuple[str, ...]], val_wnids: list[str]
) -> Path:
    """Write ``meta.bin`` as torchvision's ``parse_devkit_archive`` leaves it after reading the devkit.

    Args:
        root: ImageNet root (created).
        wnid_to_classes: WordNet id -> human-readable names, e.g. ``{"n01440764": ("tench", "Tinca tinca")}``.
        val_wnids: WordNet id of each validation image in file-name order.

    Returns:
        The path of ``meta.bin``.
    """
    path = Path(root) / "meta.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save((wnid_to_classes, val_wnids), path)
    return path


def truncate_file(path: str | Path, n_bytes: int) -> None:
    """Cut ``path`` down to its first ``n_bytes`` bytes, as an interrupted download or copy leaves it."""
    os.truncate(path, n_bytes)


def write_digits_folder(root: str | Path, size: int = 16, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """scikit-learn's bundled digits as an ImageFolder tree of PNGs, ``root/{train,val}/<digit>/<i>.png``, split
    as :class:`~convnext_pl.data.DigitsDataModule` splits them: an offline ImageFolder of real images (the
    streaming demo converts it into shards).

    Args:
        root: folder to write into (created).
        size: side of the images (8x8 upsampled by nearest neighbour: no new information).
        val_fraction: fraction of each digit held out for ``val``.
        seed: seed of the split.

    Returns:
        ``root``.
    """
    from sklearn.datasets import load_digits

    from convnext_pl.data.classification.digits import stratified_split

    digits = load_digits()
    pixels = (digits.images * 255 / 16).round().astype(np.uint8)
    train, val = stratified_split(digits.target, val_fraction, seed)
    for split, indices in (("train", train), ("val", val)):
        for i in indices:
            folder = Path(root) / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[i]).convert("RGB").resize((size, size), Image.NEAREST)
            image.save(folder / f"{i:04d}.png")
    return Path(root)
