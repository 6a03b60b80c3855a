"""Failures during training: checkpoint writes a kill cannot corrupt, a loss that stops being a number, and a DDP
rank that raises."""

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import DIGITS, QUIET, run_main
from helpers.callbacks import PoisonBatches, PoisonGradients

from convnext_pl.training import checkpoint_io
from convnext_pl.training.checkpoint_io import PARTIAL_PREFIX, AtomicCheckpointIO
from convnext_pl.training.cli import cli_main
from convnext_pl.training.guards import NonFiniteLossGuard

# One digits epoch of 5 batches of 16: the run the loss-guard tests poison.
FIT = [
    "fit", "--config", DIGITS, "--seed_everything", "0", "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "1", "--data.init_args.batch_size", "16",
    *QUIET,
]  # fmt: skip


def _checkpoint(value: float) -> dict:
    # Large enough (16 MB) that a write takes a while, so kills land in the middle of one.
    return {"state_dict": {"w": torch.full((4_000_000,), value)}, "global_step": int(value)}


def _saved_value(path: Path) -> float:
    return torch.load(path, weights_only=True)["state_dict"]["w"][-1].item()


def test_an_interrupted_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io, target = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_checkpoint(1.0), target)

    def half_then_fail(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # what Ctrl+C in the middle of torch.save raises

    monkeypatch.setattr(checkpoint_io.torch, "save", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(_checkpoint(2.0), target)
    assert _saved_value(target) == 1.0
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # the partial file is gone too


def _save_forever(path: str, saving) -> None:
    io, value = AtomicCheckpointIO(), 0.0
    while True:
        value += 1.0
        io.save_checkpoint(_checkpoint(value), path)
        saving.set()  # the parent kills only once this process is saving


def test_sigkill_during_saves_never_leaves_an_unreadable_checkpoint(tmp_path):
    target, killed_mid_write = tmp_path / "last.ckpt", 0
    # A plain fork of this multi-threaded process (torch's thread pools) can deadlock in the child. The fork server
    # is a fresh single-threaded process that imports torch and this module once, so its forks are safe and fast.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", _save_forever.__module__])
    for attempt in range(
        60
    ):  # until 3 kills have landed in the middle of a write (about every other one does)
        saving = context.Event()
        child = context.Process(target=_save_forever, args=(str(target), saving))
        child.start()
        if not saving.wait(timeout=60):  # a stuck child fails the test instead of hanging the suite
            child.kill()
            pytest.fail("the saving child process wrote nothing within 60 s")
        time.sleep(0.03 * (attempt % 5))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert _saved_value(target) >= 1.0  # a complete checkpoint, whichever one
        partial = list(tmp_path.glob(f"{PARTIAL_PREFIX}*"))
        # Lightning's ckpt_path="last" would take any name containing "last", a partial one included.
        assert all("last" not in p.name for p in partial)
        killed_mid_write += bool(partial)
        for p in partial:
            p.unlink()
        if killed_mid_write == 3:
            break
    assert killed_mid_write == 3


def _poisoned(steps: list[int], *extra: str) -> list[str]:
    return FIT + ["--trainer.callbacks+=helpers.callbacks.PoisonBatches", "--trainer.callbacks.steps",
                    str(steps), *extra]  # fmt: skip


def test_a_nan_loss_stops_the_run_naming_the_step_and_the_likely_causes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(_poisoned([2], "--trainer.default_root_dir", str(tmp_path)))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: train/loss is nan at step 2 (epoch 0, batch 2): training diverged; lower model.lr "
        "(mind lr_reference_batch and the warm-up), train in precision 32-true or bf16-mixed rather than "
        "16-mixed, or set --nonfinite_loss.action skip to skip such steps"
    )


def test_skip_drops_the_bad_step_and_training_goes_on(tmp_path):
    args = _poisoned([2], "--nonfinite_loss.action", "skip", "--trainer.default_root_dir", str(tmp_path))
    with pytest.warns(UserWarning, match=r"train/loss is nan at step 2 .*skipped this optimizer step"):
        cli = cli_main(args)
    poison = next(c for c in cli.trainer.callbacks if isinstance(c, PoisonBatches))
    guard = next(c for c in cli.trainer.callbacks if isinstance(c, NonFiniteLossGuard))
    sums = poison.weight_sums
    assert sums[3] == sums[2] and sums[2] != sums[1] and sums[4] != sums[3]  # only step 2 left no update
    assert cli.trainer.global_step == 5 and guard.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


def test_skip_still_stops_a_run_that_keeps_diverging(tmp_path, capsys):
    args = _poisoned(
        [1, 2, 3], "--nonfinite_loss.action", "skip", "--nonfinite_loss.max_consecutive_skips", "2"
    )
    with pytest.raises(SystemExit), pytest.warns(UserWarning):
        cli_main(args + ["--trainer.default_root_dir", str(tmp_path)])
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith(
        "error: train/loss is nan at step 3 (epoch 0, batch 3), 3 non-finite steps in a row"
    )


def test_a_non_finite_gradient_of_a_finite_loss_changes_the_weights_only_without_the_gradient_check(tmp_path):
    args = [*FIT, "--trainer.callbacks+=helpers.callbacks.PoisonGradients", "--trainer.callbacks.steps", "[2]",
            "--nonfinite_loss.action", "skip"]  # fmt: skip
    with pytest.warns(
        UserWarning, match=r"a gradient is not finite at step 2 \(epoch 0, batch 2; train/loss \d"
    ):
        checked = cli_main([*args, "--nonfinite_loss.check_gradients", "true",
                            "--trainer.default_root_dir", str(tmp_path / "checked")])  # fmt: skip
    sums = next(c for c in checked.trainer.callbacks if isinstance(c, PoisonGradients)).weight_sums
    assert sums[3] == sums[2] and sums[2] != sums[1] and sums[4] != sums[3]  # only step 2 left no update
    assert all(torch.isfinite(p).all() for p in checked.model.parameters())

    # The default on one process: the loss alone decides, the infinite gradient reaches the weights.
    unchecked = cli_main([*args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                          "--trainer.default_root_dir", str(tmp_path / "default")])  # fmt: skip
    assert not all(torch.isfinite(p).all() for p in unchecked.model.parameters())


@pytest.mark.slow
def test_a_nan_loss_on_one_ddp_rank_is_skipped_by_every_rank(tmp_path):
    # The ranks' losses differ; the averaged gradients, which every rank checks on more than one process, do not.
    root = tmp_path / "ddp"
    result = run_main(
        [*FIT, "--trainer.default_root_dir", str(root), "--nonfinite_loss.action", "skip",
         "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
         "--trainer.callbacks+=helpers.callbacks.PoisonBatches", "--trainer.callbacks.steps", "[2]",
         "--trainer.callbacks.rank", "1"],
    )  # fmt: skip
    # Rank 0's loss was finite, its averaged gradients were not; the counters, reduced over the ranks, name rank
    # 1's loss, and rank 0 reports it once.
    assert (
        result.stderr.count("train/loss is nan at step 2 (epoch 0, batch 2): skipped this optimizer step")
        == 1
    )
    last = torch.load(next(root.rglob("last.ckpt")), weights_only=False, map_location="cpu")
    assert last["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    guard = next(v for k, v in last["callbacks"].items() if k.startswith("NonFiniteLossGuard"))
    assert guard == {"skipped_steps": 1}


@pytest.mark.slow
def test_a_rank_that_raises_ends_the_whole_ddp_job_quickly(tmp_path):
    stamp = tmp_path / "failed_at"
    result = run_main(
        [*FIT, "--trainer.default_root_dir", str(tmp_path),
         "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
         "--trainer.callbacks+=helpers.callbacks.RaiseOnRank", "--trainer.callbacks.rank", "1",
         "--trainer.callbacks.step", "2", "--trainer.callbacks.stamp_file", str(stamp)],
        check=False,
    )  # fmt: skip
    ended = time.time()
    assert result.returncode != 0
    assert "test failure on rank 1 at step 2" in result.stderr
    # Rank 0 learns of it at its next collective (the gradient all-reduce) and stops too; nothing hangs.
    assert ended - float(stamp.read_text()) < 60
