"""Object detection and instance segmentation: torchvision's Mask R-CNN with the official ConvNeXt recipe.

The module receives the detector ready-made (``net: {class_path: convnext_pl.models.mask_rcnn.create_mask_rcnn}``)
and trains it with torchvision's losses and the official optimiser of the 3x schedule (docs/paper.md §6):
AdamW, weight decay on matrices and kernels only, "layer_wise" lr decay with the official ids, linear warm-up
then x0.1 steps at given epochs, applied per iteration, lr scaled to the effective batch. Validation and test
report COCO box and mask AP (torchmetrics ``MeanAveragePrecision``, pycocotools backend) as ``val/box_AP``,
``val/box_AP50`` ... ``val/mask_APl``. ``predict`` writes COCO-format results and a few drawn images.
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnitInterval,
    PositiveFloat,
    PositiveInt,
)
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.detection import MeanAveragePrecision
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from convnext_pl.errors import UserError
from convnext_pl.models.layer_ids import DECAY_TYPES, detector_layer_ids
from convnext_pl.ranges import LeftOpenUnitInterval
from convnext_pl.tasks.base import TaskModule, created_in_code
from convnext_pl.tasks.detection_ap import EvenlyGatheredMeanAveragePrecision
from convnext_pl.training.optim import (
    build_optimizer,
    effective_batch_size,
    per_step,
    scaled_lr,
    warmup_multistep,
)

# torchmetrics' result names -> the COCO names logged (and printed by the CLI).
COCO_METRICS = {
    "map": "AP",
    "map_50": "AP50",
    "map_75": "AP75",
    "map_small": "APs",
    "map_medium": "APm",
    "map_large": "APl",
}
IOU_TYPES = {"bbox": "box", "segm": "mask"}


class MaskRCNNDetector(TaskModule):
    """Mask R-CNN / Faster R-CNN training, COCO evaluation and prediction.

    Args:
        net: a torchvision detector from :func:`convnext_pl.models.mask_rcnn.create_mask_rcnn`.
        lr: peak lr at ``lr_reference_batch`` (official: 1e-4 at 16 = 8 GPUs x 2).
        lr_reference_batch: batch ``lr`` belongs to; the peak lr is ``lr * effective_batch / lr_reference_batch``.
            None: no scaling.
        weight_decay: AdamW decay on matrices and kernels, none on 1-D parameters (official 0.05).
        betas: AdamW betas (official 0.9, 0.999).
        layer_decay: "layer_wise" lr decay rate (official 0.95); None: off.
        decay_type: "layer_wise" (official for Mask R-CNN) or "stage_wise".
        num_layers: official ``paramwise_cfg.num_layers`` (6 for T).
        warmup_steps: linear warm-up in optimizer steps (official 500) ...
        warmup_ratio: ... from this fraction of the lr (official 0.001).
        lr_steps: epochs at whose start the lr is multiplied by ``lr_gamma`` (official 3x: 27, 33 of 36).
        lr_gamma: the step factor, in (0, 1) (official 0.1; no steps: an empty ``lr_steps``).
        mask_threshold: mask probability above which a pixel belongs to the instance (mmdet 0.5).
        draw_images: images ``predict`` draws detections on.
        draw_score_threshold: detections drawn have at least this score.
        pretrained: the whole detector's weights: the released COCO file by name
            (``mask_rcnn_convnext_tiny.coco_3x``, mmdet layout, converted on load), a URL or a file (also this
            project's checkpoints), loaded in any stage.
        pretrained_backbone: ImageNet weights for the backbone (``convnext_tiny.in1k``, a URL or a file), loaded
            when fitting starts without ``pretrained``; FPN and heads start from torchvision's initialisation.
        channels_last, compile, grad_checkpointing: see :class:`~convnext_pl.tasks.base.TaskModule` (``compile``
            compiles the backbone and FPN).
    """

    def __init__(
        self,
        net: nn.Module,
        lr: PositiveFloat = 1e-4,
        lr_reference_batch: PositiveInt | None = None,
        weight_decay: NonNegativeFloat = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        layer_decay: LeftOpenUnitInterval | None = None,
        decay_type: str = "layer_wise",
        num_layers: PositiveInt = 6,
        warmup_steps: NonNegativeInt = 0,
        warmup_ratio: ClosedUnitInterval = 0.001,
        lr_steps: tuple[PositiveInt, ...] = (),
        lr_gamma: OpenUnitInterval = 0.1,
        mask_threshold: OpenUnitInterval = 0.5,
        draw_images: NonNegativeInt = 8,
        draw_score_threshold: ClosedUnitInterval = 0.5,
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
        if decay_type not in DECAY_TYPES:  # else refused only when the optimizer is built, in a run folder
            raise UserError(
                f"model.init_args.decay_type '{decay_type}' is unknown; use one of {', '.join(DECAY_TYPES)}"
            )
        self.save_hyperparameters(ignore=["net"] if created_in_code() else None)
        self.has_masks = net.roi_heads.has_mask()
        iou_types = ("bbox", "segm") if self.has_masks else ("bbox",)
        self.val_map = EvenlyGatheredMeanAveragePrecision(iou_type=iou_types, backend="pycocotools")
        self.test_map = EvenlyGatheredMeanAveragePrecision(iou_type=iou_types, backend="pycocotools")
        self._drawn = 0

    task_name = "detection"
    monitor = "val/box_AP"
    class_kind = "object classes"

    def backbone_module(self) -> nn.Module:
        return self.net.backbone.body  # torchvision's name for the ConvNeXt under the FPN

    def compiled_module(self) -> nn.Module:
        return self.net.backbone  # ConvNeXt + FPN; the RPN and RoI heads have data-dependent shapes

    def load_task_weights(self, source: str, stage: str) -> None:
        from convnext_pl.weights.dense import load_detection_checkpoint

        load_detection_checkpoint(self.net, source)

    def prediction_writer(self) -> "DetectionWriter":
        return DetectionWriter()

    def setup(self, stage: str) -> None:
        data_has_masks = (
            getattr(self.trainer.datamodule, "has_masks", None) if self._trainer is not None else None
        )
        if self.has_masks and data_has_masks is False and stage in ("fit", "validate", "test"):
            raise UserError(
                "the COCO annotations have no 'segmentation' (a box-only export) but the network is Mask R-CNN; "
                "train a box-only detector with --model.init_args.net.init_args.masks false"
            )
        super().setup(stage)

    # ------------------------------------------------------------------------------------------------ steps
    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        """Detections for a list of (3, H, W) images in [0, 1], in the images' own pixel coordinates."""
        return self.net(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        keys = ("boxes", "labels", "masks") if self.has_masks else ("boxes", "labels")
        losses = self.net(images, [{k: t[k] for k in keys} for t in targets])  # torchvision's losses
        loss = sum(losses.values())
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._update_map(self.val_map, *batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._update_map(self.test_map, *batch)

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def _update_map(self, metric: MeanAveragePrecision, images, targets) -> None:
        outputs = self.net(images)
        preds = [self._thresholded(o) for o in outputs]
        truth = []
        for t in targets:
            item = {k: t[k] for k in ("boxes", "labels", "iscrowd", "area")}
            if self.has_masks:
                item["masks"] = t["masks"].bool()
            truth.append(item)
        metric.update(preds, truth)

    def _thresholded(self, output: dict) -> dict:
        pred = {k: output[k] for k in ("boxes", "scores", "labels")}
        if self.has_masks:  # (N, 1, H, W) probabilities -> (N, H, W) instance masks
            pred["masks"] = output["masks"][:, 0] > self.hparams.mask_threshold
        return pred

    def _log_map(self, metric: MeanAveragePrecision, prefix: str) -> None:
        results = metric.compute()
        metric.reset()
        values = {}
        for iou_type in metric.iou_type:  # a box-only detector has no mask figures to log
            name = IOU_TYPES[iou_type]
            for key, coco_name in COCO_METRICS.items():
                full_key = f"{iou_type}_{key}" if len(metric.iou_type) > 1 else key
                if full_key in results:
                    values[f"{prefix}/{name}_{coco_name}"] = results[full_key].float()
        # Already reduced over ranks by the metric. One value per epoch: batch_size 1, else Lightning guesses a
        # batch size from the last batch (a list of images: their 3 channels) and warns that it is ambiguous.
        self.log_dict(values, prog_bar=False, sync_dist=False, batch_size=1)

    def predict_step(self, batch, batch_idx: int) -> dict:
        images, targets = batch
        outputs = self.net(images)
        category_ids = getattr(self.trainer.datamodule, "category_ids", None)
        names = getattr(self.trainer.datamodule, "class_names", None)
        results, drawn = [], []
        for image, target, output in zip(images, targets, outputs, strict=True):
            pred = self._thresholded(output)
            results += coco_results(int(target["image_id"]), pred, category_ids)
            if self._drawn < self.hparams.draw_images:
                drawn.append((int(target["image_id"]), self._draw(image, pred, names)))
                self._drawn += 1
        return {"results": results, "drawn": drawn}

    def _draw(self, image: torch.Tensor, pred: dict, names: list[str] | None) -> torch.Tensor:
        keep = pred["scores"] >= self.hparams.draw_score_threshold
        canvas = (image.clamp(0, 1) * 255).to(torch.uint8).cpu()
        labels = [
            f"{names[i - 1] if names else i} {s:.2f}"
            for i, s in zip(pred["labels"][keep].tolist(), pred["scores"][keep].tolist(), strict=True)
        ]
        if not keep.any():
            return canvas  # nothing above the threshold: the image as it is
        if self.has_masks:
            canvas = draw_segmentation_masks(canvas, pred["masks"][keep].cpu(), alpha=0.45)
        return draw_bounding_boxes(canvas, pred["boxes"][keep].cpu(), labels=labels, width=2)

    def on_predict_epoch_start(self) -> None:
        self._drawn = 0

    # -------------------------------------------------------------------------------------------- optimizer
    def lr_schedule_settings(self) -> dict[str, int | float | list[int]]:
        """What the lr schedule is built from (the effective batch, peak lr, warm-up steps, total optimizer steps
        and the steps where the lr drops); checkpoints store them and a resume compares them
        (:class:`~convnext_pl.training.resume.ResumableSchedule`)."""
        batch = effective_batch_size(self.trainer)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total_steps / max(1, self.trainer.max_epochs or 1)
        return {
            "effective_batch_size": batch,
            "peak_lr": scaled_lr(self.hparams.lr, batch, self.hparams.lr_reference_batch),
            "warmup_steps": self.hparams.warmup_steps,
            "total_steps": total_steps,
            "lr_drop_steps": [round(epoch * steps_per_epoch) for epoch in self.hparams.lr_steps],
        }

    def configure_optimizers(self):
        hp = self.hparams
        settings = self.resolved_schedule_settings()  # on a resume, compared with the checkpoint's
        batch, lr = settings["effective_batch_size"], settings["peak_lr"]
        total_steps, milestones = settings["total_steps"], settings["lr_drop_steps"]
        layer_ids = detector_layer_ids(self.net, hp.decay_type, hp.num_layers) if hp.layer_decay else None
        optimizer = build_optimizer(
            self.net,
            lr,
            hp.weight_decay,
            layer_decay=hp.layer_decay,
            layer_ids=layer_ids,
            default_id=hp.num_layers + 1,
            betas=hp.betas,
            config_prefix="model.init_args",
        )
        rank_zero_info(
            f"Effective batch {batch}, peak lr {lr:.3g}, {hp.warmup_steps} warm-up steps, "
            f"lr x{hp.lr_gamma} at steps {milestones} of {total_steps}"
        )
        schedule = warmup_multistep(hp.warmup_steps, milestones, hp.lr_gamma, hp.warmup_ratio)
        return {"optimizer": optimizer, "lr_scheduler": per_step(optimizer, schedule)}


def coco_results(image_id: int, pred: dict, category_ids: list[int] | None = None) -> list[dict]:
    """One image's detections in the COCO results format (``bbox`` as x, y, w, h; masks as compressed RLE).

    Args:
        image_id: the COCO image id.
        pred: ``boxes`` (N, 4) XYXY, ``scores``, ``labels`` (1..K) and optionally ``masks`` (N, H, W) bool.
        category_ids: COCO category id of each label (label ``i`` -> ``category_ids[i - 1]``); None: the label.
    """
    from pycocotools import mask as mask_utils

    boxes = pred["boxes"].detach().cpu().float()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    results = []
    masks = pred.get("masks")
    rles = []
    if masks is not None and len(masks):
        rles = mask_utils.encode(
            np.asfortranarray(masks.detach().cpu().numpy().transpose(1, 2, 0).astype(np.uint8))
        )
    for k, (label, score) in enumerate(zip(pred["labels"].tolist(), pred["scores"].tolist(), strict=True)):
        item = {
            "image_id": image_id,
            "category_id": category_ids[label - 1] if category_ids else label,
            "bbox": [round(v, 2) for v in xywh[k]],
            "score": round(float(score), 5),
        }
        if masks is not None:
            item["segmentation"] = {"size": rles[k]["size"], "counts": rles[k]["counts"].decode("ascii")}
        results.append(item)
    return results


class DetectionWriter(BasePredictionWriter):
    """Writes ``predict`` results of :class:`MaskRCNNDetector` into the run's log folder: ``detections.json``
    (COCO results format, ready for pycocotools' ``COCO.loadRes`` or the evaluation server) and
    ``drawn/<image_id>.png``. Under several processes each rank writes ``detections_rank<r>.json``.

    Args:
        output_dir: the folder (default: the run's log directory).
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.results: list[dict] = []

    def _folder(self, trainer) -> Path:
        return Path(self.output_dir or trainer.log_dir or ".")

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self.results = []

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        self.results += prediction["results"]
        if prediction["drawn"]:
            folder = self._folder(trainer) / "drawn"
            folder.mkdir(parents=True, exist_ok=True)
            for image_id, image in prediction["drawn"]:
                write_png(image, str(folder / f"{image_id}.png"))

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        name = "detections.json" if trainer.world_size == 1 else f"detections_rank{trainer.global_rank}.json"
        path = self._folder(trainer) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.results))
        rank_zero_info(f"Wrote {len(self.results)} detections to {path}")
