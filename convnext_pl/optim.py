"""The paper's optimisation recipe: AdamW parameter groups, layer-wise lr decay, warm-up + cosine schedule.

Written here rather than taken from timm because two details matter for reproducing the paper and timm's
helpers do not provide them: (1) the official layer-decay grouping (14 scales for depths 3,3,27,3, see
``models/layer_groups.py``), where timm groups per block; (2) the scale must be applied to each group's
learning rate, while timm only tags groups with ``lr_scale``, which torch schedulers ignore (spec, pitfalls).
"""

import math
from dataclasses import dataclass

import torch.nn as nn


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """No weight decay on biases, norm weights, layer-scale gammas and GRN gamma/beta (paper Sec. 4 recipe)."""
    return param.ndim <= 1 or name.endswith((".bias", ".gamma", ".beta"))


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW parameter groups split by weight decay and, optionally, by layer id for layer-wise lr decay.

    Args:
        model: the network; with ``layer_decay`` it must provide ``layer_ids()`` (name -> id, head largest).
        weight_decay: decay of the matrices and convolution kernels.
        layer_decay: lr of a layer with id ``i`` is multiplied by ``layer_decay ** (max_id - i)``; None: off.

    Returns:
        Groups with ``params``, ``weight_decay``, ``lr_scale`` and ``layer_id`` (plus ``param_names`` to inspect).
        The caller sets each group's ``lr`` to ``peak_lr * lr_scale``.
    """
    layer_ids = model.layer_ids() if layer_decay is not None else {}
    max_id = max(layer_ids.values(), default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = is_no_decay(name, param)
        layer_id = layer_ids.get(name, max_id)
        group = groups.setdefault(
            (layer_id, no_decay),
            {
                "params": [],
                "param_names": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (max_id - layer_id) if layer_decay is not None else 1.0,
                "layer_id": layer_id,
            },
        )
        group["params"].append(param)
        group["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


@dataclass(frozen=True)
class WarmupCosine:
    """Per-iteration multiplier of the peak lr: linear warm-up from 0, then cosine decay to ``min_ratio``.

    Matches the official ``cosine_scheduler``: at ``warmup_steps`` the lr equals the peak, at ``total_steps``
    it equals ``min_lr`` (``min_ratio = min_lr / peak_lr``). Used as a ``LambdaLR`` factor, which multiplies each
    group's own initial lr, so the layer-decay scale is applied to every group.
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
