"""The default training path makes no device-to-host conversion per step: the trainer ``main.py fit`` builds (its
callbacks, the module's logging, the NaN guard) reads nothing back between log intervals, and the NaN guard keeps
its promise (a non-finite step changes no weight; the stop names the step, at most one log interval later)."""

import collections
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from helpers import DIGITS, QUIET
from helpers.callbacks import PoisonBatches

import convnext_pl
from convnext_pl.training.cli import cli_main
from convnext_pl.training.guards import NonFiniteLossError, NonFiniteLossGuard

PACKAGE = str(Path(convnext_pl.__file__).parent)
# What copies a tensor's value to the host (and, on an accelerator, waits for the queued work to finish).
CONVERSIONS = ("item", "__bool__", "__float__", "__int__", "cpu", "tolist", "numpy")
LIBRARIES_CALLED_BY_THE_PROJECT = ("/torch/", "/torchmetrics/")


class CountConversions(pl.Callback):
    """Counts the conversions the project's code makes during training batches after the first.

    A conversion is the project's when the first frame above it outside torch and torchmetrics (which the
    project calls) is in ``convnext_pl``; those made by Lightning's own loop are Lightning's.
    """

    def __init__(self, everyone: bool = False):
        self.everyone = everyone  # count Lightning's own conversions too
        self.per_step: collections.Counter = collections.Counter()
        self.where: collections.Counter = collections.Counter()
        self._step: int | None = None

    def patch(self, monkeypatch) -> None:
        for name in CONVERSIONS:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                if self._step is not None:
                    self._record(_name)
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def _record(self, name: str) -> None:
        frame = sys._getframe(2)
        while frame is not None and any(
            lib in frame.f_code.co_filename for lib in LIBRARIES_CALLED_BY_THE_PROJECT
        ):
            frame = frame.f_back
        if frame is not None and (self.everyone or frame.f_code.co_filename.startswith(PACKAGE)):
            self.per_step[self._step] += 1
            self.where[f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {name}"] += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = (
            trainer.global_step if trainer.global_step >= 1 else None
        )  # the first step sets things up

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._step = None


def _main_py_fit_trainer(tmp_path: Path, *extra: str):
    """The model, data and trainer ``python main.py fit`` builds from the digits demo (progress bar off)."""
    args = [
        "--config",
        DIGITS,
        "--trainer.default_root_dir",
        str(tmp_path),
        *QUIET,
        "--trainer.limit_val_batches",
        "1",
    ]
    args += ["--data.init_args.batch_size", "16", *extra]
    return cli_main(args, run=False)


def test_the_default_training_step_converts_no_tensor_to_a_host_value(tmp_path, monkeypatch):
    cli = _main_py_fit_trainer(tmp_path, "--trainer.max_steps", "6", "--trainer.log_every_n_steps", "100")
    counter = CountConversions()
    counter.patch(monkeypatch)
    cli.trainer.callbacks.append(counter)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 6
    assert sum(counter.per_step.values()) == 0, dict(counter.where)


def test_the_terminal_progress_bar_reads_no_tensor_between_log_intervals(tmp_path, monkeypatch, capsys):
    # What a run in a terminal shows: Lightning's tqdm bar reads the loss for its display every batch (a
    # synchronisation per step on a GPU); the project's reads it when Lightning logs. Every caller is counted.
    bar = [
        "--trainer.enable_progress_bar",
        "true",
        "--trainer.callbacks+=convnext_pl.training.progress.TerminalProgress",
    ]
    cli = _main_py_fit_trainer(tmp_path, "--trainer.max_steps", "7", "--trainer.log_every_n_steps", "3", *bar)
    counter = CountConversions(everyone=True)
    counter.patch(monkeypatch)
    cli.trainer.callbacks.append(counter)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 7
    steps_between_logs = [step for step in range(1, 7) if (step + 1) % 3]  # Lightning logs after steps 2, 5
    assert all(counter.per_step[step] == 0 for step in steps_between_logs), dict(counter.where)
    assert "train/loss=" in capsys.readouterr().out  # the bar shows the loss


def test_a_nan_step_changes_no_weight_and_the_stop_comes_within_one_log_interval(tmp_path):
    cli = _main_py_fit_trainer(tmp_path, "--trainer.max_steps", "20", "--trainer.log_every_n_steps", "5")
    poison = PoisonBatches(steps=[6])
    cli.trainer.callbacks.append(poison)
    with pytest.raises(NonFiniteLossError, match=r"train/loss is nan at step 6 \(epoch 0"):
        cli.trainer.fit(cli.model, cli.datamodule)
    # Step 6 was skipped on the device; the host saw it at the next log interval (step 10) and stopped there.
    sums = poison.weight_sums
    assert sums[7] == sums[6] and sums[6] != sums[5] and sums[8] != sums[7]
    assert cli.trainer.global_step == 10
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


# The gradient check asked for, or implied by more than one process (where the ranks' losses differ).
@pytest.mark.parametrize("check_gradients, world_size", [(True, 1), (False, 2)])
def test_a_finite_loss_with_a_non_finite_gradient_changes_no_weight(check_gradients, world_size):
    net = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, fused=True)  # what build_optimizer returns
    guard = NonFiniteLossGuard(check_gradients=check_gradients)
    trainer = SimpleNamespace(
        global_step=0, log_every_n_steps=50, precision_plugin=None, world_size=world_size
    )
    module = SimpleNamespace(device=torch.device("cpu"))
    guard.on_train_start(trainer, module)

    def step(poison: bool) -> list[torch.Tensor]:
        loss = net(torch.ones(2, 4)).square().mean()
        guard.on_before_backward(trainer, module, loss)
        loss.backward()
        if poison:  # an overflow in the backward pass: the loss is finite, one gradient is not
            net.weight.grad[0, 0] = float("inf")
        guard.on_before_optimizer_step(trainer, module, optimizer)
        optimizer.step()
        optimizer.zero_grad()
        trainer.global_step += 1
        guard.on_train_batch_end(trainer, module, None, None, 0)
        return [p.detach().clone() for p in net.parameters()]

    start = [p.detach().clone() for p in net.parameters()]
    after_bad = step(poison=True)
    assert all(torch.equal(a, b) for a, b in zip(start, after_bad, strict=True))
    assert optimizer.state[net.weight]["step"].item() == 0  # the moments and step count are untouched too
    after_good = step(poison=False)
    assert not torch.equal(after_good[0], after_bad[0])  # the flag does not outlive its step
    assert guard._counters["bad"].item() == 1 and guard._counters["first"].item() == 0
