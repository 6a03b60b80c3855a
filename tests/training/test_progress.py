"""Progress on a stdout that is not a terminal: periodic plain lines, no tqdm redraws, no known noise; on a
terminal, tqdm's bar reading its numbers at log intervals."""

import json
import sys

import pytest
from helpers import DIGITS, atto_classifier, quiet_trainer, run_main, synthetic_data

from convnext_pl.training.cli import cli_main
from convnext_pl.training.progress import LogLineProgress, TerminalProgress


@pytest.mark.parametrize("terminal, bar", [(True, TerminalProgress), (False, LogLineProgress)])
def test_the_command_line_picks_the_bar_for_where_stdout_goes(terminal, bar, tmp_path, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    cli = cli_main(["--config", DIGITS, f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert type(cli.trainer.progress_bar_callback) is bar


def test_a_line_every_n_steps_with_step_loss_lr_and_throughput(tmp_path, capsys):
    trainer = quiet_trainer(tmp_path, enable_progress_bar=True, callbacks=[LogLineProgress(2, 1e9)])
    trainer.fit(atto_classifier(lr=1e-3), datamodule=synthetic_data(train_size=48, batch_size=8))  # 6 steps
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if "  step " in line]
    assert [line.split("  step ")[1].split()[0] for line in steps] == ["2/6", "4/6", "6/6"]
    assert all(" loss " in line and " lr " in line and line.endswith(" img/s") for line in steps)
    assert any(line.startswith("epoch 1/") and "val/acc1" in line for line in lines)  # after validation


def test_main_py_in_a_pipe_prints_lines_not_bar_redraws_and_no_known_noise(tmp_path):
    data = {
        "class_path": "convnext_pl.data.SyntheticDataModule",
        "init_args": {"num_classes": 10, "image_size": 16, "train_size": 64, "val_size": 16, "batch_size": 8},
    }
    args = ["fit", "--config", DIGITS, "--data", json.dumps(data), "--trainer.max_epochs=1"]
    result = run_main(args + [f"--trainer.default_root_dir={tmp_path}"])  # stdout is a pipe
    output = result.stdout + result.stderr
    assert "\r" not in output  # no tqdm redraws
    assert len(output.splitlines()) < 60, output
    assert sum(line.startswith("epoch ") and "val/acc1" in line for line in output.splitlines()) == 1
    for noise in ("No seed found", "Tip:", "is deprecated", "Total Flops\n0"):
        assert noise not in output
    flops = next(line for line in output.splitlines() if line.endswith("Total Flops"))
    assert float(flops.split()[0]) > 0  # the summary's FLOPs are the network's, not 0


def test_images_per_batch_counts_detection_lists_and_tensors_not_colour_channels():
    import torch

    from convnext_pl.training.progress import images_in

    detection = ([torch.zeros(3, 40, 50) for _ in range(4)], [{"boxes": torch.zeros(0, 4)} for _ in range(4)])
    assert images_in(detection) == 4
    assert images_in((torch.zeros(5, 3, 8, 8), torch.zeros(5))) == 5
    assert images_in({"image": torch.zeros(6, 3, 8, 8)}) == 6
