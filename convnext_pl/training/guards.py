"""Guards of a training run: a step whose loss (with the gradient check, or on more than one process, also whose
gradients) stops being a number changes no weight, and the run stops (or goes on skipping such steps) naming the
step.

Resuming lives in :mod:`convnext_pl.training.checkpointing` (checkpoints), :mod:`convnext_pl.training.seeding` (randomness) and
:mod:`convnext_pl.data.resumable` (the data position).
"""

import math
from typing import Literal

import lightning.pytorch as pl
import torch
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from convnext_pl.errors import UserError


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard(Callback):
    """Skips every optimizer step whose loss is NaN or infinite (with ``check_gradients``, or on more than one
    process, also every step whose gradients are), and stops the run (or, with "skip", goes on) naming the step,
    without a host-device synchronisation per step.

    Each step the check stays on the device: the flag ``the loss is non-finite`` (or any gradient) is handed to
    the fused AdamW as ``found_inf`` (as the gradient scaler of ``16-mixed`` does), and the kernel leaves the
    weights, moments and step count untouched when it is set. A non-finite step therefore never changes the
    weights, and a stopped run never writes non-finite ones. The host reads the counters once every
    ``log_every_n_steps`` optimizer steps (when Lightning logs, and synchronises, anyway) and at every epoch end:
    a diverged run stops at most ``log_every_n_steps - 1`` optimizer steps after the first bad one, naming that
    step. The one all-reduce (of the counters) is at those checks.

    The gradient check reads every gradient once (the gradient scaler's fused kernel): on a GPU a few
    microseconds, on a CPU a pass over memory (2 ms a step for ConvNeXt-atto, 2% of a 32-px step; 25 ms, 1%, for
    ConvNeXt-T at 224 px; docs/scaling.md). One process leaves it off by default: a non-finite loss is what
    diverging runs show (the official ConvNeXt training loop checks the loss alone); a finite loss with non-finite
    gradients (an overflow in the backward pass) then reaches the weights and shows up as a non-finite loss one
    step later. More
    than one process always checks the gradients: the ranks' losses differ, but DDP has averaged the gradients
    (a NaN on one rank reaches all), so every rank takes the same decision without an extra collective.

    With an optimizer that takes no ``found_inf`` (not fused) the check falls back to reading the flag every
    step and discarding the gradients of a bad step (one synchronisation per step). With ``16-mixed`` the
    gradient scaler skips steps with non-finite gradients itself; the guard only counts and reports them.

    Args:
        action: "stop" raises :class:`NonFiniteLossError` naming the step and the likely causes; "skip" drops
            the update of that optimizer step and training goes on.
        max_consecutive_skips: with "skip", stop anyway after this many bad steps in a row: the run diverged.
        check_gradients: also skip a step whose loss is finite but whose gradients are not, on one process too.
    """

    def __init__(
        self,
        action: Literal["stop", "skip"] = "stop",
        max_consecutive_skips: NonNegativeInt = 10,
        check_gradients: bool = False,
    ):
        if action not in ("stop", "skip"):
            raise UserError(f"nonfinite_loss.action must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.check_gradients = check_gradients
        self._gradients_decide = check_gradients  # set per run: also on more than one process
        self.skipped_steps = 0
        self._counters: dict[str, torch.Tensor] = {}
        self._loss_bad: torch.Tensor | None = None
        self._first_loss: torch.Tensor | None = None  # the loss of the first bad step since the last check
        self._over_loss: torch.Tensor | None = None  # the loss of the step that made too many in a row
        self._flagged: list = []
        self._positions: dict[int, tuple[int, int]] = {}  # global step -> (epoch, batch) since the last check
        self._last_checked_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        self._gradients_decide = self.check_gradients or trainer.world_size > 1
        self._counters = {  # float64: steps and counts stay exact, and one stack reads them all
            name: torch.full((), value, dtype=torch.float64, device=device)
            for name, value in (
                ("step", trainer.global_step),
                ("bad", 0),
                ("run", 0),
                ("first", -1),
                ("over", -1),
            )
        }
        self._first_loss = torch.zeros((), dtype=torch.float64, device=device)
        self._over_loss = torch.zeros((), dtype=torch.float64, device=device)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int):
        self._positions.setdefault(trainer.global_step, (trainer.current_epoch, batch_idx))

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        loss = loss.detach()
        bad = ~torch.isfinite(loss).all()
        if self._loss_bad is None:  # the first micro-batch of this optimizer step
            self._loss_bad, self._loss = bad, loss.double()
        else:  # gradient accumulation: the step is bad when any of its micro-batches is
            self._loss = torch.where(self._loss_bad, self._loss, loss.double())
            self._loss_bad = self._loss_bad | bad

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # Lightning's wrapper -> the torch optimizer
        if self._loss_bad is not None:
            found, loss = self._loss_bad.float(), self._loss  # 1.0: the loss was not finite
        else:  # no backward hook ran (manual optimisation): the gradients alone decide
            found, loss = (
                torch.zeros((), device=self._first_loss.device),
                self._first_loss.new_tensor(float("nan")),
            )
        if self._gradients_decide or self._loss_bad is None:
            grads = [
                p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
            ]
            _mark_non_finite(grads, found)
        self._loss_bad = None
        bad = found > 0
        self._count(bad, loss)
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # the gradient scaler skips steps with non-finite gradients by itself
        if all(group.get("fused") for group in optimizer.param_groups):
            optimizer.found_inf = found  # read by the fused kernel: 1 skips the update on the device
            self._flagged.append(optimizer)
        elif bool(bad):  # an optimizer without found_inf: decide on the host (a synchronisation per step)
            # Optimizers leave a parameter without a gradient untouched: no update, no momentum, no decay.
            optimizer.zero_grad(set_to_none=True)

    def _count(self, bad: torch.Tensor, loss: torch.Tensor) -> None:
        c, bad64 = self._counters, bad.double()
        c["bad"] += bad64
        c["run"].copy_((c["run"] + 1) * bad64)  # consecutive bad steps
        first = bad & (c["first"] < 0)
        c["first"].copy_(torch.where(first, c["step"], c["first"]))
        self._first_loss.copy_(torch.where(first, loss, self._first_loss))
        over = (c["run"] > self.max_consecutive_skips) & (c["over"] < 0)
        c["over"].copy_(torch.where(over, c["step"], c["over"]))
        self._over_loss.copy_(torch.where(over, loss, self._over_loss))
        c["step"] += 1

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx
    ):
        for optimizer in self._flagged:
            del optimizer.found_inf
        self._flagged.clear()
        step = trainer.global_step
        if step % max(trainer.log_every_n_steps, 1) == 0 and step != self._last_checked_step:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        """Read the counters (the one synchronisation), report what happened since the last check, reset."""
        self._last_checked_step = trainer.global_step
        if not self._counters:
            return
        c = self._counters
        values = torch.stack(
            [c["bad"], c["first"], *_split(self._first_loss), c["over"], *_split(self._over_loss)]
        )
        reduced = trainer.strategy.reduce(values, reduce_op="max").tolist()  # the ranks' losses differ
        bad, first, first_value, first_kind, over, over_value, over_kind = reduced
        first_loss, over_loss = _join(first_value, first_kind), _join(over_value, over_kind)
        positions, self._positions = self._positions, {}
        c["bad"].zero_()
        c["first"].fill_(-1)
        new_bad = int(bad)
        if not new_bad:
            return
        self.skipped_steps += new_bad
        where = self._where(int(first), first_loss, positions)
        if self.action == "stop":
            raise NonFiniteLossError(
                f"{where}: training diverged; lower model.lr (mind lr_reference_batch and the warm-up), "
                "train in precision 32-true or bf16-mixed rather than 16-mixed, or set "
                "--nonfinite_loss.action skip to skip such steps"
            )
        if over >= 0:
            raise NonFiniteLossError(
                f"{self._where(int(over), over_loss, positions)}, {self.max_consecutive_skips + 1} non-finite "
                "steps in a row: training diverged; lower model.lr or use precision 32-true or bf16-mixed"
            )
        more = f" and {new_bad - 1} more before step {trainer.global_step}" if new_bad > 1 else ""
        rank_zero_warn(f"{where}: skipped this optimizer step{more} ({self.skipped_steps} skipped so far)")

    @staticmethod
    def _where(step: int, loss: float, positions: dict[int, tuple[int, int]]) -> str:
        epoch, batch = positions.get(step, ("?", "?"))
        if math.isfinite(loss):  # the loss was a number: the gradients were not
            return f"a gradient is not finite at step {step} (epoch {epoch}, batch {batch}; train/loss {loss:.4g})"
        return f"train/loss is {loss} at step {step} (epoch {epoch}, batch {batch})"

    def state_dict(self) -> dict[str, int]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped_steps = state_dict["skipped_steps"]


def _split(loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A loss as (its value where finite, else -inf; 2 for NaN, 1 for inf, 0 for a number), whose maxima over the
    ranks say whether any rank's loss was non-finite (a maximum with NaN depends on the order of the ranks)."""
    finite = torch.isfinite(loss)
    kind = torch.where(torch.isnan(loss), 2.0, torch.where(finite, 0.0, 1.0)).to(loss.dtype)
    return torch.where(finite, loss, float("-inf")), kind


def _join(value: float, kind: float) -> float:
    return {2.0: float("nan"), 1.0: float("inf")}.get(kind, value)


def _mark_non_finite(grads: list[torch.Tensor], found: torch.Tensor) -> None:
    """Set the float ``found`` to 1 where any element of ``grads`` is NaN or infinite (else leave it); no
    synchronisation.

    The gradient scaler's own kernel (``torch._amp_foreach_non_finite_check_and_unscale_``, here with scale 1,
    which leaves the values as they are) checks every element exactly, in one fused pass per device and dtype:
    on a CPU it costs what a gradient-norm pass does, where ``get_total_norm(norm_type=inf)`` took 6x as long
    (2.2 against 14 ms for ConvNeXt-atto's 3.7M gradients, one thread). A sharded gradient (FSDP2's DTensor) is
    checked in its local shard.
    """
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for grad in grads:
        grad = grad.to_local() if hasattr(grad, "to_local") else grad
        by_kind.setdefault((grad.device, grad.dtype), []).append(grad)
    for (grad_device, _), group in by_kind.items():
        found_here = found if grad_device == found.device else torch.zeros_like(found, device=grad_device)
        scale = torch.ones((), dtype=torch.float32, device=grad_device)
        torch._amp_foreach_non_finite_check_and_unscale_(group, found_here, scale)
        if found_here is not found:
            found.copy_(torch.maximum(found, found_here.to(found.device, non_blocking=True)))
