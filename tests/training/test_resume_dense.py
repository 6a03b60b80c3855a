"""Exact resume for the dense tasks and pre-training: a segmentation, detection or FCMAE run killed (SIGKILL)
mid-epoch and resumed with ``--ckpt_path last`` ends bit-identical to an uninterrupted run, weights, BatchNorm
buffers and optimizer state alike. The loader order and every random augmentation (segmentation crops, flips and
photometric distortion; the detector's DETR-style multi-scale; FCMAE's masks) must follow from (seed, epoch,
sample or step) for that (``data/resumable.py``, ``training/seeding.StepSeeding``). Segmentation and detection
also resume reading ADE20K and COCO shards in shard order (``StreamingADE20KDataModule``,
``StreamingCOCODataModule``), whose loader position is the shard reader's."""

import warnings
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, CPU, EXPERIMENTS, QUIET, max_difference, run_main

from convnext_pl.data.detection.coco_synthetic import write_coco_shapes
from convnext_pl.data.segmentation.ade20k_synthetic import write_scenes
from convnext_pl.data.streaming.writer import convert
from convnext_pl.training.cli import cli_main

# The uninterrupted and the resumed run train in this process, on one thread as the subprocesses do (run_python):
# a fresh interpreter spends ~9 s importing torch and Lightning, and only the killed run needs one.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 2 epochs of 4 batches; last.ckpt every 3 steps, so step 6 is two batches into epoch 1. Validation only after the
# last epoch: it runs in both runs alike, and the kill is what is under test.
SCHEDULE = [
    *QUIET, *CPU, "--seed_everything", "0",
    "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2",
    "--trainer.check_val_every_n_epoch", "2", "--trainer.num_sanity_val_steps", "0",
    "--trainer.log_every_n_steps", "1", "--checkpoint.every_n_train_steps", "3",
]  # fmt: skip
TOTAL_STEPS, KILL_AT, SAVED_AT = 8, 7, 6

# configs/experiment/segmentation_synthetic.yaml on 8 scenes of 48 px, 32-px crops, batches of 2.
SEGMENTATION_TRAINING = [
    "--data.init_args.batch_size=2", "--data.init_args.scale=[64,48]", "--data.init_args.crop_size=[32,32]",
]  # fmt: skip
SEGMENTATION = [
    "--config", str(EXPERIMENTS / "segmentation_synthetic.yaml"), *SEGMENTATION_TRAINING,
    "--data.init_args.train_images=8", "--data.init_args.val_images=2", "--data.init_args.image_size=48",
]  # fmt: skip
# configs/experiment/coco_shapes_mask_rcnn.yaml on 8 shapes images of 64 px, batches of 2, no warm-up.
DETECTION_TRAINING = [
    "--data.init_args.batch_size=2", "--data.init_args.train_scales=[48,56,64]", "--data.init_args.crop_scales=[40]",
    "--data.init_args.crop_size=[32,48]", "--data.init_args.max_size=96",
    "--model.init_args.net.init_args.min_size=64", "--model.init_args.net.init_args.max_size=96",
    "--model.init_args.net.init_args.representation_size=64", "--model.init_args.warmup_steps=0",
]  # fmt: skip
DETECTION = [
    "--config", str(EXPERIMENTS / "coco_shapes_mask_rcnn.yaml"), *DETECTION_TRAINING,
    "--data.init_args.train_images=8", "--data.init_args.val_images=2", "--data.init_args.image_size=64",
]  # fmt: skip
# The same scenes and shapes written as ADE20K and COCO, converted into shards of a few images each (the
# converter's --layout ade20k|coco) and read in shard order: configs/data/ade20k_streaming.yaml, coco_streaming.yaml.
SHARD_ORDER = ["--data.init_args.shuffle=shards", "--data.init_args.shuffle_window=4"]
SEGMENTATION_SHARDS = [
    "--config", str(EXPERIMENTS / "segmentation_synthetic.yaml"), "--data", str(CONFIGS / "data" / "ade20k_streaming.yaml"),
    *SEGMENTATION_TRAINING, *SHARD_ORDER, "--data.init_args.num_classes=5",
]  # fmt: skip
DETECTION_SHARDS = [
    "--config", str(EXPERIMENTS / "coco_shapes_mask_rcnn.yaml"), "--data", str(CONFIGS / "data" / "coco_streaming.yaml"),
    *DETECTION_TRAINING, *SHARD_ORDER, "--data.init_args.num_classes=3",
]  # fmt: skip
# 8 training and 2 validation images in each layout, written as the synthetic DataModules write them.
SHARD_SOURCES = {
    "segmentation, shards": ("ade20k", lambda folder: write_scenes(folder, 8, 2, 48)),
    "detection, shards": ("coco", lambda folder: write_coco_shapes(folder, 8, 2, 64)),
}
# configs/experiment/digits_fcmae.yaml (FCMAE pre-training) on batches of 8 digits: a fresh random mask per image
# at every step, drawn from the step's seeded generator.
PRETRAINING = ["--config", str(EXPERIMENTS / "digits_fcmae.yaml"), "--data.init_args.batch_size=8"]
# task: (its arguments, the data set's folder under the test's folder (None: in memory), the run name: the config
# file's name)
TASKS = {
    "segmentation": (SEGMENTATION, "scenes/ADEChallengeData2016", "segmentation_synthetic"),
    "segmentation, shards": (SEGMENTATION_SHARDS, "shards", "segmentation_synthetic"),
    "detection": (DETECTION, "shapes", "coco_shapes_mask_rcnn"),
    "detection, shards": (DETECTION_SHARDS, "shards", "coco_shapes_mask_rcnn"),
    "pre-training": (PRETRAINING, None, "digits_fcmae"),
}


def _command(task: str, tmp_path: Path, runs: str, *extra: str) -> list[str]:
    args, data, _ = TASKS[task]
    return [
        "fit", *args, *SCHEDULE, *([f"--data.init_args.root={tmp_path / data}"] if data else []),
        f"--trainer.default_root_dir={tmp_path / runs}", *extra,
    ]  # fmt: skip


def _run(task: str, tmp_path: Path, runs: str, *extra: str):
    return run_main(_command(task, tmp_path, runs, *extra), timeout=300, check=False)


def _last(task: str, tmp_path: Path, runs: str, version: int) -> dict:
    path = tmp_path / runs / TASKS[task][2] / f"version_{version}" / "checkpoints" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_a_dense_run_killed_mid_epoch_and_resumed_ends_bit_identical(task, tmp_path):
    if task in SHARD_SOURCES:
        layout, write = SHARD_SOURCES[task]
        source = str(write(tmp_path / "source"))
        convert(
            source, str(tmp_path / "shards"), shard_size_mb=0.01, workers=2, progress=False, layout=layout
        )
    cli_main(_command(task, tmp_path, "straight"))
    # SIGKILL when step 7 begins: last.ckpt holds step 6, two batches into epoch 1, and step 6 is lost. The killed
    # and the resumed run read with 2 worker processes, the reference in-process: augmentation depends on neither.
    workers = ("--data.init_args.num_workers=2",)
    kill = ("--trainer.callbacks+=helpers.callbacks.SignalAtStep", f"--trainer.callbacks.step={KILL_AT}")
    killed = _run(task, tmp_path, "killed", *workers, *kill)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert _last(task, tmp_path, "killed", 0)["global_step"] == SAVED_AT
    # The resume needs no fresh interpreter: through cli_main (what main.py calls), in this process.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli_main(_command(task, tmp_path, "killed", *workers, "--ckpt_path", "last"))
    # Lightning's warning about loaders that restart the epoch
    assert not [w for w in caught if "not resumable" in str(w.message)]
    reference, final = _last(task, tmp_path, "straight", 0), _last(task, tmp_path, "killed", 1)
    assert final["global_step"] == reference["global_step"] == TOTAL_STEPS
    difference, where = max_difference(final, reference)
    assert difference == 0, f"max |resumed - uninterrupted| = {difference:.3g}, in {where}"
    assert final["lr_schedulers"] == reference["lr_schedulers"]
