"""What the checkpoint files hold: ``last.ckpt`` is the run's newest state whatever the monitored metric does, and
with EMA each best checkpoint stores the weights its score measured. The tests read the files' ``global_step`` and
tensors, not Lightning's internals, so a Lightning upgrade cannot change the behaviour silently."""

import csv
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn as nn
from helpers import DEMO_EPOCHS, DIGITS, QUIET, quiet_trainer, run_main
from torch.utils.data import DataLoader, TensorDataset

from convnext_pl.errors import UserError
from convnext_pl.training.callbacks import EMA, EMA_STATE_KEY
from convnext_pl.training.checkpointing import ResumableCheckpoint
from convnext_pl.training.cli import cli_main

# A short digits run: 2 optimizer steps per epoch, one validation batch.
SHORT_DIGITS = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
SHORT_DIGITS += ["--data.init_args.batch_size", "16", "--data.init_args.num_workers", "0"]
# The best checkpoint by "epoch", lowest first: the monitored value gets worse every epoch after the first.
WORSENING_MONITOR = ["--checkpoint.monitor", "epoch", "--checkpoint.mode", "min"]
WORSENING_MONITOR += ["--checkpoint.filename", "best-epoch{epoch}"]


class _Tiny(pl.LightningModule):
    """A linear classifier whose validation score gets worse every epoch (1, 1/2, 1/3 ...)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val/score", 1.0 / (self.current_epoch + 1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class _RawWeightsAtTheEnd(pl.Callback):
    """Keeps the raw weights as training ends, before the EMA callback copies its average into the model."""

    def on_train_end(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(12, 4, generator=generator), torch.randint(0, 2, (12,), generator=generator)
    )
    return DataLoader(data, batch_size=4)  # 3 optimizer steps per epoch


def _fit(tmp_path: Path, *callbacks: pl.Callback, max_epochs: int = 3, **trainer_kwargs) -> pl.Trainer:
    checkpointing = any(isinstance(callback, ResumableCheckpoint) for callback in callbacks)
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=max_epochs,
        callbacks=list(callbacks),
        enable_checkpointing=checkpointing,
        **trainer_kwargs,
    )
    trainer.fit(_Tiny(), _loader(), _loader())
    return trainer


def _load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same(saved: dict, expected: dict) -> None:
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


def _ema_weights(ema: EMA) -> dict:
    """The EMA callback's averaged weights under the model's names."""
    state = ema._average_model.state_dict()  # AveragedModel: "module." + the model's names, and n_averaged
    return {
        k.removeprefix("module."): v.detach().clone() for k, v in state.items() if k.startswith("module.")
    }


def _best_checkpoint(tmp_path: Path) -> ResumableCheckpoint:
    return ResumableCheckpoint(
        dirpath=tmp_path, monitor="val/score", mode="max", save_last=True, filename="best"
    )


def test_last_ckpt_is_the_final_state_when_the_monitored_metric_got_worse(tmp_path):
    checkpoint = _best_checkpoint(tmp_path)
    trainer = _fit(tmp_path, checkpoint)
    last, best = _load(tmp_path / "last.ckpt"), _load(tmp_path / "best.ckpt")
    assert trainer.global_step == 9
    assert last["global_step"] == 9 and last["epoch"] == 2
    assert best["global_step"] == 3  # the best score was the first epoch's
    _assert_same(last["state_dict"], trainer.lightning_module.state_dict())
    assert checkpoint.last_model_path == str(tmp_path / "last.ckpt")


def test_last_ckpt_is_refreshed_every_n_steps_and_at_the_end_of_a_run_stopped_mid_epoch(tmp_path):
    steps_seen = []

    class _Record(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if (tmp_path / "last.ckpt").exists():
                steps_seen.append(_load(tmp_path / "last.ckpt")["global_step"])

    checkpoint = ResumableCheckpoint(
        every_n_train_steps=2, dirpath=tmp_path, monitor="val/score", mode="max", save_last=True
    )
    trainer = _fit(tmp_path, _Record(), checkpoint, max_epochs=3, max_steps=5)
    # _Record runs before the checkpoint callback: it sees the file as the previous batch left it.
    assert steps_seen == [2, 3, 4]  # step 2 (refresh), 3 (end of epoch 0), 4 (refresh)
    assert _load(tmp_path / "last.ckpt")["global_step"] == trainer.global_step == 5


def test_with_ema_last_ckpt_holds_the_final_ema_and_raw_weights(tmp_path):
    ema, raw = EMA(decay=0.5), _RawWeightsAtTheEnd()
    _fit(tmp_path, raw, ema, _best_checkpoint(tmp_path))
    last = _load(tmp_path / "last.ckpt")
    assert last["global_step"] == 9
    _assert_same(last["state_dict"], _ema_weights(ema))
    _assert_same(last["current_model_state"], raw.state)


def test_with_ema_a_best_checkpoint_by_a_raw_metric_stores_the_raw_weights_and_resumes_both(tmp_path):
    ema, raw = EMA(decay=0.5), _RawWeightsAtTheEnd()
    checkpoint = ResumableCheckpoint(
        dirpath=tmp_path, monitor="val/score", mode="min", save_last=True, filename="best"
    )
    _fit(tmp_path, raw, ema, checkpoint)  # mode min: the best is the final epoch, whose weights are known
    best, last = _load(tmp_path / "best.ckpt"), _load(tmp_path / "last.ckpt")
    assert best["global_step"] == 9
    _assert_same(best["state_dict"], raw.state)
    _assert_same(best[EMA_STATE_KEY], last["state_dict"])
    assert "current_model_state" not in best
    # Resuming from it restores both sets of weights where they belong.
    resumed_ema = EMA(decay=0.5)

    class _AtTrainStart(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.raw = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            self.ema = _ema_weights(resumed_ema)

    at_start = _AtTrainStart()
    trainer = quiet_trainer(tmp_path / "resumed", max_epochs=4, callbacks=[resumed_ema, at_start])
    trainer.fit(_Tiny(), _loader(), _loader(), ckpt_path=tmp_path / "best.ckpt")
    _assert_same(at_start.raw, raw.state)
    _assert_same(at_start.ema, last["state_dict"])


def test_save_last_link_is_refused():
    with pytest.raises(UserError, match="save_last true"):
        ResumableCheckpoint(save_last="link")


def _score_in_name(path: str) -> float:
    return float(re.search(r"acc1_(\d\.\d{4})\.ckpt$", path).group(1))


def test_with_ema_the_cli_keeps_a_best_raw_and_a_best_ema_checkpoint_each_validating_to_its_name(
    tmp_path, capsys
):
    run = ["--config", DIGITS, "--trainer.default_root_dir", str(tmp_path), *SHORT_DIGITS, *QUIET]
    run += ["--trainer.max_epochs", "2", "--trainer.callbacks+=convnext_pl.training.callbacks.EMA"]
    cli = cli_main(["fit", *run, "--trainer.callbacks.decay", "0.5"])
    raw_best, ema_best = (callback.best_model_path for callback in cli.trainer.checkpoint_callbacks)
    folder = tmp_path / "digits" / "version_0" / "checkpoints"
    assert Path(raw_best).parent == Path(ema_best).parent == folder
    assert Path(raw_best).name.startswith("raw-epoch") and Path(ema_best).name.startswith("ema-epoch")
    out = capsys.readouterr().out
    assert f"Best checkpoint:  {raw_best}" in out and f"Best EMA checkpoint:  {ema_best}" in out
    assert _score_in_name(raw_best) == round(float(cli.trainer.checkpoint_callbacks[0].best_model_score), 4)
    for path in (raw_best, ema_best):
        validated = cli_main(["validate", *run, "--ckpt_path", path])
        assert round(float(validated.trainer.callback_metrics["val/acc1"]), 4) == _score_in_name(path)


def _train_rows(metrics_csv: Path) -> list[int]:
    with metrics_csv.open() as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]


def test_resuming_from_last_continues_after_the_final_step_not_after_the_best_epoch(tmp_path):
    run = ["fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp_path), *SHORT_DIGITS, *QUIET]
    run += [*WORSENING_MONITOR, "--trainer.log_every_n_steps", "1"]
    first = cli_main([*run, "--trainer.max_epochs", "3"])
    folder = tmp_path / "digits" / "version_0" / "checkpoints"
    assert _load(folder / "best-epoch0.ckpt")["global_step"] == 2
    assert _load(folder / "last.ckpt")["global_step"] == first.trainer.global_step == 6
    # A longer run is a changed schedule length: the option continues the checkpoint's schedule.
    resumed = cli_main(
        [*run, "--trainer.max_epochs", "4", "--ckpt_path", "last", "--accept_changed_settings=true"]
    )
    assert resumed.trainer.global_step == 8
    assert min(_train_rows(tmp_path / "digits" / "version_1" / "metrics.csv")) >= 6  # no step 1..6 again
    assert _load(tmp_path / "digits" / "version_1" / "checkpoints" / "last.ckpt")["global_step"] == 8


@pytest.mark.slow
def test_make_demo_ends_with_last_ckpt_at_the_final_step(demo_run):
    """The digits demo as `make demo` runs it (for DEMO_EPOCHS of its epochs): 22 optimizer steps an epoch."""
    root, result = demo_run
    last = root / "digits" / "version_0" / "checkpoints" / "last.ckpt"
    assert f"Last checkpoint:  {last}" in result.stdout
    checkpoint = _load(last)
    assert (checkpoint["global_step"], checkpoint["epoch"]) == (22 * DEMO_EPOCHS, DEMO_EPOCHS - 1)


def test_a_checkpoint_that_cannot_be_written_is_one_error_line_and_the_previous_last_ckpt_stays(tmp_path):
    """A disk that fills up mid-run (here: a file-size cap after step 1, smaller than a checkpoint): the save of
    step 2 fails, main.py prints one error line and exits 2, and step 1's last.ckpt is whole and loadable."""
    run = ["fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp_path), *SHORT_DIGITS, *QUIET]
    run += ["--trainer.max_epochs", "1", "--checkpoint.every_n_train_steps", "1"]
    run += ["--trainer.callbacks+=helpers.callbacks.FileSizeLimitAtStep", "--trainer.callbacks.step", "1"]
    run += ["--trainer.callbacks.limit_bytes", "200000"]
    result = run_main(run, check=False)
    last = tmp_path / "digits" / "version_0" / "checkpoints" / "last.ckpt"
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: could not write checkpoint {last} (File too large); the previous last.ckpt is intact; free space "
        f"in {last.parent} or set trainer.default_root_dir to a disk with room, then resume with --ckpt_path last"
    ], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert _load(last)["global_step"] == 1
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no partial file left behind


def test_checkpoints_follow_the_users_umask_like_any_other_file(tmp_path, digits_ckpt):
    """Before: mode 0600 whatever the umask, so colleagues on a shared machine could not read a run's weights."""
    import os
    import stat

    from convnext_pl.training.checkpoint_io import AtomicCheckpointIO

    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(digits_ckpt.stat().st_mode) == 0o666 & ~umask  # the CLI run's last.ckpt
    previous = os.umask(0o027)  # group may read, others nothing
    try:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1)}, tmp_path / "a.ckpt")
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.ckpt").stat().st_mode) == stat.S_IMODE(
        (tmp_path / "plain").stat().st_mode
    )
    assert stat.S_IMODE((tmp_path / "a.ckpt").stat().st_mode) == 0o640
