"""Image classification: a network plus the paper's optimisation recipe (paper Sec. 3.1 and Table 5, docs/paper.md §4).

The module receives the network ready-made (in YAML: ``net: {class_path: convnext_pl.models.create_model, ...}``)
and never builds data. Code defaults are neutral (no Mixup, no layer decay, no lr scaling); the recipe numbers
live in ``configs/``, each with its source.
"""

from typing import Literal

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
from lightning.pytorch.utilities import rank_zero_info
from timm.data import Mixup
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from convnext_pl.errors import UserError
from convnext_pl.ranges import LeftOpenUnitInterval, RightOpenUnitInterval
from convnext_pl.tasks.base import TaskModule, created_in_code
from convnext_pl.tasks.recipes import WarmupCosineRecipe
from convnext_pl.training.callbacks import TopKPredictionWriter
from convnext_pl.training.parallel import ShardUnit, fully_shard_network

# Ranges declared on the options, so the command line refuses a value outside them in one line, naming the
# option, before anything runs (jsonargparse checks these types; Python callers pass plain numbers).
LayerDecay = LeftOpenUnitInterval  # (0, 1]: 1 is no decay
LabelSmoothing = RightOpenUnitInterval  # [0, 1)


def _accuracy_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "acc5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        }
    )


class ImageClassifier(WarmupCosineRecipe, TaskModule):
    """Image classification with the ConvNeXt training recipe.

    Args:
        net: the network (any model with ``num_classes``; ``layer_ids()`` is needed for layer decay).
        lr: peak learning rate at ``lr_reference_batch`` (paper: 4e-3 at 4096; fine-tuning 5e-5 at 512).
        lr_reference_batch: batch size ``lr`` refers to; the peak lr is ``lr * effective_batch / lr_reference_batch``
            with effective batch = per-device batch x devices x nodes x gradient accumulation. None: no scaling.
        min_lr: final lr of the cosine decay, at the same reference batch (paper: 1e-6).
        weight_decay: AdamW decay on matrices and kernels only (paper: 0.05; fine-tuning 1e-8).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_epochs: linear warm-up length in epochs (paper: 20; may be fractional).
        warmup_steps: warm-up length in optimizer steps; overrides ``warmup_epochs`` when set.
        layer_decay: layer-wise lr decay factor (fine-tuning: 0.8 for 22K->1K, 0.7 for 224->384); None: off.
        layer_decay_type: which parameters share a layer id: ``"group"`` (blocks in groups of the smallest stage
            depth: the official ConvNeXt table, and V2's for B/L/H) or ``"single"`` (every block its own id: V2's
            fine-tuning of A/T, ``TRAINING.md``).
        label_smoothing: label smoothing (paper: 0.1), folded into the soft targets when Mixup/CutMix is on.
        mixup_alpha: Mixup alpha (paper: 0.8; 0 disables).
        cutmix_alpha: CutMix alpha (paper: 1.0; 0 disables).
        mixup_prob: probability of mixing a batch (paper: 1.0, every batch).
        mixup_switch_prob: probability of CutMix instead of Mixup when both are on (paper: 0.5).
        pretrained: weights to start from or to evaluate: a released name (``convnext_tiny.in22k_ft_in1k``;
            ``python -m convnext_pl.weights list``), a URL, ``hf-hub:<repo>`` or a file (official, timm
            or a Lightning checkpoint of this project). Loaded in every stage unless ``--ckpt_path`` is given;
            ``fit`` re-initialises a head of another class count, evaluation refuses one.
        channels_last: convert the network and every batch to channels_last (faster convolutions on GPUs).
        compile: compile the network in place (``nn.Module.compile``), so checkpoint keys stay unchanged.
        grad_checkpointing: recompute block activations in the backward pass to save memory.
        shard_unit: the FSDP2 unit under ``ModelParallelStrategy`` (``configs/trainer/fsdp2.yaml``): ``"block"``
            or ``"stage"``; ignored by every other strategy.
    """

    def __init__(
        self,
        net: nn.Module,
        lr: PositiveFloat = 1e-3,
        lr_reference_batch: PositiveInt | None = None,
        min_lr: NonNegativeFloat = 0.0,
        weight_decay: NonNegativeFloat = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: PositiveFloat = 1e-8,
        warmup_epochs: NonNegativeFloat = 0.0,
        warmup_steps: NonNegativeInt | None = None,
        layer_decay: LayerDecay | None = None,
        layer_decay_type: Literal["group", "single"] = "group",
        label_smoothing: LabelSmoothing = 0.0,
        mixup_alpha: NonNegativeFloat = 0.0,
        cutmix_alpha: NonNegativeFloat = 0.0,
        mixup_prob: ClosedUnitInterval = 1.0,
        mixup_switch_prob: ClosedUnitInterval = 0.5,
        pretrained: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        grad_checkpointing: bool = False,
        shard_unit: ShardUnit = "block",
    ):
        super().__init__(
            net,
            pretrained=pretrained,
            channels_last=channels_last,
            compile=compile,
            grad_checkpointing=grad_checkpointing,
        )
        self.check_recipe(lr, min_lr)
        self.save_hyperparameters(ignore=["net"] if created_in_code() else None)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            # timm's Mixup mixes images and builds the smoothed soft targets in one place (official recipe).
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=mixup_prob,
                switch_prob=mixup_switch_prob,
                mode="batch",
                label_smoothing=label_smoothing,
                num_classes=self.num_classes,
            )
        self.val_metrics = nn.ModuleDict({"val": _accuracy_metrics(self.num_classes)})
        self.val_metrics["val_ema"] = _accuracy_metrics(self.num_classes)
        self.test_metrics = _accuracy_metrics(self.num_classes)

    task_name = "classification"
    monitor = "val/acc1"

    # ----------------------------------------------------------------------------------------------- set-up
    def load_task_weights(self, source: str, stage: str) -> None:
        """Fitting replaces a head of another class count; validate/test/predict evaluate the file as it is, so
        there a head that does not fit the data (a 22K head on 1K data) is refused. Released weights are
        evaluated with their own transform."""
        from convnext_pl.weights.catalogue import CATALOGUE
        from convnext_pl.weights.loading import load_pretrained

        load_pretrained(self.net, source, replace_head=stage == "fit")
        entry = CATALOGUE.get(source)
        if stage != "fit" and entry is not None:
            self._use_the_entrys_eval_transform(entry, stage)

    def prediction_writer(self) -> TopKPredictionWriter:
        return TopKPredictionWriter()

    def _use_the_entrys_eval_transform(self, entry, stage: str) -> None:
        """Evaluate released weights at their own resolution and crop (docs/paper.md §4: crop 0.875 below 384,
        squash at 384 and above), as their reported figure was measured.

        Lightning sets the DataModule up before the LightningModule, so a DataModule with ``image_size`` and
        ``crop_pct`` whose values differ is given the entry's and set up again (its transforms are built there).
        To evaluate at another resolution, pass the file's path or URL instead of its name.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        wanted = {"image_size": entry.image_size, "crop_pct": entry.crop_pct}
        if datamodule is None or not all(hasattr(datamodule, key) for key in wanted):
            return
        if any(getattr(datamodule, key) != value for key, value in wanted.items()):
            for key, value in wanted.items():
                setattr(datamodule, key, value)
            datamodule.setup(stage)
        mode = "squash, no crop" if entry.crop_mode == "squash" else f"center crop {entry.crop_pct}"
        rank_zero_info(
            f"Evaluating {entry.name} with its own transform: {entry.image_size}x{entry.image_size}, {mode}"
        )

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "validate":
            self._report_released_figures("val")

    def on_test_end(self) -> None:
        self._report_released_figures("test")

    def _report_released_figures(self, prefix: str) -> None:
        """Print the measured top-1/top-5 of released weights beside the figure their source reports."""
        entry = getattr(self, "pretrained_entry", None)
        metrics = self.trainer.callback_metrics
        if entry is None or f"{prefix}/acc1" not in metrics:
            return
        reported = entry.reported.get("top1")
        source = (
            f"{reported:.1f} ({entry.reported_at}; {entry.source})" if reported is not None else "no figure"
        )
        rank_zero_info(
            f"{entry.name}: measured top-1 {100 * float(metrics[f'{prefix}/acc1']):.2f}, top-5 "
            f"{100 * float(metrics[f'{prefix}/acc5']):.2f}; the source reports top-1 {source}"
        )

    def shard(self, device_mesh) -> None:
        fully_shard_network(self.net, device_mesh, self.hparams.shard_unit)

    # ------------------------------------------------------------------------------------------------ steps
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # a no-op when the batch already is
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if self.mixup is not None:
            if images.shape[0] % 2:
                raise UserError(
                    f"Mixup/CutMix pairs images within a batch and got an odd batch of {images.shape[0]}; "
                    "use an even data.init_args.batch_size."
                )
            images, soft_targets = self.mixup(images, targets)
            loss = torch.sum(-soft_targets * F.log_softmax(self(images), dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(self(images), targets, label_smoothing=self.hparams.label_smoothing)
        # batch_size given: Lightning would otherwise search the batch for it on every step.
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        for prefix, net in self._validated_networks():
            logits = net(images)
            loss = F.cross_entropy(logits, targets)
            metrics = self.val_metrics[prefix]
            metrics.update(logits, targets)
            self.log(f"{prefix}/loss", loss, prog_bar=prefix == "val", sync_dist=True)
            self.log_dict({f"{prefix}/{k}": m for k, m in metrics.items()}, prog_bar=prefix == "val")

    def test_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        logits = self(images)
        self.test_metrics.update(logits, targets)
        self.log("test/loss", F.cross_entropy(logits, targets), sync_dist=True)
        self.log_dict({f"test/{k}": m for k, m in self.test_metrics.items()})

    def predict_step(self, batch, batch_idx: int) -> dict:
        images, paths = batch
        probs = self(images).softmax(dim=-1)
        top = probs.topk(min(5, self.num_classes), dim=-1)
        return {"paths": list(paths), "probs": top.values.cpu(), "classes": top.indices.cpu()}

    def _validated_networks(self):
        """The raw network, and the EMA copy when an ``EMA`` callback keeps one (both are logged)."""
        yield "val", self.net
        for callback in self.trainer.callbacks if self._trainer is not None else []:
            ema_net = getattr(callback, "averaged_net", None)
            if ema_net is not None:
                yield "val_ema", ema_net

    # -------------------------------------------------------------------------------------------- optimizer
    def layer_ids(self) -> dict[str, int] | None:
        if self.hparams.layer_decay is None:
            return None
        return self.net.layer_ids(self.hparams.get("layer_decay_type", "group"))
