"""The optimizer assembly every task shares: AdamW with per-group lr, the lr-to-batch rule, warm-up schedules.

A task's ``configure_optimizers`` is three calls::

    lr = scaled_lr(hp.lr, effective_batch_size(self.trainer), hp.lr_reference_batch)
    optimizer = build_optimizer(net, lr, hp.weight_decay, layer_ids=net.layer_ids(), layer_decay=hp.layer_decay)
    return {"optimizer": optimizer, "lr_scheduler": per_step(optimizer, warmup_cosine(warmup, total))}

Written here rather than taken from timm because two details matter for reproducing the paper and timm's
helpers do not provide them: (1) the official layer-decay grouping (14 scales for depths 3,3,27,3, see
``models/layer_groups.py``; the dense-prediction ids of ``mmcv_custom/layer_decay_optimizer_constructor.py``
plug in through ``layer_ids``), where timm groups per block; (2) the scale must be applied to each group's
learning rate, while timm only tags groups with ``lr_scale``, which torch schedulers ignore (docs/paper.md §5).
The schedules are ``LambdaLR`` factors by optimizer step: each multiplies its group's own initial lr, so the
layer-decay scales survive the schedule. They are frozen dataclasses rather than closures, so that ``LambdaLR``
saves and restores them with a checkpoint.
"""

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch.nn as nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from convnext_pl.errors import UserError

Schedule = Callable[[int], float]  # optimizer step -> factor of each group's initial lr


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """No weight decay on biases, norm weights, layer-scale gammas and GRN gamma/beta (paper Sec. 4 recipe)."""
    return param.ndim <= 1 or name.endswith((".bias", ".gamma", ".beta"))


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    layer_ids: Mapping[str, int] | None = None,
    default_id: int | None = None,
) -> list[dict]:
    """AdamW parameter groups split by weight decay and, optionally, by layer id for layer-wise lr decay.

    Args:
        model: the network (or a whole task module: parameter names are those of ``model.named_parameters()``).
        weight_decay: decay of the matrices and convolution kernels.
        layer_decay: lr of a layer with id ``i`` is multiplied by ``layer_decay ** (top_id - i)``; None: off.
        layer_ids: parameter name -> layer id (larger ids train faster). None with ``layer_decay``: the model's
            own ``layer_ids()`` (every ConvNeXt and roadmap network has one).
        default_id: id of the parameters ``layer_ids`` leaves out (None: the largest id given, the head's).
            Dense prediction passes the backbone's ids and ``num_layers + 1`` for the neck and heads.

    Returns:
        Groups with ``params``, ``weight_decay``, ``lr_scale`` and ``layer_id`` (plus ``param_names`` to inspect),
        ordered by layer id. :func:`build_optimizer` sets each group's ``lr`` to ``lr * lr_scale``.
    """
    if layer_decay is None:
        layer_ids, default_id = {}, 0
    elif layer_ids is None:
        layer_ids = model.layer_ids()
    default_id = max(layer_ids.values(), default=0) if default_id is None else default_id
    top_id = max([default_id, *layer_ids.values()])
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = is_no_decay(name, param)
        layer_id = layer_ids.get(name, default_id)
        group = groups.setdefault(
            (layer_id, no_decay),
            {
                "params": [],
                "param_names": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (top_id - layer_id) if layer_decay is not None else 1.0,
                "layer_id": layer_id,
            },
        )
        group["params"].append(param)
        group["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    layer_ids: Mapping[str, int] | None = None,
    default_id: int | None = None,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    config_prefix: str = "model",
) -> AdamW:
    """AdamW over :func:`param_groups` with every group's lr set to ``lr * lr_scale``.

    Args:
        model, weight_decay, layer_decay, layer_ids, default_id: as in :func:`param_groups`.
        lr: the peak lr (after :func:`scaled_lr`).
        betas: AdamW betas.
        eps: AdamW epsilon.
        config_prefix: where the user sets these values, for the error message (``model`` or ``model.init_args``).

    Raises:
        UserError: for a value torch refuses (a negative lr, betas outside [0, 1), ...).
    """
    groups = param_groups(model, weight_decay, layer_decay, layer_ids, default_id)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    try:
        # fused: one kernel per step, and it takes a `found_inf` flag on the device, through which the NaN guard
        # (convnext_pl.training.guards.NonFiniteLossGuard) skips a non-finite step without a host-device sync.
        return AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)
    except ValueError as err:  # torch.optim validates its hyperparameters: "Invalid learning rate: -0.1"
        p = config_prefix
        raise UserError(f"{err}; set {p}.lr, {p}.weight_decay, {p}.betas and {p}.eps in range") from err


def effective_batch_size(trainer) -> int:
    """Per-device batch x devices x nodes x gradient accumulation of a Lightning ``trainer`` (its DataModule's
    ``batch_size``). The paper's lr 4e-3 belongs to 4096 (docs/paper.md §4)."""
    batch_size = getattr(trainer.datamodule, "batch_size", None)
    if batch_size is None:
        raise UserError("Cannot compute the effective batch: the DataModule has no batch_size attribute.")
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


def scaled_lr(lr: float, effective_batch: int, reference_batch: int | None) -> float:
    """The linear lr-to-batch rule: ``lr`` belongs to ``reference_batch``; None: ``lr`` as given, unscaled."""
    return lr if reference_batch is None else lr * effective_batch / reference_batch


def per_step(optimizer: Optimizer, schedule: Schedule) -> dict:
    """The ``lr_scheduler`` entry of ``configure_optimizers``: ``schedule`` applied after every optimizer step."""
    return {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"}


def _linear_warmup(step: int, warmup_steps: int, start_ratio: float) -> float:
    # mmcv's "linear" warm-up: 1 - (1 - step / warmup) * (1 - ratio), i.e. from ``ratio`` to 1.
    if step >= warmup_steps:
        return 1.0
    return start_ratio + (1.0 - start_ratio) * step / warmup_steps


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up from 0 to the peak, then cosine decay to ``min_ratio`` (classification, paper Sec. 4).

    Matches the official ``cosine_scheduler``: at ``warmup_steps`` the lr equals the peak, at ``total_steps``
    it equals ``min_lr`` (``min_ratio = min_lr / peak_lr``).
    """

    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class WarmupPoly:
    """mmcv's ``poly`` policy with linear warm-up (segmentation, UperNet: power 1.0, 1500 steps from 1e-6).

    The poly factor ``(1 - step / total_steps) ** power`` (floored at ``min_ratio``) runs from step 0, and the
    warm-up multiplies it, as mmcv's ``LrUpdaterHook`` does.
    """

    warmup_steps: int
    total_steps: int
    power: float = 1.0
    min_ratio: float = 0.0
    warmup_ratio: float = 1e-6

    def __call__(self, step: int) -> float:
        progress = min(1.0, step / max(1, self.total_steps))
        regular = (1.0 - self.min_ratio) * (1.0 - progress) ** self.power + self.min_ratio
        return regular * _linear_warmup(step, self.warmup_steps, self.warmup_ratio)


@dataclass(frozen=True)
class WarmupMultiStep:
    """mmcv's ``step`` policy with linear warm-up (detection, Mask R-CNN 3x: x0.1 at epochs 27 and 33,
    500 warm-up steps from 0.001). ``milestones`` are optimizer steps: convert epochs with the steps per epoch.
    """

    warmup_steps: int
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup_ratio: float = 0.001

    def __call__(self, step: int) -> float:
        regular = self.gamma ** bisect_right(self.milestones, step)  # milestones passed so far
        return regular * _linear_warmup(step, self.warmup_steps, self.warmup_ratio)


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> Schedule:
    """See :class:`WarmupCosine`."""
    return WarmupCosine(warmup_steps, total_steps, min_ratio)


def warmup_poly(
    warmup_steps: int,
    total_steps: int,
    power: float = 1.0,
    min_ratio: float = 0.0,
    warmup_ratio: float = 1e-6,
) -> Schedule:
    """See :class:`WarmupPoly`."""
    return WarmupPoly(warmup_steps, total_steps, power, min_ratio, warmup_ratio)


def warmup_multistep(
    warmup_steps: int, milestones: Sequence[int], gamma: float = 0.1, warmup_ratio: float = 0.001
) -> Schedule:
    """See :class:`WarmupMultiStep`."""
    return WarmupMultiStep(warmup_steps, tuple(sorted(milestones)), gamma, warmup_ratio)
