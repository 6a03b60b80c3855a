"""The fast training input path: the same draws as the recipe's transform, the uint8 batches finished on the
device, and a user's training run with ``fast_pipeline: true``."""

import io
import random

import numpy as np
import pytest
import torch
from helpers.cli_args import CPU, QUIET
from helpers.fakedata import corrupt_jpeg, write_image_folder
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from convnext_pl.data import ImageFolderDataModule
from convnext_pl.data.augment.batch_augment import DeviceAugment
from convnext_pl.data.augment.fast_augment import DecodeRandomResizedCrop, mean_abs_difference
from convnext_pl.data.augment.rand_augment import AugmentedImage, device_rand_augment
from convnext_pl.data.augment.transforms import fast_train_transform, train_transform
from convnext_pl.data.images import CorruptImageError
from convnext_pl.training.cli import cli_main


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth picture with noise and a flat saturated band."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 128 + 100 * np.sin(x / rng.uniform(5, 20))[..., None] * np.cos(y / rng.uniform(5, 20))[..., None]
    pixels = np.clip(base + rng.normal(0, 10, (height, width, 3)), 0, 255)
    pixels[: height // 4] = 255  # a saturated flat band
    return Image.fromarray(pixels.astype(np.uint8))


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _reference_uint8(image: Image.Image, seed: int) -> np.ndarray:
    """The recipe's transform without erasing, un-normalised back to 0..255."""
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    out = train_transform(96, re_prob=0.0)(image)
    mean, std = (
        torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None],
        torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None],
    )
    return (out * std + mean).mul(255).permute(1, 2, 0).numpy()


def _fast_uint8(data: bytes, seed: int) -> np.ndarray:
    """The fast path's worker half, then its RandAugment on the "device" (here the CPU)."""
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    transform = fast_train_transform(96)
    out = transform(("photo.jpg", torch.frombuffer(bytearray(data), dtype=torch.uint8)))
    assert isinstance(out, AugmentedImage) and out.image.dtype == torch.uint8
    assert out.image.shape == (3, 96, 96)
    image = device_rand_augment(transform)(out.image[None], out.ops[None], out.args[None])[0]
    return image.permute(1, 2, 0).numpy().astype(np.float64)


def test_fast_transform_draws_the_recipes_crop_flip_and_randaugment():
    image = _photo(200, 150, seed=2)
    data = _jpeg(image)
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    same = [np.abs(_fast_uint8(data, s) - _reference_uint8(decoded, s)).mean() for s in range(12)]
    other = [np.abs(_fast_uint8(data, s) - _reference_uint8(decoded, s + 100)).mean() for s in range(12)]
    # Same seeds: the same crop, flip and ops (RandAugment's on the device give Pillow's pixels); only the resize
    # kernel's rounding differs, and the ops that follow can carry it further (e.g. Solarize's threshold).
    assert np.median(same) < 1.0 and np.median(other) > 10.0


def test_fast_decode_and_crop_resize_are_pillows_within_rounding():
    data = _jpeg(_photo(200, 150, seed=3))
    crop = DecodeRandomResizedCrop(96)
    decoded = crop.decode(("photo.jpg", torch.frombuffer(bytearray(data), dtype=torch.uint8)))
    pil_image = Image.open(io.BytesIO(data)).convert("RGB")
    assert mean_abs_difference(decoded.permute(1, 2, 0).numpy(), pil_image) < 0.05  # the same libjpeg-turbo
    for seed in range(4):
        random.seed(seed)
        want = train_transform(96).transforms[0](pil_image)
        random.seed(seed)  # the same crop box
        assert mean_abs_difference(crop.crop(decoded), want) < 0.5  # resize kernels' rounding only


def test_normalize_erase_matches_the_recipes_normalisation_and_is_seeded():
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    plain = DeviceAugment(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, re_prob=0.0)(images)
    mean, std = (
        torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1),
        torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1),
    )
    torch.testing.assert_close(plain, (images / 255 - mean) / std)

    erase = DeviceAugment(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, re_prob=1.0)
    state = torch.get_rng_state(), random.getstate()
    first, again = erase(images, seed=5), erase(images, seed=5)
    assert torch.equal(first, again) and not torch.equal(first, erase(images, seed=6))
    assert (
        torch.equal(torch.get_rng_state(), state[0]) and random.getstate() == state[1]
    )  # generators put back
    assert all((first[i] != plain[i]).any() for i in range(len(images)))  # probability 1: every image erased


def test_erasing_rate_is_the_recipes():
    images = torch.full((400, 3, 8, 8), 128, dtype=torch.uint8)
    batch = DeviceAugment(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, re_prob=0.25)(images, seed=0)
    erased = (batch != batch[:, :, :1, :1]).flatten(1).any(1).float().mean().item()
    assert 0.18 < erased < 0.32  # 0.25 +- 3.5 standard deviations


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "data", num_classes=2, per_class=4, size=(60, 45))


def _fast_module(root, **kwargs) -> ImageFolderDataModule:
    args = dict(num_classes=2, batch_size=4, num_workers=0, image_size=32, fast_pipeline=True)
    return ImageFolderDataModule(root=str(root), **{**args, **kwargs})


def test_fast_loader_yields_uint8_that_the_hooks_finish(folder):
    module = _fast_module(folder)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    (images, ops, args), targets, seeds = batch  # an AugmentedImage of the batch: uint8 images + draws
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32) and (seeds >= 0).all()
    assert ops.shape == args.shape == (4, 2)  # two RandAugment layers per image
    finished = module.on_after_batch_transfer(module.on_before_batch_transfer(batch, 0), 0)
    assert len(finished) == 2 and finished[0].dtype == torch.float32 and torch.equal(finished[1], targets)
    again = module.on_after_batch_transfer(module.on_before_batch_transfer(batch, 0), 0)
    assert torch.equal(finished[0], again[0])  # erasing seeded by the batch's sample seeds
    val_images, _ = next(iter(module.val_dataloader()))  # evaluation stays on the released weights' path
    assert val_images.dtype == torch.float32
    assert module.on_after_batch_transfer((val_images, targets), 0)[0] is val_images


def test_fast_loader_names_a_corrupt_file(folder):
    bad = corrupt_jpeg(sorted((folder / "train" / "class_00").iterdir())[0])
    module = _fast_module(folder, batch_size=8)
    module.setup("fit")
    with pytest.raises(CorruptImageError, match=bad.name):
        next(iter(module.train_dataloader()))


def test_training_with_the_fast_pipeline_from_the_command_line(folder, tmp_path):
    cli = cli_main([
        "fit", "--model.class_path=convnext_pl.ImageClassifier",
        "--model.init_args.net.class_path=convnext_pl.models.create_model",
        "--model.init_args.net.init_args.name=convnext_atto", "--model.init_args.net.init_args.patch_size=2",
        "--model.init_args.mixup_alpha=0.8", "--model.init_args.cutmix_alpha=1.0",
        "--data.class_path=convnext_pl.data.ImageFolderDataModule", f"--data.init_args.root={folder}",
        "--data.init_args.num_classes=2", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
        "--data.init_args.image_size=32", "--data.init_args.fast_pipeline=true",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={tmp_path}",
        *CPU, *QUIET,
    ])  # fmt: skip
    assert cli.trainer.global_step == 2
    assert torch.isfinite(torch.tensor(cli.trainer.callback_metrics["val/loss"].item()))


def _finished(module, batch):
    return module.on_after_batch_transfer(module.on_before_batch_transfer(batch, 0), 0)


def test_a_resumed_loader_finishes_its_next_batch_as_the_uninterrupted_one(folder):
    """Resume: the device-side erasing follows the batch's sample seeds, not the generators' history."""
    uninterrupted = _fast_module(folder, re_prob=1.0)  # every image erased: the noise must match
    uninterrupted.setup("fit")
    batches = iter(uninterrupted.train_dataloader())
    next(batches)
    state = uninterrupted.state_dict()  # what a checkpoint after the first batch holds
    torch.manual_seed(123), random.seed(123)  # the resumed process's generators are elsewhere
    want = _finished(uninterrupted, next(batches))

    resumed = _fast_module(folder, re_prob=1.0)
    resumed.setup("fit")
    resumed.load_state_dict(state)
    got = _finished(resumed, next(iter(resumed.train_dataloader())))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
