"""The roadmap ladder: ``python -m convnext_pl.roadmap train`` trains the chosen steps through the project's CLI
with one recipe and writes the measured table and chart."""

import csv

import pytest
import yaml
from helpers import DIGITS

from convnext_pl.errors import UserError
from convnext_pl.roadmap.cli import build_parser, main
from convnext_pl.roadmap.ladder import LADDER_COLUMNS, step_names
from convnext_pl.roadmap.steps import MAIN_STEPS, create_roadmap_model


def test_steps_are_chosen_by_number_or_name():
    assert step_names(None) == MAIN_STEPS
    assert step_names(["0", "5", "roadmap_08_kernel5"]) == [
        "roadmap_00_resnet50",
        "roadmap_05_width",
        "roadmap_08_kernel5",
    ]
    with pytest.raises(UserError, match="Unknown roadmap step '14'"):
        step_names(["14"])


def test_unknown_train_options_are_passed_through_to_the_cli():
    argv = [
        "train",
        "--config",
        "x.yaml",
        "--epochs",
        "2",
        "--steps",
        "0",
        "13",
        "--trainer.limit_train_batches",
        "2",
    ]
    args, extra = build_parser().parse_known_args(argv)
    assert (args.command, args.config, args.epochs, args.steps) == ("train", "x.yaml", 2, ["0", "13"])
    assert extra == ["--trainer.limit_train_batches", "2"]


def test_ladder_trains_two_steps_and_writes_the_results(tmp_path, capsys, one_torch_thread):
    ladder = ["train", "--config", str(DIGITS), "--epochs", "1", "--steps", "0", "13", "--out", str(tmp_path)]
    ladder += ["--width-multiplier", "0.25", "--threads", "1"]  # one thread: 10x faster beside other jobs
    cli_options = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    main(ladder + cli_options + ["--trainer.enable_progress_bar", "false"])
    with open(tmp_path / "ladder.csv") as f:
        assert f.readline().strip() == ",".join(LADDER_COLUMNS)
        f.seek(0)
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["roadmap_00_resnet50", "roadmap_13_convnext_tiny"]
    for row in rows:
        # The trained network is the step at a quarter width, 10 digit classes and the experiment's patch_size 2.
        expected = create_roadmap_model(row["name"], num_classes=10, width_multiplier=0.25, patch_size=2)
        assert int(row["params"]) == sum(p.numel() for p in expected.parameters())
        assert (
            0 <= float(row["top1"]) <= 100 and float(row["train_img_per_s"]) > 0 and float(row["gflops"]) > 0
        )
        config = yaml.safe_load(next((tmp_path / row["name"]).glob("version_*/config.yaml")).read_text())
        assert (
            config["model"]["init_args"]["net"]["init_args"]["name"] == row["name"]
        )  # the saved config reproduces the run
        assert config["trainer"]["limit_train_batches"] == 2  # extra options reached the CLI
    assert "| 13 | roadmap_13_convnext_tiny |" in (tmp_path / "ladder.md").read_text()
    assert (tmp_path / "ladder.png").read_bytes()[:4] == b"\x89PNG"
    assert "2 steps in" in capsys.readouterr().out
