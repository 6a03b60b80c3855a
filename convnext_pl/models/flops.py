"""Multiply-accumulate counts in the paper's convention, measured with ``torch.utils.flop_counter``."""

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, image_size: int | tuple[int, int] = 224, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass on a single image.

    The paper's "FLOPs" count one fused multiply-add once, while ``FlopCounterMode`` counts two, so its
    total is halved. Only matmuls and convolutions are counted (norms, activations and pooling are not),
    which is also how the paper's numbers (fvcore) were produced.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = torch.zeros(1, in_chans, h, w)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
