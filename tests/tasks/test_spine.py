"""What the task spine (``convnext_pl.tasks.base.TaskModule`` and the CLI around it) guarantees for every task,
driven through ``cli_main`` as a user runs it: one weights vocabulary, mistakes refused in one line without a
run folder, another task's checkpoint named, a resume that never ignores a value, the task's own monitor and
checkpoint names, and predictions that keep their inputs' relative paths."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import CPU, DIGITS, QUIET, SHORT, refused, run_folders, tiny_detection, tiny_segmentation
from PIL import Image

from convnext_pl.tasks.base import TASK_KEY
from convnext_pl.training.cli import cli_main


def digits(runs: Path) -> list[str]:
    return ["--config", DIGITS, *QUIET, *CPU, *SHORT, f"--trainer.default_root_dir={runs}"]


def segmentation(tmp_path: Path) -> list[str]:
    return tiny_segmentation(tmp_path / "scenes" / "ADEChallengeData2016", tmp_path / "runs")


def detection(tmp_path: Path) -> list[str]:
    return [*tiny_detection(tmp_path / "shapes", tmp_path / "runs"), "--trainer.max_epochs=1"]


TASKS = {"classification": digits, "segmentation": segmentation, "detection": detection}


def _args(task: str, tmp_path: Path) -> list[str]:
    return TASKS[task](tmp_path / "runs") if task == "classification" else TASKS[task](tmp_path)


# The classifier's whole network is its backbone: it has `pretrained` only.
WEIGHT_OPTIONS = [("classification", "pretrained")] + [
    (task, option)
    for task in ("segmentation", "detection")
    for option in ("pretrained", "pretrained_backbone")
]


@pytest.mark.parametrize(("task", "option"), WEIGHT_OPTIONS)
def test_a_bogus_weights_name_is_one_line_and_leaves_no_run_folder(task, option, tmp_path, capsys):
    line = refused(
        ["fit", *_args(task, tmp_path), f"--model.init_args.{option}=no_such_weights"], capsys, tmp_path
    )
    assert "'no_such_weights' are neither a file nor a released weights name" in line


def test_null_turns_the_weights_off_on_the_command_line_as_in_yaml(capsys):
    # coco_mask_rcnn_convnext_tiny_3x.yaml starts from convnext_tiny.in1k; `null` on the command line turns it off.
    config = "configs/experiment/coco_mask_rcnn_convnext_tiny_3x.yaml"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["fit", "--config", config, "--model.init_args.pretrained_backbone", "null", "--print_config"]
        )
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["pretrained_backbone"] is None


def test_validate_with_only_the_backbones_imagenet_weights_is_refused(tmp_path, capsys):
    # Random heads would be evaluated: a detector needs its whole weights (pretrained) or --ckpt_path.
    line = refused(
        ["validate", *detection(tmp_path), "--model.init_args.pretrained_backbone=x.pth"], capsys, tmp_path
    )
    assert line.startswith("error: validate needs trained weights") and "pretrained_backbone" in line


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory) -> tuple[Path, Path]:
    """A two-step segmentation fit of the demo config without its checkpoint section: the task's monitor."""
    root = tmp_path_factory.mktemp("spine_seg")
    cli = cli_main(["fit", *segmentation(root), "--checkpoint.monitor=null", "--checkpoint.filename=null"])
    return root, Path(cli.trainer.log_dir)


def test_a_task_without_a_checkpoint_section_ranks_by_its_own_metric(segmentation_run):
    _, run = segmentation_run
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in names
    (best,) = [n for n in names if n != "last.ckpt"]
    assert best.startswith("epoch000-mIoU_") and "acc1" not in best
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)[TASK_KEY] == {
        "task": "segmentation",
        "class": "SemanticSegmenter",
    }


def test_another_tasks_checkpoint_is_one_line_naming_both_tasks(segmentation_run, tmp_path, capsys):
    _, run = segmentation_run
    ckpt = run / "checkpoints" / "last.ckpt"
    line = refused(["fit", *digits(tmp_path / "runs"), f"--ckpt_path={ckpt}"], capsys, tmp_path)
    assert line == (
        f"error: checkpoint {ckpt} is a segmentation checkpoint (SemanticSegmenter) and this run is "
        "classification (ImageClassifier); give a classification checkpoint, or run the segmentation config it "
        "was trained with"
    )


def test_a_resume_refuses_a_value_the_checkpoint_would_replace_and_applies_it_when_accepted(
    segmentation_run, capsys, caplog
):
    root, run = segmentation_run
    ckpt = run / "checkpoints" / "last.ckpt"
    resume = ["fit", *segmentation(root), "--checkpoint.monitor=null", "--checkpoint.filename=null"]
    resume += [f"--ckpt_path={ckpt}", "--trainer.max_epochs=2", "--model.init_args.weight_decay=0.5"]
    line = refused(resume, capsys, root / "runs" / "nothing-new")
    assert line.startswith(f"error: resuming {ckpt} with model settings other than the checkpoint's: ")
    assert "model.init_args.weight_decay 0.05 -> 0.5" in line
    assert len(run_folders(root / "runs")) == 1
    with caplog.at_level(logging.INFO):
        cli = cli_main([*resume, "--accept_changed_settings=true"])
    assert (
        "Using the given model settings over the checkpoint's: model.init_args.weight_decay 0.05 -> 0.5"
        in caplog.text
    )
    assert cli.model.hparams.weight_decay == 0.5
    decays = {group["weight_decay"] for group in cli.trainer.optimizers[0].param_groups}
    assert decays == {0.0, 0.5}  # matrices and kernels decay with the given value


def test_segmentation_predictions_keep_their_inputs_relative_paths(segmentation_run, tmp_path, capsys):
    _, run = segmentation_run
    images = tmp_path / "images"
    for sub, colour in (("a", 40), ("b", 200)):
        (images / sub).mkdir(parents=True)
        Image.fromarray(np.full((40, 56, 3), colour, np.uint8)).save(images / sub / "img.jpg")
    root = tmp_path
    cli = cli_main(
        ["predict", *segmentation(root), f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]
        + [
            "--checkpoint.monitor=null",
            "--checkpoint.filename=null",
            f"--data.init_args.predict_dir={images}",
        ]
    )
    masks = Path(cli.trainer.log_dir) / "masks"
    assert sorted(p.relative_to(masks).as_posix() for p in masks.rglob("*.png")) == ["a/img.png", "b/img.png"]
    assert Image.open(masks / "a" / "img.png").size == (56, 40)  # the image's own size
    assert cli.trainer.predict_loop is not None


def _image_folder(tmp_path: Path, drop_val_class: bool = False, empty_class: bool = False) -> list[str]:
    from convnext_pl.data.classification.synthetic_files import write_image_folder

    root = write_image_folder(tmp_path / "folder", num_classes=3, per_class=2, size=32)
    if drop_val_class:
        for image in (root / "val" / sorted(p.name for p in (root / "val").iterdir())[-1]).iterdir():
            image.unlink()
        (root / "val" / sorted(p.name for p in (root / "val").iterdir())[-1]).rmdir()
    if empty_class:  # a class folder whose images are gone
        for image in sorted((root / "train").iterdir())[-1].iterdir():
            image.unlink()
    data = ["--data=convnext_pl.data.ImageFolderDataModule", f"--data.init_args.root={root}"]
    return [
        *data,
        "--data.init_args.num_classes=3",
        "--data.init_args.num_workers=0",
        "--data.init_args.image_size=32",
    ]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("val_classes_differ", "class"),
        ("empty_class_folder", "class folders without images"),
        ("missing_ade20k_annotations", "annotations"),
        ("wrong_shape_weights", "does not fit"),
    ],
)
def test_data_and_weights_mistakes_found_in_set_up_leave_no_folder(case, expected, tmp_path, capsys):
    from convnext_pl.models import create_model

    runs = tmp_path / "runs"
    if case == "val_classes_differ":
        args = ["fit", *digits(runs), *_image_folder(tmp_path, drop_val_class=True)]
    elif case == "empty_class_folder":
        args = ["fit", *digits(runs), *_image_folder(tmp_path, empty_class=True)]
    elif case == "missing_ade20k_annotations":
        root = tmp_path / "ADEChallengeData2016"
        (root / "images" / "training").mkdir(parents=True)
        args = ["fit", *segmentation(tmp_path), "--data=convnext_pl.data.ADE20KDataModule"]
        args += [
            f"--data.init_args.root={root}",
            "--data.init_args.num_classes=5",
            "--data.init_args.scale=[64,48]",
        ]
        args += ["--data.init_args.crop_size=[32,32]", "--data.init_args.num_workers=0"]
    else:
        weights = tmp_path / "femto.pth"
        torch.save(create_model("convnext_femto").state_dict(), weights)
        args = ["fit", *digits(runs), f"--model.init_args.pretrained={weights}"]
    line = refused(args, capsys, tmp_path)
    assert expected in line
