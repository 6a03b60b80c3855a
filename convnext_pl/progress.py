"""Progress for a stdout that is not a terminal (CI, SLURM, ``nohup``, ``| tee``): one plain line now and then.

tqdm redraws its bar with carriage returns; written to a file, every refresh becomes a line, and a 300-epoch
ImageNet log grows to hundreds of thousands of lines. Lightning has no line-based progress bar, so this one is
written here (a ``ProgressBar``, so Lightning uses it in place of its TQDM bar). The command line chooses it when
stdout is not a TTY (``convnext_pl.cli``).
"""

import sys
import time

import torch
from lightning.pytorch.callbacks import ProgressBar
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
