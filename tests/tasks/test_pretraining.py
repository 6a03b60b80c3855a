"""FCMAE pre-training through the command line, as `make demo-fcmae` runs it: pre-train on digits (loss per
epoch, the reconstruction picture, a pre-training checkpoint), fine-tune the classifier from that checkpoint, and
the mistakes a user can make on the way."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import CPU, EXPERIMENTS, QUIET, refused, run_main
from PIL import Image

from convnext_pl.tasks.base import TASK_KEY
from convnext_pl.training.cli import cli_main

PRETRAIN = str(EXPERIMENTS / "digits_fcmae.yaml")
FINETUNE = str(EXPERIMENTS / "digits_fcmae_downstream.yaml")
# Two epochs of three batches of 16, two validation batches each: the loss per epoch and a picture per epoch.
FEW_STEPS = [
    "--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
    "--data.init_args.batch_size=16",
    "--trainer.log_every_n_steps=1", "--trainer.num_sanity_val_steps=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """The run folder of ``python main.py fit --config configs/experiment/digits_fcmae.yaml``, shortened."""
    root = tmp_path_factory.mktemp("fcmae")
    run_main(["fit", "--config", PRETRAIN, *FEW_STEPS, *QUIET, *CPU, f"--trainer.default_root_dir={root}"])
    (run,) = (root / "digits_fcmae").iterdir()
    return run


def test_pretraining_logs_the_loss_per_epoch_and_draws_the_reconstructions(pretrained):
    rows = list(csv.DictReader((pretrained / "metrics.csv").open()))
    train = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(train) == len(val) == 2 and all(math.isfinite(v) and v > 0 for v in train + val)
    # One picture per epoch: 8 images per row (digits_fcmae.yaml `reconstructions: 8`), rows original / masked /
    # reconstruction; 24-px digits drawn at 96 px (4x), 2-px padding around each.
    pictures = sorted((pretrained / "reconstructions").glob("epoch*.png"))
    assert [p.name for p in pictures] == ["epoch000.png", "epoch001.png"]
    width, height = Image.open(pictures[-1]).size
    assert (width, height) == (8 * (96 + 2) + 2, 3 * (96 + 2) + 2)


def test_the_pretraining_checkpoint_is_a_pretraining_checkpoint_in_the_fcmae_layout(pretrained):
    checkpoint = torch.load(pretrained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint[TASK_KEY]["task"] == "pre-training"
    keys = checkpoint["state_dict"].keys()
    assert "net.mask_token" in keys and "net.decoder.0.grn.gamma" in keys and "net.pred.weight" in keys
    assert "net.encoder.stages.3.1.pwconv2.weight" in keys and not any(
        k.startswith("net.encoder.head") for k in keys
    )
    best = [p.name for p in (pretrained / "checkpoints").iterdir() if p.name != "last.ckpt"]
    assert len(best) == 1 and best[0].startswith("epoch001-loss_")  # ranked by val/loss, lower is better


def test_finetuning_starts_from_the_pretrained_encoder(pretrained, tmp_path):
    ckpt = pretrained / "checkpoints" / "last.ckpt"
    # No training batch: the network the fit starts from is what it loaded.
    cli = cli_main(
        ["fit", "--config", FINETUNE, f"--model.init_args.pretrained={ckpt}", *QUIET, *CPU,
         "--trainer.max_epochs=1", "--trainer.limit_train_batches=0", "--trainer.limit_val_batches=0",
         f"--trainer.default_root_dir={tmp_path}"]
    )  # fmt: skip
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    encoder = {k.removeprefix("net.encoder."): v for k, v in saved.items() if k.startswith("net.encoder.")}
    state = cli.model.net.state_dict()
    assert encoder and all(torch.equal(state[k], v) for k, v in encoder.items())
    assert set(state) - set(encoder) == {"norm.weight", "norm.bias", "head.weight", "head.bias"}  # new


def test_evaluating_a_classifier_on_pretraining_weights_is_refused(pretrained, capsys, tmp_path):
    ckpt = pretrained / "checkpoints" / "last.ckpt"
    line = refused(
        ["validate", "--config", FINETUNE, f"--model.init_args.pretrained={ckpt}", *QUIET, *CPU,
         f"--trainer.default_root_dir={tmp_path}"],
        capsys, tmp_path,
    )  # fmt: skip
    assert "no classifier" in line or "head" in line, line


def test_resuming_a_classifier_from_the_pretraining_checkpoint_names_both_tasks(pretrained, capsys, tmp_path):
    ckpt = pretrained / "checkpoints" / "last.ckpt"
    line = refused(
        [
            "fit",
            "--config",
            FINETUNE,
            f"--ckpt_path={ckpt}",
            *QUIET,
            *CPU,
            f"--trainer.default_root_dir={tmp_path}",
        ],
        capsys,
        tmp_path,
    )
    assert "pre-training checkpoint" in line and "classification" in line, line


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("--data.init_args.image_size=28", "not a multiple of the FCMAE mask patch 8"),
        ("--data.init_args.image_size=8", "leaves none visible"),
        ("--model.init_args.net.init_args.mask_ratio=1.0", "mask_ratio"),
        ("--model.init_args.min_lr=1.0", "min_lr"),
    ],
)
def test_pretraining_settings_out_of_range_are_refused(option, expected, capsys, tmp_path):
    line = refused(
        ["fit", "--config", PRETRAIN, option, *QUIET, *CPU, f"--trainer.default_root_dir={tmp_path}"],
        capsys,
        tmp_path,
    )
    assert expected in line, line


def test_a_classifier_network_is_refused_as_the_pretraining_network(capsys, tmp_path):
    line = refused(
        ["fit", "--config", PRETRAIN, "--model.init_args.net=convnext_pl.models.create_model",
         "--model.init_args.net.init_args.name=convnextv2_atto", *QUIET, *CPU,
         f"--trainer.default_root_dir={tmp_path}"],
        capsys, tmp_path,
    )  # fmt: skip
    assert "FCMAE network" in line, line


@pytest.mark.slow
def test_pretraining_shards_with_fsdp2_on_two_processes_and_the_ranks_agree(tmp_path):
    # configs/trainer/fsdp2.yaml on 2 CPU processes (gloo): the encoder's blocks are the FSDP2 units, the FCMAE
    # network the root; the validation loss on the fixed masks is reduced over both ranks.
    folder = tmp_path / "reports"
    folder.mkdir()
    run_main(
        ["fit", "--config", PRETRAIN, "--config", "configs/trainer/fsdp2.yaml", *QUIET,
         "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true",
         "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
         "--trainer.num_sanity_val_steps=0", "--data.init_args.batch_size=16",
         "--trainer.callbacks+=test_strategies.RankReport", f"--trainer.callbacks.folder={folder}",
         f"--trainer.default_root_dir={tmp_path}"],
        timeout=300,
    )  # fmt: skip
    reports = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert {r["net_class"] for r in reports} == {"FSDPFCMAE"}
    assert all(r["local_params"] < r["total_params"] for r in reports)  # each rank holds a shard
    assert reports[0]["metrics"] == reports[1]["metrics"] and "val/loss" in reports[0]["metrics"]
    assert (tmp_path / "digits_fcmae" / "version_0" / "reconstructions" / "epoch000.png").is_file()


def test_pretraining_trains_in_bf16_mixed_precision(tmp_path):
    # bf16 autocast runs on the CPU too: the loss is computed in float32 from the bf16 prediction.
    cli = cli_main(
        ["fit", "--config", PRETRAIN, *QUIET, *CPU, "--trainer.precision=bf16-mixed", "--trainer.max_epochs=1",
         "--data.init_args.batch_size=8", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2", "--trainer.num_sanity_val_steps=0",
         f"--trainer.default_root_dir={tmp_path}"]
    )  # fmt: skip
    loss = cli.trainer.callback_metrics["val/loss"]
    assert loss.dtype == torch.float32 and math.isfinite(float(loss))
