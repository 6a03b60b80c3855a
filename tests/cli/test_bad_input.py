"""A user on a bad day: every mistake ends with exit code 2 and one line on stderr that names the problem and the
fix, no traceback, and nothing of an earlier run overwritten."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import DIGITS, QUIET, SHORT, run_main
from helpers.fakedata import corrupt_jpeg, truncate_file, write_cifar, write_image_folder
from helpers.refusals import refused

from convnext_pl.errors import UserError
from convnext_pl.models.registry import create_model, list_models
from convnext_pl.tasks.classification import ImageClassifier
from convnext_pl.training.cli import cli_main


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One of each broken input, written once for the module."""
    root = tmp_path_factory.mktemp("bad_inputs")
    paths = {"root": root, "images": write_image_folder(root / "images", num_classes=3, per_class=4, size=40)}
    flat = root / "flat"  # images with no split or class folders
    flat.mkdir()
    for image in sorted((paths["images"] / "train").rglob("*.JPEG")):
        shutil.copy(image, flat / image.name)
    paths["flat"] = flat
    paths["corrupt"] = root / "corrupt"
    shutil.copytree(paths["images"], paths["corrupt"])
    paths["corrupt_image"] = corrupt_jpeg(sorted((paths["corrupt"] / "train").rglob("*.JPEG"))[0])
    paths["empty"] = root / "empty"
    paths["empty"].mkdir()
    write_cifar(root / "cifar")
    paths["cifar"] = root / "cifar"
    truncate_file(root / "cifar" / "cifar-10-batches-py" / "data_batch_1", 1000)
    paths["bad_yaml"] = root / "bad.yaml"
    paths["bad_yaml"].write_text("model:\n  lr: [0.1\n")
    paths["femto"] = root / "femto.pth"
    torch.save(create_model("convnext_femto", num_classes=10).state_dict(), paths["femto"])
    paths["truncated_ckpt"] = root / "truncated.ckpt"
    torch.save({"state_dict": create_model("convnext_atto").state_dict()}, paths["truncated_ckpt"])
    truncate_file(paths["truncated_ckpt"], 100_000)
    return paths


def _folder_data(root: Path, **extra) -> str:
    init_args = {"root": str(root), "num_classes": 3, "batch_size": 4, "num_workers": 0, "image_size": 32}
    return json.dumps(
        {"class_path": "convnext_pl.data.ImageFolderDataModule", "init_args": {**init_args, **extra}}
    )


def _cifar_data(root: Path) -> str:
    init_args = {"root": str(root), "batch_size": 4, "num_workers": 0}
    return json.dumps({"class_path": "convnext_pl.data.CIFARDataModule", "init_args": init_args})


# name -> (arguments after `--config digits.yaml`, the expected last line of stderr). {name} is filled from files.
CASES = {
    "missing data root": (
        ["--data", lambda f: _folder_data(f["root"] / "nope")],
        "error: data root {root}/nope does not exist; expected {root}/nope/train/<class>/<image> and "
        "{root}/nope/val/<class>/<image>",
    ),
    "wrong folder layout": (
        ["--data", lambda f: _folder_data(f["flat"])],
        "error: split folder {flat}/train is missing; expected {flat}/train/<class>/<image> and "
        "{flat}/val/<class>/<image>",
    ),
    "corrupt image": (
        ["--data", lambda f: _folder_data(f["corrupt"]), *SHORT],
        "error: cannot decode image {corrupt_image} (image file is truncated (3 bytes not processed)); replace or "
        "delete the file, or set data.init_args.skip_corrupt: true to leave unreadable images out",
    ),
    "truncated CIFAR batch": (
        ["--data", lambda f: _cifar_data(f["cifar"])],
        "error: CIFAR-10 file {cifar}/cifar-10-batches-py/data_batch_1 is unusable (it cannot be unpickled: pickle "
        "data was truncated); delete it and set data.init_args.download: true to fetch the data set again",
    ),
    "unknown model name": (
        ["--model.net.init_args.name", "convnext_tinyy"],
        f"error: Unknown model 'convnext_tinyy'. Valid names: {', '.join(list_models())}.",
    ),
    "unknown config key": (
        ["--model.lrr", "0.1"],
        "error: model.init_args.lrr is not an option here; --help lists the options",
    ),
    "class count of model and data disagree": (
        ["--model.net.init_args.num_classes", "7"],
        "error: model.net.init_args.num_classes is 7 but the data has 10 classes; remove num_classes from the "
        "model config (it follows the data).",
    ),
    "pretrained file of another architecture": (
        ["--model.pretrained", lambda f: str(f["femto"]), *SHORT],
        "error: Checkpoint '{femto}' does not fit this ConvNeXt: 'downsample_layers.0.0.weight' has shape "
        "(48, 3, 4, 4) in the file but (40, 3, 2, 2) in the model; build the model variant the checkpoint was "
        "saved from.",
    ),
    "ckpt_path that does not exist": (
        ["--ckpt_path", lambda f: str(f["root"] / "nope.ckpt")],
        "error: --ckpt_path {root}/nope.ckpt does not exist; give a .ckpt file, or 'last' to resume this run",
    ),
    "mixup batch that cannot be split": (
        ["--model.mixup_alpha", "0.8", "--data.init_args.batch_size", "15", *SHORT],
        "error: Mixup/CutMix pairs images within a batch and got an odd batch of 15; use an even "
        "data.init_args.batch_size.",
    ),
    "config file that does not exist": (
        ["--config", lambda f: str(f["root"] / "nope.yaml")],
        "error: --config {root}/nope.yaml does not exist; give the path of a YAML file",
    ),
    "YAML syntax error": (
        ["--config", lambda f: str(f["bad_yaml"])],
        "error: config file {bad_yaml} is not valid YAML (expected ',' or ']', but got '<stream end>' at line 3, "
        "column 1); fix its syntax",
    ),
    "batch larger than the data set": (
        ["--data.init_args.batch_size", "5000"],
        "error: the training split has 1437 images, fewer than one batch of 5000; lower data.init_args.batch_size",
    ),
    "negative worker count": (
        ["--data.init_args.num_workers", "-1", "--data.init_args.batch_size", "64"],
        "error: data.init_args.num_workers: not of type NonNegativeInt: -1 does not conform to restriction v>=0; "
        "--help lists the options",
    ),
    "negative learning rate": (
        ["--model.lr", "-0.1", *SHORT],
        "error: model.init_args.lr: not of type PositiveFloat: -0.1 does not conform to restriction v>0; --help lists the options",
    ),
    "ckpt_path last with no earlier run": (
        ["--ckpt_path", "last", "--run_name", "never_ran"],
        "error: --ckpt_path last found no last.ckpt under {runs}/never_ran/version_*/checkpoints; start the run "
        "without --ckpt_path, or give --run_name / --trainer.default_root_dir of the run to resume",
    ),
    "ckpt_path best in a new process": (
        ["--ckpt_path", "best"],
        "error: --ckpt_path best refers to the best checkpoint of a fit in the same process; pass the path "
        "printed as 'Best checkpoint' when the run ended",
    ),
    "truncated checkpoint": (
        ["--ckpt_path", lambda f: str(f["truncated_ckpt"])],
        "error: checkpoint {truncated_ckpt} is damaged or incomplete (PytorchStreamReader failed reading zip "
        "archive: failed finding central directory); use another checkpoint of the run",
    ),
    "accelerator this machine lacks": (
        ["--trainer.accelerator", "mps"],  # Apple's GPUs: never present where these tests run
        "error: Lightning cannot run these settings: `MPSAccelerator` can not run on your system since the "
        "accelerator is not available. The following accelerator(s) is available and can be passed into "
        "`accelerator` argument of `Trainer`: ['cpu'].",
    ),
}


def _earlier_run(runs: Path) -> dict[Path, str]:
    """Files of an earlier run in the default output folder, and their digests."""
    folder = runs / "digits" / "version_0"
    (folder / "checkpoints").mkdir(parents=True)
    for name, content in {
        "config.yaml": "earlier",
        "metrics.csv": "step\n1\n",
        "checkpoints/last.ckpt": "x",
    }.items():
        (folder / name).write_text(content)
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*") if path.is_file()
    }


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_ends_in_one_line_and_exit_code_2(case, files, tmp_path, capsys):
    extra, expected = CASES[case]
    runs = tmp_path / "runs"
    earlier = _earlier_run(runs)
    args = ["fit", "--config", DIGITS] + [arg(files) if callable(arg) else arg for arg in extra]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args + QUIET + ["--trainer.default_root_dir", str(runs)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    names = {key: value for key, value in files.items()} | {"runs": runs}
    expected = expected.format(**names)
    assert err.strip().splitlines()[-1] == expected
    # Nothing of the earlier run changed (a failed run may have started its own new version folder).
    assert {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in earlier} == earlier


def test_skip_corrupt_leaves_unreadable_images_out_and_says_how_many(files, tmp_path):
    data = _folder_data(files["corrupt"], skip_corrupt=True)
    args = ["fit", "--config", DIGITS, "--data", data, "--trainer.default_root_dir", str(tmp_path)]
    with pytest.warns(
        UserWarning, match=r"skip_corrupt: left out 1 unreadable images of .*train: .*class_00_00000"
    ):
        cli = cli_main(args + QUIET + SHORT)
    assert len(cli.datamodule.train_dataset) == 11 and cli.trainer.global_step == 2


def test_a_run_never_overwrites_the_folder_of_an_earlier_one(tmp_path, capsys):
    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path),
              "--trainer.logger.version", "0"]  # fmt: skip
    args = ["fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp_path)] + QUIET + SHORT
    cli_main(args + logger)
    folder = tmp_path / "lightning_logs" / "version_0"
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    with pytest.raises(SystemExit):
        cli_main(args + logger)  # the same fixed version folder
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {folder}/config.yaml already exists: that folder holds an earlier run, which this one would "
        "overwrite; set another --trainer.default_root_dir or --run_name, or a new logger version"
    )
    with pytest.raises(SystemExit):
        cli_main(args + ["--checkpoint.dirpath", str(folder / "checkpoints")])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: checkpoint.dirpath {folder}/checkpoints already holds checkpoints of an earlier run; choose an "
        "empty folder, or resume that run with --ckpt_path last"
    )
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before


def test_resuming_with_another_network_is_refused_even_with_changed_settings_accepted(tmp_path, capsys):
    # --accept_changed_settings applies the given model values; a network of another shape cannot take the
    # checkpoint's weights, so the resume stops before a step with one line and leaves the run's files as they were.
    args = ["fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp_path)] + QUIET + SHORT
    checkpoint = Path(cli_main(args).trainer.checkpoint_callback.last_model_path)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    line = refused(args + ["--trainer.max_epochs", "2", "--ckpt_path", "last", "--accept_changed_settings=true",
                           "--model.net.init_args.name", "convnext_femto"], capsys, tmp_path)  # fmt: skip
    assert line == (
        f"error: checkpoint {checkpoint} does not fit this classification model: 'net.downsample_layers.0.0.weight' "
        "has shape (40, 3, 2, 2) in the checkpoint but (48, 3, 2, 2) in the model; resume with the model and data "
        "settings it was trained with (the config.yaml of its run)"
    )
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_a_checkpoint_of_another_model_is_refused_naming_the_first_mismatch(tmp_path):
    args = ["fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp_path)] + QUIET + SHORT
    checkpoint = Path(cli_main(args).trainer.checkpoint_callback.last_model_path)
    with pytest.raises(
        UserError, match=r"'net.downsample_layers.0.0.weight' has shape \(40, 3, 2, 2\) in the "
    ):
        ImageClassifier.load_from_checkpoint(checkpoint, net=create_model("convnext_femto", num_classes=10))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing data root", "corrupt image"])
def test_main_py_prints_one_line_and_exits_2(case, files, tmp_path):
    extra, expected = CASES[case]
    runs = tmp_path / "runs"
    args = ["fit", "--config", DIGITS] + [arg(files) if callable(arg) else arg for arg in extra]
    result = run_main([*args, *QUIET, "--trainer.default_root_dir", str(runs)], check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == expected.format(**files, runs=runs)
