"""Progress bars that read the training numbers now and then, not every batch.

Reading the loss for display copies it to the host, which on a GPU waits for the step's queued work: Lightning's
tqdm bar does so every batch, a synchronisation per step. The command line (``convnext_pl.training.cli``) chooses:

- on a terminal, :class:`TerminalProgress`: Lightning's tqdm bar, whose count moves every batch and whose
  numbers are read when Lightning logs anyway;
- when stdout is not a terminal (CI, SLURM, ``nohup``, ``| tee``), :class:`LogLineProgress`: tqdm redraws its
  bar with carriage returns, and written to a file every refresh becomes a line (a 300-epoch ImageNet log grows
  to hundreds of thousands of lines). Lightning has no line-based progress bar, so this one is written here (a
  ``ProgressBar``, so Lightning uses it in place of its tqdm bar); it reads the numbers for each line.
"""

import sys
import time

import torch
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.data import extract_batch_size


def images_in(batch) -> int:
    """The number of images in a batch: the length of its first element (a tensor of images, or detection's list
    of differently sized images), else Lightning's guess. Lightning's ``extract_batch_size`` alone would read a
    detection batch's first image and count its 3 colour channels."""
    first = batch[0] if isinstance(batch, (list, tuple)) and len(batch) else batch
    if isinstance(first, (list, tuple, torch.Tensor)):
        return len(first)
    return extract_batch_size(batch)


class LogLineProgress(ProgressBar):
    """A line every ``every_n_steps`` optimizer steps or ``every_seconds`` seconds, whichever comes first, with
    the epoch, step, training loss, lr and images per second; a line with the validation metrics after each
    validation.

    Args:
        every_n_steps: steps between lines.
        every_seconds: longest time between lines.
    """

    def __init__(self, every_n_steps: int = 50, every_seconds: float = 30.0):
        super().__init__()
        self.every_n_steps = every_n_steps
        self.every_seconds = every_seconds
        self._enabled = True
        self._last_time = 0.0
        self._last_step = 0
        self._images = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _line(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, file=sys.stdout, flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_time, self._last_step, self._images = time.perf_counter(), trainer.global_step, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += images_in(batch)
        step, now = trainer.global_step, time.perf_counter()
        due = step - self._last_step >= self.every_n_steps or now - self._last_time >= self.every_seconds
        if step == self._last_step or not due:
            return
        metrics = self.get_metrics(trainer, pl_module)
        loss = next((float(v) for k, v in metrics.items() if k.startswith("train/loss")), float("nan"))
        lr = max(group["lr"] for group in trainer.optimizers[0].param_groups) if trainer.optimizers else 0.0
        total = trainer.estimated_stepping_batches
        self._line(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  step {step}/{total}  loss {loss:.4f}  "
            f"lr {lr:.2e}  {self._images / max(now - self._last_time, 1e-9):.0f} img/s"
        )
        self._last_time, self._last_step, self._images = now, step, 0

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("val")}
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        self._line(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {shown}")


class TerminalProgress(TQDMProgressBar):
    """Lightning's tqdm bar without a synchronisation per step: during training batches the numbers it shows
    (loss, lr, ...) are read every ``log_every_n_steps`` optimizer steps, when Lightning logs (and reads them)
    anyway; between those the bar's count still moves every batch. Validation and epoch ends read them fresh.

    Args:
        refresh_rate: batches between redraws, as for ``TQDMProgressBar``.
    """

    def __init__(self, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self._in_train_batch = False
        self._shown: dict | None = None
        self._read_at_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._in_train_batch = True
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._in_train_batch = False

    def get_metrics(self, trainer, pl_module) -> dict:
        # Optimizer steps done: a multiple of log_every_n_steps is where Lightning logs and the NaN guard checks.
        step = trainer.global_step
        at_log_step = step % max(trainer.log_every_n_steps, 1) == 0 and step != self._read_at_step
        due = self._shown is None or at_log_step
        if due or not self._in_train_batch:
            self._shown, self._read_at_step = super().get_metrics(trainer, pl_module), step
        return self._shown
