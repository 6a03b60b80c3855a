"""RandAugment of the fast path: drawn in the worker by timm's own code, applied on the device by tensor kernels
that give timm's Pillow pixels."""

import json
import random

import numpy as np
import pytest
import torch
from helpers import DIGITS, QUIET
from PIL import Image
from timm.data.auto_augment import NAME_TO_OP, AugmentOp

from convnext_pl.data import ImageFolderDataModule
from convnext_pl.data.augment.fast_augment import mean_abs_difference
from convnext_pl.data.augment.rand_augment import (
    KERNEL_OF_TIMM_OP,
    KERNELS,
    BatchRandAugment,
    device_rand_augment,
)
from convnext_pl.data.augment.transforms import fast_train_transform, train_transform
from convnext_pl.errors import UserError
from convnext_pl.training.cli import cli_main

# Not square: rotations turn about (w / 2, h / 2), relative translations scale by w or h.
WIDTH, HEIGHT = 40, 30


def _pictures(count: int, seed: int = 0) -> list[Image.Image]:
    """Smooth waves with noise, a saturated band and a flat block: edges, flat regions and clipped levels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    pictures = []
    for _ in range(count):
        waves = np.sin(x / rng.uniform(3, 9))[..., None] * np.cos(y / rng.uniform(3, 9))[..., None]
        pixels = 128 + 100 * waves * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 8, (HEIGHT, WIDTH, 3))
        pixels[: HEIGHT // 5] = 255
        pixels[-8:, -10:] = rng.uniform(0, 255, 3)
        pictures.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return pictures


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _recipe_ops() -> list[AugmentOp]:
    """The recipe's 15 ops (rand-m9-mstd0.5-inc1) with its hparams (bicubic, fill = the ImageNet mean)."""
    return train_transform(WIDTH, re_prob=0.0).transforms[2].ops


def _extra_ops() -> list[AugmentOp]:
    """timm's other RandAugment ops with their own level functions: absolute translations, the decreasing
    Posterize/Solarize and enhancement levels, and a bilinear shear."""
    hparams = dict(_recipe_ops()[0].hparams)
    names = ["TranslateX", "TranslateY", "Posterize", "Solarize"]
    names += ["Color", "Contrast", "Brightness", "Sharpness"]
    ops = [AugmentOp(name, prob=1.0, magnitude=9, hparams=hparams) for name in names]
    bilinear = {**hparams, "interpolation": Image.Resampling.BILINEAR}
    bilinear = AugmentOp("ShearX", prob=1.0, magnitude=9, hparams=bilinear)
    return [*ops, bilinear]


@pytest.mark.parametrize(
    "op", [*_recipe_ops(), *_extra_ops()], ids=lambda op: f"{op.name}-{op.kwargs['resample'].name}"
)
def test_each_device_op_gives_timms_pillow_pixels(op):
    pictures = _pictures(6)
    args = []
    for i in range(len(pictures)):
        random.seed(i)  # each image its own random sign
        magnitude = [9.0, 10.0, 4.5][i % 3]
        args.append(op.level_fn(magnitude, op.hparams) if op.level_fn is not None else ())
    want = [op.aug_fn(picture, *arg, **op.kwargs) for picture, arg in zip(pictures, args, strict=True)]
    device = BatchRandAugment(op.kwargs["fillcolor"], {2: "bilinear", 3: "bicubic"}[op.kwargs["resample"]])
    kernel = KERNELS.index(KERNEL_OF_TIMM_OP[NAME_TO_OP[op.name]])
    values = torch.tensor([[float(arg[0]) if arg else 0.0] for arg in args], dtype=torch.float64)
    ops = torch.full((len(pictures), 1), kernel)
    got = device(torch.stack([_tensor(p) for p in pictures]), ops, values)
    differences = [mean_abs_difference(w, g) for w, g in zip(want, got, strict=True)]
    # Measured: 0 for every op but the geometric ones, whose float32 taps truncate one level apart from Pillow's
    # double ones on ~1e-4 of the pixels (0.0000 of 255 on 64 photo-like 224 crops, docs/scaling.md).
    assert max(differences) <= 0.01
    worst = max(
        np.abs(np.asarray(w, np.int16) - g.permute(1, 2, 0).numpy()).max()
        for w, g in zip(want, got, strict=True)
    )
    assert worst <= 1


def test_the_draws_are_timms_randaugment_draws():
    """Seeded alike, the fast path draws the recipe's ops, arguments and number of random numbers."""
    recipe = train_transform(16, re_prob=0.0).transforms[2]  # timm's RandAugment, applied to a real image
    applied = []

    def logged(fn, name):
        def apply(image, *level_args, **kwargs):
            applied.append((name, level_args))  # what timm's AugmentOp.__call__ drew for this op
            return fn(image, *level_args, **kwargs)

        return apply

    for op in recipe.ops:
        op.aug_fn = logged(op.aug_fn, op.name)
    draws = fast_train_transform(16).transforms[2]
    picture = _pictures(1)[0].resize((16, 16))
    for seed in range(200):
        applied.clear()
        random.seed(seed), np.random.seed(seed)
        recipe(picture)
        after_recipe = random.getstate(), np.random.get_state()[1].copy()
        random.seed(seed), np.random.seed(seed)
        drawn = draws(_tensor(picture))
        assert random.getstate() == after_recipe[0]
        assert np.array_equal(np.random.get_state()[1], after_recipe[1])
        want = [(KERNEL_OF_TIMM_OP[NAME_TO_OP[name]], float(a[0]) if a else 0.0) for name, a in applied]
        pairs = zip(drawn.ops.tolist(), drawn.args.tolist(), strict=True)
        got = [(KERNELS[op], arg) for op, arg in pairs if op >= 0]
        assert got == want
        assert (drawn.ops[len(want) :] == -1).all()


def test_a_batch_applies_each_images_two_layers_in_order():
    """Whole RandAugment on a batch of different draws: each image as timm's RandAugment gives it alone."""
    recipe = train_transform(WIDTH, re_prob=0.0).transforms[2]
    draws = fast_train_transform(WIDTH).transforms[2]
    pictures, samples, want = _pictures(12, seed=1), [], []
    for seed, picture in enumerate(pictures):
        random.seed(seed), np.random.seed(seed)
        want.append(recipe(picture))
        random.seed(seed), np.random.seed(seed)
        samples.append(draws(_tensor(picture)))
    assert len({tuple(s.ops.tolist()) for s in samples}) > 6  # the batch mixes many op pairs
    images = torch.stack([s.image for s in samples])
    ops, args = torch.stack([s.ops for s in samples]), torch.stack([s.args for s in samples])
    got = draws.device_half()(images, ops, args)
    assert max(mean_abs_difference(w, g) for w, g in zip(want, got, strict=True)) <= 0.01
    assert torch.equal(images, torch.stack([_tensor(p) for p in pictures]))  # the input batch is untouched


def test_fill_follows_the_normalisation_mean_and_no_colour_jitter_without_randaugment():
    mean = (0.5, 0.25, 0.75)
    fill = (128, 64, 191)  # timm's round(255 m)
    assert device_rand_augment(fast_train_transform(32, mean=mean)).fill == fill
    assert train_transform(32, mean=mean).transforms[2].ops[0].kwargs["fillcolor"] == fill
    steps = [type(step).__name__ for step in fast_train_transform(32, auto_augment=None).transforms]
    assert steps == ["DecodeRandomResizedCrop", "RandomHorizontalFlip"]  # no ColorJitter, as the recipe
    steps = [type(step).__name__ for step in fast_train_transform(32, hflip=0.0).transforms]
    assert steps == ["DecodeRandomResizedCrop", "RandAugmentDraws"]


@pytest.mark.parametrize("policy", ["original", "augmix-m5-w3", "rand-m9-t3a"])
def test_a_policy_without_device_kernels_is_refused_when_the_data_module_is_built(policy):
    with pytest.raises(UserError, match="fast_pipeline: false"):
        ImageFolderDataModule(root="data", num_classes=2, auto_augment=policy, fast_pipeline=True)
    ImageFolderDataModule(root="data", num_classes=2, auto_augment=policy)  # the recipe's path takes it


def test_the_command_line_refuses_a_fast_pipeline_it_cannot_apply_in_one_line(tmp_path, capsys):
    data = {"root": str(tmp_path), "num_classes": 3, "auto_augment": "original", "fast_pipeline": True}
    data = {"class_path": "convnext_pl.data.ImageFolderDataModule", "init_args": data}
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            [
                "fit",
                "--config",
                DIGITS,
                "--data",
                json.dumps(data),
                *QUIET,
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: the fast pipeline applies RandAugment on the device, not AutoAugment")


@pytest.mark.gpu
def test_the_kernels_give_the_same_pixels_on_the_gpu():
    """Every op on a CUDA batch, as on the CPU (the float32 taps of the geometric ops may round one level apart)."""
    pictures = torch.stack([_tensor(p) for p in _pictures(len(KERNELS))])
    ops = torch.stack([torch.arange(len(KERNELS)), torch.arange(len(KERNELS)).roll(1)], dim=1)
    args = torch.tensor([[0.3, 12.0]] * len(KERNELS), dtype=torch.float64)
    args[:, 0] = torch.tensor(
        [1.0, 1.0, 1.0, 21.0, 2.0, 100.0, 40.0, 1.6, 0.4, 1.3, 1.8, 0.2, -0.2, 0.3, -0.3, 9.0, -9.0]
    )
    device = BatchRandAugment((124, 116, 104))
    on_cpu = device(pictures, ops, args)
    on_gpu = device(pictures.cuda(), ops.cuda(), args.cuda()).cpu()
    assert (on_cpu.int() - on_gpu.int()).abs().max() <= 1 and (on_cpu != on_gpu).float().mean() < 1e-3
