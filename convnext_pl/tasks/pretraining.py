"""Self-supervised pre-training: ConvNeXt V2's FCMAE (Woo et al., CVPR 2023; docs/paper.md §7) on the task spine.

The module receives the FCMAE network ready-made (``net: {class_path: convnext_pl.models.create_fcmae, ...}``)
and reads images from any classification DataModule, ignoring the labels. It trains with the paper's recipe
(AdamW betas 0.9/0.95, lr scaled from a base lr per 256 images, warm-up then cosine, the numbers in
``configs/experiment/imagenet1k_fcmae_*.yaml``) and, at every validation, writes what a researcher looks at:
the validation loss on fixed masks (the same masks every epoch, so epochs compare) and a picture of original,
masked input and reconstruction under ``<run>/reconstructions/``.

The pre-trained encoder fine-tunes through the classification task: ``--model.init_args.pretrained`` takes this
task's checkpoint (or a released ``*.fcmae`` file) and keeps the encoder (``configs/experiment/*_fcmae_ft*.yaml``).
"""

from pathlib import Path

import torch
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torchvision.utils import save_image

from convnext_pl.errors import UserError
from convnext_pl.models.fcmae import FCMAE, reconstruction_picture
from convnext_pl.tasks.base import TaskModule, created_in_code
from convnext_pl.tasks.recipes import WarmupCosineRecipe
from convnext_pl.training.parallel import ShardUnit, fully_shard_network


class MaskedAutoencoderPretrainer(WarmupCosineRecipe, TaskModule):
    """FCMAE pre-training of a ConvNeXt encoder.

    Args:
        net: the FCMAE network (:func:`convnext_pl.models.create_fcmae`).
        lr: peak learning rate at ``lr_reference_batch`` (official: base lr 1.5e-4 per 256 images).
        lr_reference_batch: batch size ``lr`` refers to (official: 256); None: no scaling.
        min_lr: final lr of the cosine decay, at the same reference batch (official: 0).
        weight_decay: AdamW decay on matrices and kernels (official: 0.05).
        betas: AdamW betas (official: 0.9, 0.95).
        eps: AdamW epsilon.
        warmup_epochs: linear warm-up in epochs (official: 40).
        warmup_steps: warm-up in optimizer steps; overrides ``warmup_epochs`` when set.
        reconstructions: validation images drawn in each epoch's reconstruction picture (0: none).
        pretrained: FCMAE weights to start from: a released ``*.fcmae`` name, URL, ``hf-hub:`` id, a released
            file or this task's checkpoint.
        pretrained_backbone: weights of the encoder alone (a ConvNeXt classifier's), loaded when ``fit`` starts.
        channels_last, compile, grad_checkpointing: see :class:`~convnext_pl.tasks.base.TaskModule`.
        shard_unit: the FSDP2 unit of the encoder under ``ModelParallelStrategy`` (``"block"`` or ``"stage"``).
    """

    task_name = "pre-training"
    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        net: torch.nn.Module,  # not `FCMAE`: another network gets the sentence below, not the parser's
        lr: PositiveFloat = 1.5e-4,
        lr_reference_batch: PositiveInt | None = 256,
        min_lr: NonNegativeFloat = 0.0,
        weight_decay: NonNegativeFloat = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: PositiveFloat = 1e-8,
        warmup_epochs: NonNegativeFloat = 40.0,
        warmup_steps: NonNegativeInt | None = None,
        reconstructions: NonNegativeInt = 8,
        pretrained: str | None = None,
        pretrained_backbone: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        grad_checkpointing: bool = False,
        shard_unit: ShardUnit = "block",
    ):
        if not isinstance(net, FCMAE):
            raise UserError(
                f"model.init_args.net must be an FCMAE network (class_path: convnext_pl.models.create_fcmae), "
                f"got {type(net).__name__}"
            )
        super().__init__(
            net,
            pretrained=pretrained,
            pretrained_backbone=pretrained_backbone,
            channels_last=channels_last,
            compile=compile,
            grad_checkpointing=grad_checkpointing,
        )
        self.check_recipe(lr, min_lr)
        self.save_hyperparameters(ignore=["net"] if created_in_code() else None)
        self._shown: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ----------------------------------------------------------------------------------------------- set-up
    def backbone_module(self) -> torch.nn.Module:
        return self.net.encoder

    def load_task_weights(self, source: str, stage: str) -> None:
        from convnext_pl.weights.fcmae import load_fcmae_weights

        load_fcmae_weights(self.net, source)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        size = getattr(datamodule, "image_size", None)
        patch = self.net.patch_size
        if isinstance(size, int) and size % patch:
            raise UserError(
                f"data.init_args.image_size {size} is not a multiple of the FCMAE mask patch {patch} (the encoder's "
                f"total stride); use {max(patch, size - size % patch)} or {size - size % patch + patch}"
            )
        if isinstance(size, int) and (size // patch) ** 2 * (1 - self.net.mask_ratio) < 1:
            raise UserError(
                f"at image_size {size} the {patch}-pixel mask patches give {(size // patch) ** 2} patches, and mask "
                f"ratio {self.net.mask_ratio} leaves none visible; use a larger image_size or a smaller stem "
                "patch_size"
            )

    def shard(self, device_mesh) -> None:
        # The FCMAE network is the root unit (its forward is what runs; the encoder's own never does), its
        # encoder's blocks or stages the inner units.
        fully_shard_network(self.net, device_mesh, self.hparams.shard_unit)

    # ------------------------------------------------------------------------------------------------ steps
    def _images(self, batch) -> torch.Tensor:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = self._images(batch)
        loss, _, _ = self.net(images)  # a fresh mask per image, drawn from the step's seeded generator
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0])
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images = self._images(batch)
        # The same masks at every validation (seeded by rank and batch), so the loss of two epochs compares.
        generator = torch.Generator().manual_seed(self.global_rank * 1_000_003 + batch_idx)
        mask = self.net.random_mask(images, generator=generator)
        loss, pred, mask = self.net(images, mask)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=images.shape[0])
        if batch_idx == 0 and self.hparams.reconstructions:
            count = self.hparams.reconstructions
            self._shown = (images[:count].detach(), pred[:count].detach(), mask[:count].detach())

    def on_validation_epoch_end(self) -> None:
        # trainer.log_dir broadcasts rank 0's folder: every rank must ask, or rank 0 waits for the others forever.
        log_dir = self.trainer.log_dir
        if self._shown is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            self._shown = None
            return
        picture = self.reconstruction_picture(*self._shown)
        self._shown = None
        folder = Path(log_dir or ".") / "reconstructions"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"epoch{self.current_epoch:03d}.png"
        save_image(picture, path)
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/reconstructions", picture, self.global_step)
        rank_zero_info(f"Wrote the reconstructions of epoch {self.current_epoch} to {path}")

    def reconstruction_picture(
        self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """:func:`~convnext_pl.models.fcmae.reconstruction_picture` in the DataModule's pixels (its ``mean`` and
        ``std``, when it has them)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        return reconstruction_picture(self.net, images, pred, mask, mean, std)

    def test_step(self, batch, batch_idx: int) -> None:
        images = self._images(batch)
        generator = torch.Generator().manual_seed(self.global_rank * 1_000_003 + batch_idx)
        loss, _, _ = self.net(images, self.net.random_mask(images, generator=generator))
        self.log("test/loss", loss, sync_dist=True, batch_size=images.shape[0])

    def predict_step(self, batch, batch_idx: int):
        raise UserError(
            "pre-training predicts no labels; the reconstructions are written at every validation "
            "(<run>/reconstructions/), and notebooks/04_fcmae_reconstruction.ipynb draws them for any image"
        )
