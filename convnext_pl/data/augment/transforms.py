"""Image transforms of the ConvNeXt recipe, built with timm as the official ConvNeXt code does.

The official repository's ``datasets.build_transform`` calls ``timm.data.create_transform`` for training and
writes the evaluation resize by hand; both rules are reproduced here with timm's factory so that the RandAugment
and RandomErasing implementations are exactly the ones the paper's numbers were produced with.
"""

from collections.abc import Sequence

import torchvision.transforms as T
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data import auto_augment as timm_auto_augment

from convnext_pl.data.augment.fast_augment import DecodeRandomResizedCrop
from convnext_pl.data.augment.rand_augment import RandAugmentDraws

# Paper Table 5 / official main.py defaults.
RECIPE_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
RECIPE_RE_PROB = 0.25
# Sec. 4 "Evaluation at 224": resize the shorter side to 256, then center-crop 224; 224 / 256 = 0.875.
RECIPE_CROP_PCT = 0.875
# Official build_transform: "warping (no cropping) when evaluated at 384 or larger".
NO_CROP_MIN_SIZE = 384


def posterize(image: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize op, also for 0 bits: an all-black image, as the TF RandAugment it reproduces gives.

    timm's ``PosterizeIncreasing`` maps magnitude 10 to 0 bits; rand-m9-mstd0.5 reaches 10 for ~2% of draws
    (9 + 2 std). Old Pillow returned black for 0 bits; Pillow 13 (installed here) raises ValueError instead,
    which would stop an ImageNet-recipe epoch within its first few dozen batches of 64.
    """
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return image.point(lambda _: 0)
    return ImageOps.posterize(image, bits_to_keep)


def _patch_posterize(transform: T.Compose) -> T.Compose:
    """Route every posterize op of a timm RandAugment/AutoAugment in ``transform`` through :func:`posterize`."""
    for step in transform.transforms:
        ops = list(getattr(step, "ops", []))  # RandAugment
        ops += [op for sub_policy in getattr(step, "policy", []) for op in sub_policy]  # AutoAugment
        for op in ops:
            if op.aug_fn is timm_auto_augment.posterize:
                op.aug_fn = posterize
    return transform


def train_transform(
    image_size: int,
    auto_augment: str | None = RECIPE_AUTO_AUGMENT,
    re_prob: float = RECIPE_RE_PROB,
    re_mode: str = "pixel",
    interpolation: str = "bicubic",
    hflip: float = 0.5,
    color_jitter: float | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> T.Compose:
    """ImageNet-style training transform: RandomResizedCrop, flip, RandAugment, normalise, RandomErasing.

    timm's posterize op is swapped for :func:`posterize`, which survives the 0-bit level Pillow 13 rejects.

    Args:
        image_size: output side length.
        auto_augment: timm RandAugment/AutoAugment string (recipe: ``rand-m9-mstd0.5-inc1``); None disables it.
        re_prob: random erasing probability (recipe 0.25), applied after normalisation.
        re_mode: random erasing fill (``pixel``: per-pixel normal noise, the recipe's choice).
        interpolation: resampling used by the crop and by RandAugment's geometric ops (recipe: bicubic).
        hflip: horizontal flip probability.
        color_jitter: jitter strength; timm ignores it while RandAugment is on, as the official code does.
        scale: area range of RandomResizedCrop.
        mean: per-channel mean for normalisation (0..1 scale).
        std: per-channel std for normalisation.

    Returns:
        A transform mapping a PIL image to a normalised FloatTensor[3, image_size, image_size].
    """
    transform = create_transform(
        image_size,
        is_training=True,
        scale=scale,
        hflip=hflip,
        color_jitter=color_jitter,
        auto_augment=auto_augment,
        interpolation=interpolation,
        re_prob=re_prob,
        re_mode=re_mode,
        mean=tuple(mean),
        std=tuple(std),
    )
    return _patch_posterize(transform)


def fast_train_transform(
    image_size: int,
    auto_augment: str | None = RECIPE_AUTO_AUGMENT,
    interpolation: str = "bicubic",
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.08, 1.0),
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
) -> T.Compose:
    """The worker half of :func:`train_transform` for the fast path: encoded file -> uint8 image + RandAugment draws.

    The same random draws in the same order (timm's crop parameters, the flip, RandAugment's ops and magnitudes),
    with decoding by ``torchvision.io``, the crop resized on the uint8 tensor (:class:`~convnext_pl.data.
    fast_augment.DecodeRandomResizedCrop`), the flip on the tensor, and RandAugment only drawn
    (:class:`~convnext_pl.data.augment.rand_augment.RandAugmentDraws`): applying it, normalisation and random erasing
    follow on the device (:class:`~convnext_pl.data.augment.batch_augment.DeviceAugment`). This is timm's own
    ``use_prefetcher`` transform with those pieces replaced.

    Args:
        image_size: output side length.
        auto_augment: timm RandAugment string; None disables it.
        interpolation: ``bicubic`` (the recipe's) or ``bilinear``, for the crop and RandAugment's geometric ops.
        hflip: horizontal flip probability.
        scale: area range of the random crop.
        mean: normalisation mean (0..1 scale); timm fills RandAugment's geometric ops with it.

    Returns:
        A transform mapping ``(path, encoded bytes as a uint8 tensor)`` to an
        :class:`~convnext_pl.data.augment.rand_augment.AugmentedImage` (a uint8 tensor [3, S, S] without RandAugment).

    Raises:
        UserError: ``auto_augment`` is not a RandAugment the device kernels cover.
    """
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"the fast pipeline resizes with bicubic or bilinear, got {interpolation!r}")
    # color_jitter None as in train_transform: timm adds its default ColorJitter(0.4) when RandAugment is off.
    transform = create_transform(
        image_size, is_training=True, scale=scale, hflip=hflip, color_jitter=None, auto_augment=auto_augment,
        interpolation=interpolation, use_prefetcher=True, re_prob=0.0, mean=tuple(mean),
    )  # fmt: skip
    crop, *middle, _ = transform.transforms  # timm's: crop, [flip], [RandAugment], MaybePILToTensor
    # torchvision's flips take the uint8 tensor as they are; the policy is drawn only (and refused if not covered).
    flips = (T.RandomHorizontalFlip, T.RandomVerticalFlip)
    middle = [step if isinstance(step, flips) else RandAugmentDraws(step) for step in middle]
    return T.Compose([DecodeRandomResizedCrop(image_size, crop.scale, crop.ratio, interpolation), *middle])


def small_image_train_transform(
    image_size: int = 32,
    padding: int = 4,
    auto_augment: str | None = None,
    re_prob: float = 0.0,
    re_mode: str = "pixel",
    interpolation: str = "bicubic",
    hflip: float = 0.5,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> T.Compose:
    """Training transform for images trained at their native small size (32x32 CIFAR from scratch).

    A RandomResizedCrop down to 8% of a 32x32 image leaves almost nothing, so, as the official
    ``build_transform`` does for ``input_size <= 32``, the crop becomes the classic padded random crop.

    Args:
        image_size: output side length (the images' own size).
        padding: zero padding on each side before the random crop.
        auto_augment: optional timm RandAugment string, e.g. ``rand-m9-mstd0.5-inc1``.
        re_prob: random erasing probability.
        re_mode: random erasing fill mode.
        interpolation: resampling used by RandAugment's geometric ops.
        hflip: horizontal flip probability.
        mean: per-channel mean for normalisation.
        std: per-channel std for normalisation.

    Returns:
        A transform mapping a PIL image to a normalised FloatTensor[3, image_size, image_size].
    """
    transform = train_transform(
        image_size,
        auto_augment=auto_augment,
        re_prob=re_prob,
        re_mode=re_mode,
        interpolation=interpolation,
        hflip=hflip,
        mean=mean,
        std=std,
    )
    transform.transforms[0] = T.RandomCrop(image_size, padding=padding)
    return transform


def eval_transform(
    image_size: int,
    crop_pct: float = RECIPE_CROP_PCT,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> T.Compose:
    """Evaluation transform of the recipe.

    Below 384 the shorter side is resized to ``floor(image_size / crop_pct)`` (224 -> 256) and the center
    ``image_size`` square is cropped. At 384 and above the image is resized to the square size with no crop
    (official ``build_transform``), which timm's ``squash`` mode with ``crop_pct=1`` does; its center crop is
    then the identity.

    Args:
        image_size: output side length.
        crop_pct: fraction of the resized shorter side kept by the crop below 384 (recipe 0.875).
        interpolation: resampling filter of the resize (recipe: bicubic).
        mean: per-channel mean for normalisation.
        std: per-channel std for normalisation.

    Returns:
        A transform mapping a PIL image to a normalised FloatTensor[3, image_size, image_size].
    """
    if image_size >= NO_CROP_MIN_SIZE:
        crop_pct, crop_mode = 1.0, "squash"
    else:
        crop_mode = "center"
    return create_transform(
        image_size,
        is_training=False,
        crop_pct=crop_pct,
        crop_mode=crop_mode,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )
