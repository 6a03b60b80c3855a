"""Test-only callbacks that break a run on purpose, passed by class path through ``--trainer.callbacks``.

``helpers.run_main`` puts ``tests/`` on the subprocess's ``PYTHONPATH``, so a test names them as
``helpers.callbacks.<Class>``.
"""

import os
import signal
import time

import torch
from lightning.pytorch.callbacks import Callback


class SignalAtStep(Callback):
    """Sends ``signal_name`` to this process when the batch that starts at ``step`` begins.

    Args:
        step: the global step (optimizer steps done) at which the signal is sent.
        signal_name: "SIGKILL" (the process dies at once) or "SIGTERM" (Lightning stops after the batch).
    """

    def __init__(self, step: int, signal_name: str = "SIGKILL"):
        self.step = step
        self.signal_name = signal_name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


class RaiseOnRank(Callback):
    """Raises on one rank when ``step`` begins, after writing the time to ``stamp_file``.

    Args:
        rank: the global rank that fails.
        step: the global step at which it fails.
        stamp_file: where the time of the failure (``time.time()``) is written.
    """

    def __init__(self, rank: int, step: int, stamp_file: str):
        self.rank = rank
        self.step = step
        self.stamp_file = stamp_file

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            with open(self.stamp_file, "w") as f:
                f.write(str(time.time()))
            raise RuntimeError(f"test failure on rank {self.rank} at step {self.step}")


class PoisonBatches(Callback):
    """Fills the images of the batches that start at the given global steps with NaN (so the loss is NaN),
    and records a checksum of the weights at the start of every batch.

    Args:
        steps: global steps whose batch is poisoned.
        rank: the only global rank whose batches are poisoned (None: every rank).
    """

    def __init__(self, steps: list[int], rank: int | None = None):
        self.steps = set(steps)
        self.rank = rank
        self.weight_sums: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with torch.no_grad():
            self.weight_sums[trainer.global_step] = sum(
                p.double().sum().item() for p in pl_module.parameters()
            )
        if trainer.global_step in self.steps and self.rank in (None, trainer.global_rank):
            batch[0].fill_(float("nan"))


class PoisonGradients(PoisonBatches):
    """Leaves the loss of the given global steps finite but sets one gradient element to infinity after the
    backward pass (an overflow in the backward pass), and records a checksum of the weights at the start of every
    batch.

    Args:
        steps: global steps whose gradients are poisoned.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        steps, self.steps = self.steps, set()  # record the checksum, poison no batch
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.steps = steps

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step in self.steps:
            grad = next(p.grad for p in pl_module.parameters() if p.grad is not None)
            grad.view(-1)[0] = float("inf")


class FileSizeLimitAtStep(Callback):
    """Caps the size of any file this process writes from ``step`` on, as a full disk or a quota would: a later
    write past ``limit_bytes`` fails with EFBIG (Python ignores SIGXFSZ, so the process is not killed).

    Args:
        step: the global step at which the cap starts.
        limit_bytes: the largest file the process may write after that.
    """

    def __init__(self, step: int, limit_bytes: int):
        self.step = step
        self.limit_bytes = limit_bytes

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit_bytes, resource.RLIM_INFINITY))


class KillProcessAtStep(Callback):
    """Kills (SIGKILL) the process whose pid ``pid_file`` holds when the batch that starts at ``step`` begins:
    a server the run depends on going away mid-epoch.

    Args:
        pid_file: file holding the pid.
        step: the global step at which the process is killed.
    """

    def __init__(self, pid_file: str, step: int):
        self.pid_file = pid_file
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and trainer.is_global_zero:
            with open(self.pid_file) as f:
                os.kill(int(f.read()), signal.SIGKILL)
