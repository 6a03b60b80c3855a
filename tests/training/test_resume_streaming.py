"""Exact resume on shards: a run reading shards in shard order, killed (SIGKILL) mid-epoch and resumed with
``--ckpt_path last`` through ``main.py``, ends bit-identical to an uninterrupted run: one process on local shards
with 2 loader workers, and 2-process DDP (gloo) reading from a bucket of a real S3-compatible server on 127.0.0.1
through the bounded cache. What makes it so: the order is a function of (seed, epoch, rank), the loader's position
is in every checkpoint and each sample is augmented under its own seed (``data/streaming/sampler.py``)."""

import warnings
from pathlib import Path

import pytest
import torch
from helpers import EXPERIMENTS, QUIET, max_difference, run_main

from convnext_pl.data.classification.synthetic_files import write_digits_folder
from convnext_pl.data.streaming.__main__ import main as streaming_main
from convnext_pl.training.cli import cli_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# configs/experiment/digits_streaming.yaml, 2 epochs of 4 batches of 16 in windows of 48 samples (shards of ~40
# images), last.ckpt every 3 steps: step 6 is two batches into epoch 1. The recipe's crop and flip are on.
RUN = [
    "fit", "--config", str(EXPERIMENTS / "digits_streaming.yaml"), *QUIET, "--seed_everything", "0",
    "--data.init_args.batch_size=16", "--data.init_args.shuffle_window=48",
    "--trainer.max_epochs=2", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2",
    "--trainer.check_val_every_n_epoch=2", "--trainer.num_sanity_val_steps=0",
    "--checkpoint.every_n_train_steps=3", "--model.net.init_args.drop_path_rate=0.1",
]  # fmt: skip
TOTAL_STEPS, KILL_AT, SAVED_AT = 8, 7, 6
KILL = ["--trainer.callbacks+=helpers.callbacks.SignalAtStep", f"--trainer.callbacks.step={KILL_AT}"]
DDP = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=2",
    "--trainer.strategy=ddp",
    "--trainer.precision=32-true",
]
SHARD_MB = "0.03"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("digits") / "images")


def _last(runs: Path, version: int) -> dict:
    path = runs / "digits_streaming" / f"version_{version}" / "checkpoints" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)


def _kill_and_resume(args: list[str], runs: Path, env: dict | None = None) -> dict:
    """Kill the run at step 7, check what it left, resume it; returns the resumed run's last checkpoint. One
    process resumes in this one (cli_main, what main.py calls: a fresh interpreter costs ~10 s of imports), two
    through main.py (Lightning starts the second process by running the command again)."""
    command = [*args, f"--trainer.default_root_dir={runs}"]
    killed = run_main(command + KILL, env=env, timeout=300, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert _last(runs, 0)["global_step"] == SAVED_AT
    if env is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli_main([*command, "--ckpt_path", "last"])
        warned = " ".join(str(w.message) for w in caught)
    else:
        resumed = run_main([*command, "--ckpt_path", "last"], env=env, timeout=300, check=False)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        warned = resumed.stderr
    assert "not resumable" not in warned  # Lightning's warning about loaders that restart the epoch
    return _last(runs, 1)


def _assert_same(final: dict, reference: dict) -> None:
    assert final["global_step"] == reference["global_step"] == TOTAL_STEPS
    difference, where = max_difference(final, reference)
    assert difference == 0, f"max |resumed - uninterrupted| = {difference:.3g}, in {where}"
    assert final["lr_schedulers"] == reference["lr_schedulers"]


@pytest.mark.slow
def test_a_run_on_local_shards_killed_mid_epoch_and_resumed_ends_bit_identical(digits, tmp_path):
    shards = tmp_path / "shards"
    streaming_main(
        ["write", "--src", str(digits), "--out", str(shards), "--shard-size-mb", SHARD_MB, "--no-progress"]
    )
    args = [*RUN, f"--data.init_args.root={shards}"]
    cli_main(
        [*args, f"--trainer.default_root_dir={tmp_path / 'straight'}"]
    )  # in-process, one thread as the children
    final = _kill_and_resume([*args, "--data.init_args.num_workers=2"], tmp_path / "killed")
    _assert_same(final, _last(tmp_path / "straight", 0))


@pytest.mark.slow
def test_a_2_process_ddp_run_from_s3_killed_mid_epoch_and_resumed_ends_bit_identical(digits, s3, tmp_path):
    s3.bucket("shards")
    streaming_main(["write", "--src", str(digits), "--out", "s3://shards/digits", "--shard-size-mb", SHARD_MB,
                    "--no-progress"])  # fmt: skip
    args = [*RUN, *DDP, "--data.init_args.root=s3://shards/digits",
            f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--data.init_args.cache_limit_gb=0.001"]  # fmt: skip
    straight = run_main(
        [*args, f"--trainer.default_root_dir={tmp_path / 'straight'}"], env=s3.env, timeout=300
    )
    assert straight.returncode == 0
    final = _kill_and_resume(args, tmp_path / "killed", env=s3.env)
    _assert_same(final, _last(tmp_path / "straight", 0))
