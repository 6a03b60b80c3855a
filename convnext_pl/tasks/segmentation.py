"""Semantic segmentation: UperNet + ConvNeXt trained and evaluated as the official ADE20K recipe does.

Loss (mmseg ``EncoderDecoder``): pixel cross-entropy with ignore 255 on the decode head's scores upsampled to
the label, plus ``aux_weight`` (0.4) times the auxiliary head's. Optimizer (docs/paper.md §6): AdamW with
layer-wise lr decay on the official layer ids ("stage_wise" / "layer_wise"), linear warm-up then poly decay per
iteration, lr scaled to the effective batch as classification does. Metrics (mmseg ``mean_iou``): per-class IoU,
mIoU over the classes present in the labels, pixel accuracy, all from one confusion matrix (torchmetrics).
Inference: whole image or sliding window, at several scales with flips, from the YAML (``inference.py``).
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torchmetrics.classification import MulticlassConfusionMatrix

from convnext_pl.data.segmentation.transforms import IGNORE_INDEX
from convnext_pl.errors import UserError
from convnext_pl.models.layer_ids import DECAY_TYPES, dense_layer_ids
from convnext_pl.models.upernet import resize
from convnext_pl.ranges import LeftOpenUnitInterval
from convnext_pl.tasks.base import TaskModule, created_in_code, relative_output_path
from convnext_pl.tasks.segmentation_inference import InferenceMode, segment
from convnext_pl.training.optim import build_optimizer, effective_batch_size, per_step, scaled_lr, warmup_poly


def palette(num_classes: int) -> list[int]:
    """A fixed colour per class (flat RGB list for a PNG palette); 255 (ignore) is black."""
    rng = np.random.default_rng(0)  # the same colours in every run
    colours = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    colours[IGNORE_INDEX] = 0
    return colours[: max(num_classes, IGNORE_INDEX + 1)].flatten().tolist()


class SemanticSegmenter(TaskModule):
    """Semantic segmentation with the official UperNet recipe.

    Args:
        net: the segmentation network (``create_upernet``): ``forward_heads`` in training, ``forward`` scores
            at the input size, ``num_classes``, a ``backbone`` attribute.
        lr: peak lr at ``lr_reference_batch`` (official 1e-4 at 16).
        lr_reference_batch: batch ``lr`` refers to (peak = lr x effective batch / reference); None: no scaling.
        weight_decay: AdamW decay of matrices and kernels (official 0.05; none on 1-D parameters and biases).
        betas: AdamW betas.
        warmup_steps: linear warm-up iterations (official 1500).
        warmup_ratio: warm-up start as a fraction of the peak (official 1e-6).
        poly_power: exponent of the poly decay to ``min_lr`` (official 1.0).
        min_lr: final lr (official 0).
        layer_decay: lr decay per layer id (official 0.9); None: off.
        decay_type: "stage_wise" (the official ADE20K configs of every size) or "layer_wise".
        num_layers: the official ``num_layers`` (6 for T, 12 for S and larger).
        aux_weight: weight of the auxiliary head's loss (official 0.4).
        inference: "whole" or "slide" (official ADE20K evaluation: slide, crop 512, stride 341).
        slide_crop: sliding-window size (H, W).
        slide_stride: sliding-window stride (H, W).
        test_scales: ratios of the evaluation scale (official multi-scale: 0.5, 0.75, ..., 1.75; single: 1.0).
        flip: also segment the mirrored image and average (official "ms+flip").
        pretrained: a whole segmentation checkpoint (a released ADE20K name such as
            ``upernet_convnext_tiny.ade20k_160k``, a URL or a file in mmseg layout, or this project's), loaded in
            any stage.
        pretrained_backbone: ImageNet weights for the backbone (a released name such as ``convnext_tiny.in1k``,
            a URL or a file), loaded when fitting starts without ``pretrained``; the heads start fresh.
        channels_last, compile, grad_checkpointing: see :class:`~convnext_pl.tasks.base.TaskModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        lr: PositiveFloat = 1e-4,
        lr_reference_batch: PositiveInt | None = None,
        weight_decay: NonNegativeFloat = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: NonNegativeInt = 0,
        warmup_ratio: ClosedUnitInterval = 1e-6,
        poly_power: NonNegativeFloat = 1.0,
        min_lr: NonNegativeFloat = 0.0,
        layer_decay: LeftOpenUnitInterval | None = None,
        decay_type: str = "stage_wise",
        num_layers: PositiveInt = 6,
        aux_weight: NonNegativeFloat = 0.4,
        inference: InferenceMode = "whole",
        slide_crop: tuple[PositiveInt, PositiveInt] = (512, 512),
        slide_stride: tuple[PositiveInt, PositiveInt] = (341, 341),
        test_scales: tuple[PositiveFloat, ...] = (1.0,),
        flip: bool = False,
        pretrained: str | None = None,
        pretrained_backbone: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        grad_checkpointing: bool = False,
    ):
        super().__init__(
            net,
            pretrained=pretrained,
            pretrained_backbone=pretrained_backbone,
            channels_last=channels_last,
            compile=compile,
            grad_checkpointing=grad_checkpointing,
        )
        if decay_type not in DECAY_TYPES:
            raise UserError(
                f"model.init_args.decay_type '{decay_type}' is unknown; use one of {', '.join(DECAY_TYPES)}"
            )
        _check_relations(lr, min_lr, slide_crop, slide_stride, test_scales)
        self.save_hyperparameters(ignore=["net"] if created_in_code() else None)
        self.confusion = nn.ModuleDict(
            {
                split: MulticlassConfusionMatrix(self.num_classes, ignore_index=IGNORE_INDEX)
                for split in ("val", "test")
            }
        )

    task_name = "segmentation"
    monitor = "val/mIoU"

    def backbone_module(self) -> nn.Module:
        return self.net.backbone

    def load_task_weights(self, source: str, stage: str) -> None:
        from convnext_pl.weights.dense import load_segmentation_checkpoint

        load_segmentation_checkpoint(self.net, source)

    def prediction_writer(self) -> BasePredictionWriter:
        return MaskWriter()

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._trainer is not None:
            synced = getattr(self.trainer.strategy, "_layer_sync", None) is not None  # trainer.sync_batchnorm
            if synced and self.trainer.strategy.root_device.type == "cpu":
                # torch's DDP refuses SyncBatchNorm on CPU processes with a message about "GPU modules".
                raise UserError(
                    "trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on CPU processes); "
                    "set trainer.sync_batchnorm false on the CPU."
                )
            # Training BatchNorm needs two values per channel, and the pyramid pooling's 1x1 map has one per
            # image: batches of one train only where SyncBatchNorm pools them over several processes (as mmseg).
            if getattr(self.trainer.datamodule, "batch_size", None) == 1 and not (
                synced and self.trainer.world_size > 1
            ):
                raise UserError(
                    "data.init_args.batch_size 1 cannot train UperNet: the BatchNorm after its pyramid pooling sees "
                    "one value per channel on a 1x1 map; use batch_size 2 or more (or several GPUs with "
                    "trainer.sync_batchnorm true)"
                )
        super().setup(stage)

    # ------------------------------------------------------------------------------------------------ steps
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes, H, W) class probabilities, with the configured inference."""
        hp = self.hparams
        return segment(
            self.net, images, hp.inference, hp.slide_crop, hp.slide_stride, hp.test_scales, hp.flip
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        heads = self.net.forward_heads(images)
        loss = self._pixel_loss(heads["decode"], labels)
        n = images.shape[0]  # given to log: Lightning would otherwise search the batch for it on every call
        self.log("train/loss_decode", loss, batch_size=n)
        if "aux" in heads:
            aux = self._pixel_loss(heads["aux"], labels)
            self.log("train/loss_aux", aux, batch_size=n)
            loss = loss + self.hparams.aux_weight * aux
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    @staticmethod
    def _pixel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # mmseg: scores upsampled (bilinear) to the label's size, then CE averaged over the labelled pixels. A
        # batch without one (a crop of "other" only) gives 0, not torch's 0/0 = nan, which reads as divergence.
        pixels = F.cross_entropy(
            resize(logits, labels.shape[-2:]), labels, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return pixels / (labels != IGNORE_INDEX).sum().clamp(min=1)

    def _evaluate(self, batch, split: str) -> None:
        images, labels = batch
        probs = resize(self(images), labels.shape[-2:])  # mmseg evaluates at the label's own resolution
        self.confusion[split].update(probs.argmax(dim=1), labels)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, split: str) -> None:
        matrix = self.confusion[split].compute().double()  # (true, predicted) pixel counts, summed over ranks
        self.confusion[split].reset()
        iou, accuracy = iou_from_confusion(matrix)
        names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None) or []
        self.log(f"{split}/mIoU", torch.nanmean(iou).float() * 100, prog_bar=True)
        self.log(f"{split}/aAcc", accuracy.float() * 100)
        for index, value in enumerate(iou.tolist()):
            name = names[index] if index < len(names) else f"class_{index}"
            if value == value:  # NaN: the class is absent from the labels and its prediction (mmseg skips it)
                self.log(f"{split}/IoU/{name}", value * 100)

    def predict_step(self, batch, batch_idx: int) -> dict:
        """Class-index masks at each image's own size, with the images' paths (:class:`MaskWriter` saves them)."""
        images, paths, sizes = batch
        probs = self(images)
        masks = [
            resize(prob[None], size)[0].argmax(dim=0).to(torch.uint8).cpu()
            for prob, size in zip(probs, sizes, strict=True)
        ]
        return {"paths": list(paths), "masks": masks}

    # -------------------------------------------------------------------------------------------- optimizer
    def lr_schedule_settings(self) -> dict[str, int | float]:
        """What the lr schedule is built from (the effective batch, peak lr, warm-up and total optimizer steps);
        checkpoints store them and a resume compares them (:class:`~convnext_pl.training.resume.ResumableSchedule`).
        """
        effective_batch = effective_batch_size(self.trainer)
        return {
            "effective_batch_size": effective_batch,
            "peak_lr": scaled_lr(self.hparams.lr, effective_batch, self.hparams.lr_reference_batch),
            "warmup_steps": self.hparams.warmup_steps,
            "total_steps": max(1, int(self.trainer.estimated_stepping_batches)),
        }

    def configure_optimizers(self):
        hp = self.hparams
        settings = self.resolved_schedule_settings()  # on a resume, compared with the checkpoint's
        effective_batch, peak_lr = settings["effective_batch_size"], settings["peak_lr"]
        total_steps = settings["total_steps"]
        layer_ids = (
            dense_layer_ids(self.net, hp.decay_type, hp.num_layers) if hp.layer_decay is not None else None
        )
        optimizer = build_optimizer(
            self.net, peak_lr, hp.weight_decay, hp.layer_decay, layer_ids, hp.num_layers + 1, hp.betas,
            config_prefix="model.init_args",
        )  # fmt: skip
        min_ratio = hp.min_lr / hp.lr if hp.lr > 0 else 0.0
        schedule = warmup_poly(hp.warmup_steps, total_steps, hp.poly_power, min_ratio, hp.warmup_ratio)
        rank_zero_info(
            f"Effective batch {effective_batch}, peak lr {peak_lr:.3g}, {hp.warmup_steps} warm-up steps of "
            f"{total_steps}, poly power {hp.poly_power}"
        )
        return {"optimizer": optimizer, "lr_scheduler": per_step(optimizer, schedule)}


def iou_from_confusion(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class IoU (NaN for a class absent from labels and predictions) and pixel accuracy, as mmseg's
    ``mean_iou``: IoU = TP / (TP + FP + FN) from a (true, predicted) confusion matrix."""
    true_positive = matrix.diagonal()
    union = matrix.sum(dim=0) + matrix.sum(dim=1) - true_positive
    iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))
    accuracy = true_positive.sum() / matrix.sum().clamp(min=1)
    return iou, accuracy


def _check_relations(lr, min_lr, slide_crop, slide_stride, test_scales) -> None:
    """What the option types cannot say: relations between options (their ranges are on the types)."""
    if min_lr > lr:
        raise UserError(
            f"model.init_args.min_lr {min_lr} is above model.init_args.lr {lr}: the poly decay would climb; "
            "give a min_lr <= lr"
        )
    if any(stride > crop for crop, stride in zip(slide_crop, slide_stride, strict=True)):
        # mmseg's slide_inference asserts every pixel is in a window; a stride above the crop leaves gaps.
        raise UserError(
            f"model.init_args.slide_stride {tuple(slide_stride)} is larger than model.init_args.slide_crop "
            f"{tuple(slide_crop)}: the windows would leave pixels out; give a stride <= the crop"
        )
    if not test_scales:
        raise UserError("model.init_args.test_scales is empty; give at least one scale, e.g. [1.0]")


class MaskWriter(BasePredictionWriter):
    """Writes ``predict`` masks of :class:`SemanticSegmenter` as palette PNGs (class index per pixel, shown in its
    colour) under ``masks/`` of the run's folder (a new ``version_N`` each run: nothing earlier is overwritten),
    each at its image's path relative to ``data.init_args.predict_dir``: ``a/img.jpg`` -> ``masks/a/img.png``.

    Args:
        output_dir: the folder (default: ``masks`` in the run's log directory).
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.written = 0

    def _folder(self, trainer) -> Path:
        return Path(self.output_dir or Path(trainer.log_dir or ".") / "masks")

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self.written = 0

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        root = getattr(trainer.datamodule, "predict_dir", None)
        for path, mask in zip(prediction["paths"], prediction["masks"], strict=True):
            target = self._folder(trainer) / relative_output_path(path, root, ".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(mask.numpy(), mode="L").convert("P")
            image.putpalette(palette(pl_module.num_classes))
            image.save(target)
            self.written += 1

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        rank_zero_info(
            f"Wrote {self.written} colour masks (class index per pixel, PNG palette) to {self._folder(trainer)}"
        )
