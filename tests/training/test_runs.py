"""The run-folder policy (convnext_pl.training.runs) as plain functions, and as a user meets it through the CLI."""

import os

import pytest
from helpers import CPU, DIGITS, QUIET
from jsonargparse import Namespace

from convnext_pl.errors import UserError
from convnext_pl.training import runs
from convnext_pl.training.cli import cli_main


def _config(**overrides) -> Namespace:
    return Namespace({"config": ["configs/experiment/digits.yaml"], "run_name": None, **overrides})


def test_the_run_name_is_the_first_config_files_name_or_the_option():
    assert runs.run_name(_config()) == "digits"
    assert runs.run_name(_config(run_name="ablation_7")) == "ablation_7"
    assert runs.run_name(Namespace(config=None, run_name=None)) == "default"


@pytest.mark.parametrize("name", ["../../elsewhere", "a/b", "..", "/abs", "a\\b"])
def test_a_run_name_that_is_a_path_is_refused(name):
    with pytest.raises(UserError, match="is not a plain name"):
        runs.run_name(_config(run_name=name))


def test_a_root_folder_that_can_be_created_passes_and_nothing_is_created(tmp_path):
    runs.check_root_dir(tmp_path / "new" / "runs")
    assert list(tmp_path.iterdir()) == []


def test_a_root_folder_below_a_file_or_in_an_unwritable_place_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile is a file"):
        runs.check_root_dir(tmp_path / "afile" / "runs")
    with pytest.raises(UserError, match="cannot be created or written"):
        runs.check_root_dir(runs.Path("/proc/runs"))


def test_ckpt_path_last_is_the_newest_last_checkpoint_and_best_or_missing_are_refused(tmp_path):
    older, newer = (tmp_path / "digits" / f"version_{i}" / "checkpoints" / "last.ckpt" for i in (0, 1))
    for number, path in enumerate((older, newer)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1000 + number, 1000 + number))
    assert runs.resolve_ckpt_path("last", tmp_path, "digits", None) == str(newer)
    assert runs.resolve_ckpt_path(str(older), tmp_path, "digits", None) == str(older)
    assert runs.resolve_ckpt_path(None, tmp_path, "digits", None) is None
    with pytest.raises(UserError, match="found no last.ckpt"):
        runs.resolve_ckpt_path("last", tmp_path, "other", None)
    with pytest.raises(UserError, match="best refers to"):
        runs.resolve_ckpt_path("best", tmp_path, "digits", None)
    with pytest.raises(UserError, match="does not exist"):
        runs.resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path, "digits", None)


def test_an_earlier_runs_folders_are_not_written_into(tmp_path):
    (tmp_path / "epoch3.ckpt").write_bytes(b"x")
    with pytest.raises(UserError, match="already holds checkpoints"):
        runs.refuse_a_used_checkpoint_folder("fit", str(tmp_path), None)
    runs.refuse_a_used_checkpoint_folder("fit", str(tmp_path), str(tmp_path / "epoch3.ckpt"))  # a resume
    (tmp_path / "config.yaml").write_text("x")
    with pytest.raises(UserError, match="holds an earlier run"):
        runs.refuse_an_earlier_runs_folder(tmp_path)


def test_evaluating_needs_trained_weights_unless_untrained_is_asked_for():
    untrained = {"class_path": "convnext_pl.ImageClassifier", "init_args": {"pretrained": None}}
    # A dense task's ImageNet backbone leaves its heads random: not trained weights of the task.
    backbone_only = {"init_args": {"pretrained": None, "pretrained_backbone": "convnext_tiny.in1k"}}
    whole = {"init_args": {"pretrained": "upernet_convnext_tiny.ade20k_160k"}}
    for subcommand in runs.EVALUATING:
        with pytest.raises(UserError, match=f"{subcommand} needs trained weights"):
            runs.check_trained_weights(subcommand, None, Namespace(untrained), allow_untrained=False)
        assert runs.check_trained_weights(subcommand, None, Namespace(untrained), allow_untrained=True)
        assert not runs.check_trained_weights(subcommand, "run.ckpt", untrained, allow_untrained=False)
        assert not runs.check_trained_weights(subcommand, None, whole, allow_untrained=False)
        with pytest.raises(UserError, match="pretrained_backbone leaves its heads random"):
            runs.check_trained_weights(subcommand, None, backbone_only, allow_untrained=False)
    assert not runs.check_trained_weights("fit", None, untrained, allow_untrained=False)


def _fails_in_one_line(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]
    return lines[-1]


@pytest.mark.parametrize("subcommand", runs.EVALUATING)
def test_cli_refuses_to_evaluate_random_weights_before_any_folder_exists(subcommand, tmp_path, capsys):
    line = _fails_in_one_line(
        [subcommand, "--config", DIGITS, f"--trainer.default_root_dir={tmp_path}"], capsys
    )
    assert line.startswith(f"error: {subcommand} needs trained weights: give --ckpt_path")
    assert list(tmp_path.iterdir()) == []


def test_cli_evaluates_an_untrained_network_when_asked_and_says_so(tmp_path):
    args = [
        "validate",
        "--config",
        DIGITS,
        "--allow_untrained=true",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    with pytest.warns(UserWarning, match="validate on an untrained, randomly initialised network"):
        cli = cli_main(args + ["--trainer.limit_val_batches=1", *CPU, *QUIET])
    assert "val/acc1" in cli.trainer.callback_metrics


def test_cli_refuses_a_run_name_that_leaves_the_root_folder(tmp_path, capsys):
    root = tmp_path / "runs"
    line = _fails_in_one_line(["fit", "--config", DIGITS, "--run_name=../../elsewhere", f"--trainer.default_root_dir={root}"], capsys)  # fmt: skip
    assert line.startswith("error: --run_name '../../elsewhere' is not a plain name")
    assert list(tmp_path.iterdir()) == []


def test_remove_an_empty_run_folder_removes_only_folders_without_files(tmp_path):
    (tmp_path / "runs" / "digits" / "version_0" / "checkpoints").mkdir(parents=True)
    runs.remove_an_empty_run_folder(tmp_path / "runs" / "digits" / "version_0")
    assert list((tmp_path / "runs").iterdir()) == []  # version_0 and the run name's folder: nothing in them
    kept = tmp_path / "runs" / "digits" / "version_1" / "config.yaml"
    kept.parent.mkdir(parents=True)
    kept.write_text("a file")
    runs.remove_an_empty_run_folder(kept.parent)
    assert kept.read_text() == "a file"


def test_a_run_refused_after_the_trainer_is_built_removes_the_root_folders_it_made(tmp_path, capsys):
    """A mistake found in set-up (here a weights file that does not exist): the loggers had made
    ``<root>/<run_name>/version_0``; the refused run removes it and ``<root>`` and its parents it created too,
    while a folder that was there before stays."""
    root = tmp_path / "new" / "runs"
    missing = tmp_path / "absent.ckpt"
    args = ["fit", "--config", DIGITS, f"--model.init_args.pretrained={missing}", f"--trainer.default_root_dir={root}"]  # fmt: skip
    line = _fails_in_one_line([*args, *CPU, *QUIET], capsys)
    assert str(missing) in line
    assert list(tmp_path.iterdir()) == []
