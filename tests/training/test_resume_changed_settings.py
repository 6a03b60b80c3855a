"""A ``--ckpt_path`` resume with another effective batch, lr, schedule length or data than the checkpoint's is one
``error:`` line naming what changed, unless ``--accept_changed_settings true`` continues the checkpoint's lr
schedule; an unchanged resume, and a checkpoint written before the settings were stored, resume as before."""

import logging
import shutil

import pytest
import torch
from helpers import DIGITS, QUIET

from convnext_pl.errors import UserError
from convnext_pl.training.cli import cli_main
from convnext_pl.training.resume import SCHEDULE_SETTINGS_KEY, refuse_changed_settings

# Two epochs of 2 optimizer steps; the epoch-0 checkpoint (step 2 of 4) is the one every test resumes.
RUN = ["fit", "--config", DIGITS, *QUIET, "--trainer.max_epochs=2", "--trainer.limit_train_batches=2"]
RUN += ["--trainer.limit_val_batches=1", "--data.init_args.num_workers=0", "--data.init_args.batch_size=16"]
RUN += ["--checkpoint.monitor=epoch", "--checkpoint.mode=min", "--checkpoint.filename=best-epoch{epoch}"]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def epoch0_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("first")
    cli_main([*RUN, "--trainer.default_root_dir", str(root)])
    path = root / "digits" / "version_0" / "checkpoints" / "best-epoch0.ckpt"
    assert _load(path)["global_step"] == 2
    return path


def _resume(tmp_path, checkpoint, *changes):
    return cli_main(
        [*RUN, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(checkpoint), *changes]
    )


def test_the_checkpoint_stores_what_its_schedule_was_built_from(epoch0_checkpoint):
    settings = _load(epoch0_checkpoint)[SCHEDULE_SETTINGS_KEY]
    assert settings["effective_batch_size"] == 16 and settings["total_steps"] == 4
    assert settings["warmup_steps"] == 2 and settings["peak_lr"] == pytest.approx(3e-3)
    assert settings["data_class"] == "DigitsDataModule"


def test_resuming_with_another_batch_size_is_refused_in_one_line_naming_the_change(
    tmp_path, capsys, epoch0_checkpoint
):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _resume(tmp_path, epoch0_checkpoint, "--data.init_args.batch_size", "32")
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert f"resuming {epoch0_checkpoint} with changed settings: effective batch 16 -> 32;" in errors[0]
    assert "--accept_changed_settings true" in errors[0]
    assert (
        list(tmp_path.iterdir()) == []
    )  # refused before the run folder got a file; the loggers' one removed


def test_resuming_with_a_longer_run_names_the_schedule_length(tmp_path, capsys, epoch0_checkpoint):
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _resume(tmp_path, epoch0_checkpoint, "--trainer.max_epochs", "3")
    assert "total optimizer steps 4 -> 6" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_refused_resume_into_the_checkpoints_own_run_leaves_that_run_as_it_was(tmp_path, epoch0_checkpoint):
    run = tmp_path / "digits" / "version_0"
    shutil.copytree(epoch0_checkpoint.parents[1], run)
    before = sorted(run.rglob("*"))
    with pytest.raises(SystemExit):
        _resume(tmp_path, "last", "--data.init_args.batch_size", "32")  # --ckpt_path last: version_0's
    assert sorted((tmp_path / "digits").iterdir()) == [run] and sorted(run.rglob("*")) == before


def test_with_the_option_the_checkpoints_schedule_continues_from_its_step(
    tmp_path, caplog, epoch0_checkpoint
):
    saved = _load(epoch0_checkpoint)["lr_schedulers"][0]
    with caplog.at_level(logging.INFO):
        cli = _resume(
            tmp_path, epoch0_checkpoint, "--data.init_args.batch_size", "32", "--accept_changed_settings=true"
        )
    assert "Continuing the checkpoint's lr schedule; changed: effective batch 16 -> 32" in caplog.text
    assert cli.trainer.global_step == 4  # steps 3 and 4 of the checkpoint's run, not a new run from step 0
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 4 and scheduler.base_lrs == saved["base_lrs"]
    assert vars(scheduler.lr_lambdas[0]) == saved["lr_lambdas"][0]  # the checkpoint's warm-up and length


def test_an_unchanged_resume_runs(tmp_path, epoch0_checkpoint):
    assert _resume(tmp_path, epoch0_checkpoint).trainer.global_step == 4


def test_a_checkpoint_without_stored_settings_resumes_as_before(tmp_path, epoch0_checkpoint):
    older = _load(epoch0_checkpoint)
    del older[SCHEDULE_SETTINGS_KEY]
    torch.save(older, tmp_path / "older.ckpt")
    cli = _resume(tmp_path / "run", tmp_path / "older.ckpt", "--data.init_args.batch_size", "32")
    assert cli.trainer.global_step == 4


def test_refuse_changed_settings_lists_every_difference_and_ignores_a_rounded_lr():
    saved = {"effective_batch_size": 64, "peak_lr": 1e-3, "total_steps": 100, "data_root": "a"}
    now = {"effective_batch_size": 128, "peak_lr": 1e-3 * (1 + 1e-12), "total_steps": 200, "data_root": "b"}
    with pytest.raises(
        UserError, match="effective batch 64 -> 128, total optimizer steps 100 -> 200, data root a -> b;"
    ):
        refuse_changed_settings("x.ckpt", saved, now, accepted=False)
    assert refuse_changed_settings("x.ckpt", saved, now, accepted=True) == [
        "effective batch 64 -> 128",
        "total optimizer steps 100 -> 200",
        "data root a -> b",
    ]
    assert refuse_changed_settings("x.ckpt", None, now, accepted=False) == []


def test_a_warm_up_longer_than_the_run_is_a_warning(tmp_path):
    run = [*RUN, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1"]
    with pytest.warns(
        UserWarning, match=r"the warm-up \(10 steps\) is longer than the run \(2 optimizer steps\)"
    ):
        cli_main([*run, "--model.init_args.warmup_steps", "10"])
