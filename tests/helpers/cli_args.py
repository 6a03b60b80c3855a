"""Command-line fragments that tests append to ``main.py`` / ``cli_main`` arguments, and the dense tasks' demo
configs shrunk to seconds."""

from pathlib import Path

from .paths import EXPERIMENTS

# Nothing a test reads is in the progress bar or the model summary; leaving them out keeps captured output short.
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
# One epoch of two training batches and two validation batches: enough for a run to write its checkpoint. Not
# `limit_val_batches=1`: Trainer declares it `float | int`, so the CLI parses "1" as 1.0, which Lightning reads as
# 100% of the batches; "2" parses as 2.0, which Lightning reads as two batches.
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2"]
# Epochs of the digits demo the suite trains (conftest.demo_run): `make demo` runs 12, 100 s of the reference machine.
DEMO_EPOCHS = 2
# One CPU process, whatever the config asks for (GPU configs are parsed on this machine too).
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]

# A handful of small scenes and two steps: every stage of a run, in seconds.
SEGMENTATION_TINY = [
    "--data.init_args.train_images=4",
    "--data.init_args.val_images=2",
    "--data.init_args.image_size=48",
    "--data.init_args.batch_size=2",
    "--data.init_args.scale=[64,48]",
    "--data.init_args.crop_size=[32,32]",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.check_val_every_n_epoch=1",
    "--trainer.num_sanity_val_steps=0",
]


def tiny_segmentation(data_root: Path, runs: Path) -> list[str]:
    """``configs/experiment/segmentation_synthetic.yaml`` in seconds: its scenes written to ``data_root``."""
    return [
        "--config", str(EXPERIMENTS / "segmentation_synthetic.yaml"), *SEGMENTATION_TINY, *QUIET, *CPU,
        f"--data.init_args.root={data_root}",
        f"--trainer.default_root_dir={runs}",
    ]  # fmt: skip


def tiny_detection(root: Path, runs: Path) -> list[str]:
    """The laptop config shrunk to seconds: 64-px images, 8 + 4 of them, 2 training batches, no warm-up."""
    return [
        "--config", str(EXPERIMENTS / "coco_shapes_mask_rcnn.yaml"), *QUIET, *CPU,
        "--data.init_args.root", str(root),
        "--data.init_args.train_images", "8",
        "--data.init_args.val_images", "4",
        "--data.init_args.image_size", "64",
        "--data.init_args.train_scales", "[48, 64]",
        "--data.init_args.crop_scales", "[40]",
        "--data.init_args.crop_size", "[32, 48]",
        "--data.init_args.max_size", "96",
        "--model.init_args.net.init_args.min_size", "64",
        "--model.init_args.net.init_args.max_size", "96",
        "--model.init_args.net.init_args.fpn_channels", "32",
        "--model.init_args.net.init_args.representation_size", "64",
        "--model.init_args.warmup_steps", "0",
        "--model.init_args.draw_images", "2",
        "--model.init_args.draw_score_threshold", "0",
        "--trainer.default_root_dir", str(runs),
        "--trainer.limit_train_batches", "2",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip
