"""The paper's optimisation recipe as a part a task takes (docs/paper.md §4): AdamW without decay on 1-D
parameters, lr scaled to the effective batch, linear warm-up then cosine decay per optimizer step. The
classifier and the FCMAE pre-trainer share it; the dense tasks have their official schedules (poly, steps).

A task using it has the hyperparameters ``lr``, ``lr_reference_batch``, ``min_lr``, ``weight_decay``, ``betas``,
``eps``, ``warmup_epochs`` and ``warmup_steps`` (and ``layer_decay`` with :meth:`layer_ids`, optionally).
"""

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from convnext_pl.errors import UserError
from convnext_pl.training.optim import (
    build_optimizer,
    effective_batch_size,
    per_step,
    scaled_lr,
    warmup_cosine,
)


class WarmupCosineRecipe:
    """``lr_schedule_settings`` and ``configure_optimizers`` of the warm-up + cosine recipe; listed before
    :class:`~convnext_pl.tasks.base.TaskModule` among a task's bases."""

    @staticmethod
    def check_recipe(lr: float, min_lr: float) -> None:
        """Refuse settings whose relation types cannot say: a cosine decay that would climb.

        Raises:
            UserError: ``min_lr`` above ``lr``.
        """
        if min_lr > lr:
            raise UserError(
                f"model.init_args.min_lr {min_lr} is above model.init_args.lr {lr}: the cosine decay would climb; "
                "give a min_lr <= lr"
            )

    def layer_ids(self) -> dict[str, int] | None:
        """Layer id of every parameter for layer-wise lr decay; None: no layer decay."""
        return None

    def lr_schedule_settings(self) -> dict[str, int | float]:
        """What this run's lr schedule is built from, for the trainer it is attached to: the effective batch, the
        peak lr, the warm-up and total optimizer steps (counting them builds the training loader). Checkpoints
        store them; a resume compares them before anything is written (``resume.refuse_a_changed_resume``).
        """
        hp = self.hparams
        effective_batch = effective_batch_size(self.trainer)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        if hp.warmup_steps is not None:
            warmup_steps = hp.warmup_steps
        else:
            epochs = max(1, self.trainer.max_epochs or 1)
            warmup_steps = round(hp.warmup_epochs * total_steps / epochs)
        return {
            "effective_batch_size": effective_batch,
            "peak_lr": scaled_lr(hp.lr, effective_batch, hp.lr_reference_batch),
            "warmup_steps": warmup_steps,
            "total_steps": total_steps,
        }

    def configure_optimizers(self):
        hp = self.hparams
        settings = self.resolved_schedule_settings()  # on a resume, compared with the checkpoint's
        effective_batch, peak_lr = settings["effective_batch_size"], settings["peak_lr"]
        warmup_steps, total_steps = settings["warmup_steps"], settings["total_steps"]
        layer_ids = self.layer_ids()
        optimizer = build_optimizer(
            self.net, peak_lr, hp.weight_decay, hp.get("layer_decay"), layer_ids, betas=hp.betas, eps=hp.eps
        )
        schedule = warmup_cosine(warmup_steps, total_steps, min_ratio=hp.min_lr / hp.lr if hp.lr > 0 else 0.0)
        rank_zero_info(
            f"Effective batch {effective_batch}, peak lr {peak_lr:.3g}, {warmup_steps} warm-up steps of {total_steps}"
        )
        if warmup_steps > total_steps:
            rank_zero_warn(
                f"the warm-up ({warmup_steps} steps) is longer than the run ({total_steps} optimizer steps): the lr "
                "never reaches its peak; shorten model.init_args.warmup_epochs/warmup_steps"
            )
        return {"optimizer": optimizer, "lr_scheduler": per_step(optimizer, schedule)}
