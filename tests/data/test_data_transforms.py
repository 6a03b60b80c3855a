"""The recipe's transforms: eval resize/crop rule, RandAugment and RandomErasing parameters, small-image crop."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation

from convnext_pl.data import eval_transform, small_image_train_transform, train_transform


def _image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def _find(transform: T.Compose, kind: type):
    return [t for t in transform.transforms if isinstance(t, kind)]


def test_eval_below_384_resizes_shorter_side_to_256_then_crops_224():
    transform = eval_transform(224)
    (resize,) = _find(transform, T.Resize)
    (crop,) = _find(transform, T.CenterCrop)
    assert resize.size == 256  # an int: the shorter side, aspect ratio kept
    assert resize.interpolation == T.InterpolationMode.BICUBIC
    assert tuple(crop.size) == (224, 224)
    assert transform(_image(400, 300)).shape == (3, 224, 224)


def test_eval_at_384_resizes_to_the_square_without_cropping():
    transform = eval_transform(384)
    (resize,) = _find(transform, T.Resize)
    assert tuple(resize.size) == (384, 384)  # both sides: the whole image is kept, squashed
    # A 600x300 image whose left quarter is white: after squashing, exactly the left quarter is white,
    # which a shorter-side resize + center crop would have cut away.
    pixels = np.zeros((300, 600, 3), dtype=np.uint8)
    pixels[:, :150] = 255
    out = transform(Image.fromarray(pixels))
    assert out.shape == (3, 384, 384)
    white = out[0, 192] > 0  # any normalised value above black's
    assert white[:90].all() and not white[100:].any()


def test_eval_output_is_normalised_with_the_given_statistics():
    pixels = np.full((32, 32, 3), 128, dtype=np.uint8)
    out = eval_transform(32, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(
        Image.fromarray(pixels)
    )
    torch.testing.assert_close(out, torch.full((3, 32, 32), (128 / 255 - 0.5) / 0.25))


def test_train_transform_holds_the_recipe_randaugment_and_random_erasing():
    transform = train_transform(224)
    (crop,) = _find(transform, RandomResizedCropAndInterpolation)
    assert crop.scale == (0.08, 1.0) and crop.size == (224, 224)
    (rand_augment,) = _find(transform, RandAugment)
    # rand-m9-mstd0.5-inc1: 2 ops per image, magnitude 9 with std 0.5, the "increasing" op variants.
    assert rand_augment.num_layers == 2
    assert {op.magnitude for op in rand_augment.ops} == {9}
    assert {op.magnitude_std for op in rand_augment.ops} == {0.5}
    names = {op.name for op in rand_augment.ops}
    assert {"PosterizeIncreasing", "SolarizeIncreasing", "ContrastIncreasing"} <= names
    (erasing,) = _find(transform, RandomErasing)
    assert erasing.probability == 0.25 and erasing.mode == "pixel"
    # Random erasing acts on the normalised tensor: it comes after Normalize.
    kinds = [type(t) for t in transform.transforms]
    assert kinds.index(RandomErasing) > kinds.index(T.Normalize)
    out = transform(_image(300, 200))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32


def test_train_transform_without_augment_or_erasing_has_neither():
    transform = train_transform(64, auto_augment=None, re_prob=0.0)
    assert not _find(transform, RandAugment) and not _find(transform, RandomErasing)


@pytest.mark.parametrize("auto_augment", [None, "rand-m9-mstd0.5-inc1"])
def test_small_image_train_transform_uses_padded_random_crop(auto_augment):
    transform = small_image_train_transform(32, auto_augment=auto_augment, re_prob=0.25)
    crop = transform.transforms[0]
    assert isinstance(crop, T.RandomCrop) and crop.padding == 4 and tuple(crop.size) == (32, 32)
    assert not _find(transform, RandomResizedCropAndInterpolation)
    assert bool(_find(transform, RandAugment)) == (auto_augment is not None)
    assert _find(transform, T.RandomHorizontalFlip)[0].p == 0.5
    assert transform(_image(32, 32)).shape == (3, 32, 32)


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5", "original"])
def test_posterize_to_zero_bits_gives_black_instead_of_raising(policy):
    """timm maps the top magnitude of PosterizeIncreasing (and the bottom of Posterize) to 0 bits, which
    Pillow 13 refuses; rand-m9-mstd0.5 draws it for ~2% of posterize calls."""
    transform = train_transform(32, auto_augment=policy, re_prob=0.0)
    step = transform.transforms[2]
    ops = getattr(step, "ops", None) or [op for sub_policy in step.policy for op in sub_policy]
    posterize_ops = [op for op in ops if op.name.startswith("Posterize")]
    assert posterize_ops
    image = _image(32, 32)
    for op in posterize_ops:
        op.prob, op.magnitude_std = 1.0, 0.0
        for magnitude in (0.0, 10.0):  # both ends of the level range
            op.magnitude = magnitude
            out = np.asarray(op(image))
            assert out.shape == (32, 32, 3)
    zero_bits = [op for op in posterize_ops if op.name == "PosterizeIncreasing"]
    for op in zero_bits:
        op.magnitude = 10.0
        assert not np.asarray(op(image)).any()  # 0 bits kept: black, as TF's RandAugment
