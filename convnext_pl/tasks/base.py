"""The task spine: what every task's LightningModule shares, written once.

A task (classification, segmentation, detection, ...) subclasses :class:`TaskModule` and writes its network
call, its steps and its metrics. The base owns the rest, so a guarantee given to one task holds for all:

- **weights to start from**, one vocabulary: ``pretrained`` is the task's whole released or trained weights
  (a catalogue name, URL, ``hf-hub:`` id or file), ``pretrained_backbone`` the ImageNet start of a dense task's
  backbone; both are loaded once, in ``setup``, and skipped when ``--ckpt_path`` restores the weights anyway;
- **the resumable schedule** and its changed-settings check (:class:`~convnext_pl.training.resume.ResumableSchedule`),
  a checkpoint of another network refused in one sentence, and one of another task refused naming both tasks;
- **the class-count check** against the DataModule;
- **the monitor metric and checkpoint file names** (:attr:`monitor`, :attr:`monitor_mode`), which the CLI gives
  its checkpoint callback unless a config says otherwise;
- **the predictions writer** (:meth:`prediction_writer`), installed through ``configure_callbacks``;
- ``channels_last``, ``compile`` and gradient checkpointing, applied to what each task names
  (:meth:`compiled_module`, :meth:`backbone_module`).

``docs/extending.md`` walks through adding a task on this base.
"""

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from lightning import LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from convnext_pl.errors import UserError
from convnext_pl.training.resume import ResumableSchedule, refuse_a_checkpoint_that_does_not_fit

# The checkpoint key naming the task that wrote it: {"task": "segmentation", "class": "SemanticSegmenter"}.
TASK_KEY = "convnext_pl_task"


def created_in_code() -> bool:
    """True unless LightningCLI is instantiating the module being built (the CLI records the net's config, so
    ``save_hyperparameters`` keeps it; built in code, the net is an object and is left out)."""
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    return _given_hyperparameters.get() is None


def task_of_checkpoint(checkpoint: dict) -> tuple[str, str] | None:
    """``(task, class name)`` of the task that wrote ``checkpoint``; for a checkpoint written before the task was
    stored, the class name from the CLI's hyperparameters, with the task looked up. None: not known."""
    stored = checkpoint.get(TASK_KEY)
    if isinstance(stored, dict) and "task" in stored:
        return str(stored["task"]), str(stored.get("class", "?"))
    class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if isinstance(class_path, str):
        name = class_path.rpartition(".")[2]
        task = TASK_NAMES.get(name)
        return (task, name) if task else None
    return None


# Class name -> task name of this project's tasks (for checkpoints that predate TASK_KEY).
TASK_NAMES = {
    "ImageClassifier": "classification",
    "SemanticSegmenter": "segmentation",
    "MaskRCNNDetector": "detection",
    "MaskedAutoencoderPretrainer": "pre-training",
}


def refuse_another_tasks_checkpoint(module_class: type, checkpoint: dict, path: Any) -> None:
    """One sentence when ``checkpoint`` was written by another task than ``module_class``'s."""
    found = task_of_checkpoint(checkpoint)
    task = getattr(module_class, "task_name", None)
    if found is None or task is None or found[0] == task:
        return
    raise UserError(
        f"checkpoint {path} is a {found[0]} checkpoint ({found[1]}) and this run is {task} "
        f"({module_class.__name__}); give a {task} checkpoint, or run the {found[0]} config it was trained with"
    )


class TaskModule(ResumableSchedule, LightningModule):
    """The base of every task's LightningModule (see the module docstring).

    Subclasses set :attr:`task_name`, :attr:`monitor` (and :attr:`monitor_mode`), call ``super().__init__`` with
    the shared options, then ``self.save_hyperparameters(ignore=["net"] if created_in_code() else None)``, and
    implement :meth:`load_task_weights` (and :meth:`backbone_module` for ``pretrained_backbone``).

    Args:
        net: the task's network, built from YAML (``net: {class_path: ..., init_args: ...}``); it has
            ``num_classes`` unless the task has no classes.
        pretrained: the task's whole weights to start from or to evaluate.
        pretrained_backbone: ImageNet weights of the backbone (dense tasks), loaded when ``fit`` starts without
            ``pretrained``.
        channels_last: convert the network (and image batches) to channels_last (faster convolutions on GPUs).
        compile: compile :meth:`compiled_module` in place (``nn.Module.compile``): checkpoint keys stay unchanged.
        grad_checkpointing: recompute the backbone's block activations in the backward pass to save memory.
    """

    task_name: ClassVar[str]
    # The validation metric the best checkpoint ranks by, and whether higher is better.
    monitor: ClassVar[str]
    monitor_mode: ClassVar[str] = "max"
    # What the data's classes are called in the class-count sentence.
    class_kind: ClassVar[str] = "classes"

    def __init__(
        self,
        net: nn.Module,
        pretrained: str | None = None,
        pretrained_backbone: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.net = net
        self.num_classes = getattr(net, "num_classes", None)
        self._start_weights = {"pretrained": pretrained, "pretrained_backbone": pretrained_backbone}
        self._channels_last, self._compile = channels_last, compile
        self._start_weights_loaded = False
        self.pretrained_entry = None  # the catalogue entry of `pretrained`, when it is a released name
        if grad_checkpointing:
            target = self.backbone_module()
            if not hasattr(target, "set_grad_checkpointing"):
                raise UserError(
                    f"model.init_args.grad_checkpointing: {type(target).__name__} cannot recompute its blocks; "
                    "set it false"
                )
            target.set_grad_checkpointing(True)

    # --------------------------------------------------------------------------------- what a task names
    def backbone_module(self) -> nn.Module:
        """The ConvNeXt inside the task's network: where ``pretrained_backbone`` and gradient checkpointing act."""
        return self.net

    def compiled_module(self) -> nn.Module:
        """What ``compile`` compiles (a detector compiles its backbone: torch cannot trace the detection heads'
        data-dependent shapes without graph breaks)."""
        return self.net

    def load_task_weights(self, source: str, stage: str) -> None:
        """Load the task's whole weights ``source`` into ``self.net`` (released name, URL, ``hf-hub:`` or file)."""
        raise NotImplementedError

    def prediction_writer(self) -> BasePredictionWriter | None:
        """The callback that writes what ``predict_step`` returns (None: the task writes nothing)."""
        return None

    # -------------------------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        if self.num_classes is not None:
            self.refuse_another_class_count()
        self.load_start_weights(stage)

    def refuse_another_class_count(self) -> None:
        """One sentence when the DataModule has another class count than the network (``num_classes`` set by hand
        in a config, or a network built in code for other data)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.num_classes:
            raise UserError(
                f"The data has {data_classes} {self.class_kind} but the {self.task_name} network has "
                f"{self.num_classes}; remove num_classes from the model's net config (it follows the data) or "
                f"set it to {data_classes}."
            )

    def load_start_weights(self, stage: str) -> None:
        """Load ``pretrained`` (any stage) or, when fitting starts without it, ``pretrained_backbone``; once, and
        not when ``--ckpt_path`` restores the weights right after ``setup`` (no download for nothing)."""
        if self._start_weights_loaded or (self._trainer is not None and self.trainer.ckpt_path):
            return
        whole, backbone = self._start_weights["pretrained"], self._start_weights["pretrained_backbone"]
        if whole:
            self.load_task_weights(str(whole), stage)
            from convnext_pl.weights.catalogue import CATALOGUE

            self.pretrained_entry = CATALOGUE.get(str(whole))
            rank_zero_info(f"Loaded {self.task_name} weights from {whole}")
        elif backbone and stage == "fit":
            from convnext_pl.weights.dense import load_backbone_weights

            load_backbone_weights(self.backbone_module(), str(backbone))
            rank_zero_info(f"Loaded backbone weights from {backbone}")
        self._start_weights_loaded = True

    def configure_model(self) -> None:
        if self._channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.device_mesh is not None:  # only ModelParallelStrategy sets a mesh
            self.shard(self.device_mesh)
        if self._compile and not getattr(self, "_compiled", False):
            self.compiled_module().compile()  # in place: parameter names do not gain `_orig_mod.`
            self._compiled = True

    def shard(self, device_mesh) -> None:
        """Shard the network with FSDP2 under ``ModelParallelStrategy``; tasks that support it override this."""
        raise UserError(
            f"ModelParallelStrategy (FSDP2) is not supported by the {self.task_name} task; use DDP "
            "(configs/trainer/ddp.yaml)"
        )

    def configure_callbacks(self):
        writer = self.prediction_writer()
        trainer_callbacks = self.trainer.callbacks if self._trainer is not None else []
        if writer is None or any(isinstance(c, type(writer)) for c in trainer_callbacks):
            return []  # a writer of the same kind configured in trainer.callbacks (its own folder) is kept
        return [writer]

    # --------------------------------------------------------------------------------------- checkpoints
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Before the weights load: another task's checkpoint, or one of another network or class count, is one
        # sentence rather than the key list load_state_dict prints. Its weights replace `pretrained`.
        path = self._trainer.ckpt_path if self._trainer is not None else "being loaded"
        refuse_another_tasks_checkpoint(type(self), checkpoint, path)
        self._start_weights_loaded = True
        refuse_a_checkpoint_that_does_not_fit(self, checkpoint, what=f"{self.task_name} model")
        self.remember_saved_schedule(checkpoint)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # the schedule settings
        checkpoint[TASK_KEY] = {"task": self.task_name, "class": type(self).__name__}

    def on_train_start(self) -> None:
        if self._schedule_info:  # what the lr schedule was built from, beside the run's hyperparameters
            for logger in self.loggers:
                logger.log_hyperparams(self._schedule_info)
        if self.trainer.ckpt_path:
            self._apply_optimizer_options()

    def _apply_optimizer_options(self) -> None:
        """Lightning restores the optimizer's parameter groups from the checkpoint, options included; a resume
        whose weight decay, betas or eps the CLI let change (``--accept_changed_settings``) must train with the
        given ones. Groups without decay (1-D parameters) keep 0; the lr follows the restored schedule."""
        hp = self.hparams
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                if "weight_decay" in hp and group.get("weight_decay", 0.0) > 0.0:
                    group["weight_decay"] = hp.weight_decay
                for key in ("betas", "eps"):
                    if key in hp and key in group:
                        group[key] = tuple(hp[key]) if key == "betas" else hp[key]


def relative_output_path(path: str | Path, root: str | Path | None, suffix: str) -> Path:
    """Where the output for input ``path`` goes under a writer's folder: its path relative to ``root`` (the folder
    ``predict`` read) with ``suffix``, so ``a/img.jpg`` and ``b/img.jpg`` never share an output; an input outside
    ``root`` keeps its whole path below the folder."""
    path = Path(path)
    try:
        relative = path.resolve().relative_to(Path(root).resolve()) if root is not None else None
    except ValueError:
        relative = None
    if relative is None:
        relative = Path(*path.resolve().parts[1:])  # without the root "/": never outside the output folder
    return relative.with_suffix(suffix)
