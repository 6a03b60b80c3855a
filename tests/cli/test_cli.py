"""The command line as users drive it: every config instantiates, every experiment trains, the demo runs."""

import json
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, CPU, DIGITS, EXPERIMENTS, QUIET

from convnext_pl.training.cli import ConvNeXtCLI, cli_main

# Classification experiments; the dense-prediction tasks (segmentation, detection) drive their own configs in
# their test files (GPU recipes parsed, the synthetic ones trained), since these tests swap in classification data.
EXPERIMENT_FILES = sorted(
    p for p in EXPERIMENTS.glob("*.yaml") if "class_path: convnext_pl.ImageClassifier" in p.read_text()
)
SYNTHETIC = json.dumps(
    {
        "class_path": "convnext_pl.data.SyntheticDataModule",
        "init_args": {"num_classes": 10, "image_size": 32, "train_size": 64, "val_size": 8, "batch_size": 4},
    }
)


class _ParseOnly(ConvNeXtCLI):
    """Parses and type-checks a config without building anything (for pieces that need a GPU)."""

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand) -> None:
        pass


def _needs_gpu(path: Path) -> bool:
    return "accelerator: gpu" in path.read_text()


@pytest.mark.parametrize("experiment", EXPERIMENT_FILES, ids=lambda p: p.stem)
def test_every_experiment_config_instantiates(experiment, tmp_path):
    cli = cli_main(["--config", str(experiment), "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.model.num_classes == cli.datamodule.num_classes  # the class count flowed from the data


@pytest.mark.parametrize("experiment", EXPERIMENT_FILES, ids=lambda p: p.stem)
def test_every_experiment_trains_two_steps_and_validates_on_synthetic_data(experiment, tmp_path):
    """The experiment's recipe (Mixup, EMA, layer decay, accumulation ...) on a shrunk model and synthetic data."""
    cli = cli_main(
        [
            "fit",
            "--config",
            str(experiment),
            "--data",
            SYNTHETIC,
            "--model.net.init_args.name",
            "convnext_atto",
            # The fine-tuning experiments name released weights of their full-size network, which the shrunk
            # network cannot take (tests/weights/test_pretrained_configs.py checks those names and architectures).
            "--model.pretrained",
            "null",
        ]
        + ["--model.channels_last", "false", "--model.compile", "false"]
        + [
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "2",
            "--trainer.limit_val_batches",
            "1",
        ]
        + ["--trainer.precision", "32-true", "--trainer.default_root_dir", str(tmp_path)]
        + CPU
        + QUIET
    )
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


@pytest.mark.parametrize("model", sorted((CONFIGS / "model").glob("convnext_*.yaml")), ids=lambda p: p.stem)
def test_every_model_config_instantiates_with_the_digits_experiment(model, tmp_path):
    cli = cli_main(
        ["--config", DIGITS, "--model.net", str(model), "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )
    assert cli.model.net.num_classes == 10
    assert cli.model.hparams.net["init_args"]["name"] == model.stem


@pytest.mark.parametrize("data", sorted((CONFIGS / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_data_config_instantiates_without_touching_the_disk(data, tmp_path):
    cli = cli_main(
        ["--config", DIGITS, "--data", str(data), "--trainer.default_root_dir", str(tmp_path)], run=False
    )
    assert cli.model.net.num_classes == cli.datamodule.num_classes


@pytest.mark.parametrize("trainer", sorted((CONFIGS / "trainer").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_trainer_config_composes_with_an_experiment(trainer, tmp_path, monkeypatch):
    args = ["--config", DIGITS, "--config", str(trainer), "--trainer.default_root_dir", str(tmp_path)]
    if _needs_gpu(trainer) and not torch.cuda.is_available():
        # Parse and type-check only: building it needs a GPU, and the CLI's refusal of a GPU piece on this machine
        # (one error: line, tests/training/test_trainer_pieces.py) is set aside so the composition itself is checked.
        monkeypatch.setattr(
            "convnext_pl.training.cli.refuse_what_this_machine_cannot_run", lambda trainer: None
        )
        cli = _ParseOnly(args=args, run=False)
        assert cli.config.trainer.accelerator == "gpu"
    else:
        cli = cli_main(args, run=False)
        assert cli.trainer is not None


def test_model_num_classes_that_contradicts_the_data_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--config", DIGITS, "--model.net.init_args.num_classes", "7"], run=False)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: model.net.init_args.num_classes is 7 but the data has 10 classes")


def test_print_config_shows_the_resolved_class_count(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", DIGITS, "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "name: convnext_atto" in out and "class_path: convnext_pl.data.DigitsDataModule" in out


def test_runs_go_to_a_new_version_folder_and_keep_the_resolved_config(tmp_path):
    args = ["fit", "--config", DIGITS, "--data", SYNTHETIC, "--trainer.max_steps", "1"]
    args += ["--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path)] + QUIET
    first, second = cli_main(args), cli_main(args)
    assert Path(first.trainer.log_dir) == tmp_path / "digits" / "version_0"
    assert Path(second.trainer.log_dir) == tmp_path / "digits" / "version_1"
    saved = Path(first.trainer.log_dir) / "config.yaml"
    assert "convnext_pl.data.SyntheticDataModule" in saved.read_text()
    # The saved config reproduces the run: it parses back into the same model and data.
    again = _ParseOnly(args=["fit", "--config", str(saved)])
    assert again.config.fit.model.init_args.net.as_dict() == first.model.hparams.net


@pytest.mark.slow
def test_main_py_trains_the_digits_demo_and_reports_where_things_went(demo_run):
    """What `make demo` runs (the session's one demo run, conftest.demo_run)."""
    root, result = demo_run
    assert "val/acc1" in result.stdout
    assert f"Last checkpoint:  {root}/digits/version_0/checkpoints/last.ckpt" in result.stdout
    assert (root / "digits" / "version_0" / "metrics.csv").exists()
