"""RandAugment in two halves: drawn in the DataLoader worker by timm's own code, applied to whole batches on the
training device.

On the recipe's path RandAugment (timm's ``rand-m9-mstd0.5-inc1``: two layers of 15 ops, each applied with
probability 0.5 at a magnitude drawn from N(9, 0.5)) runs Pillow in the worker: about a third of the fast path's
CPU time per image (``benchmarks/data_throughput.py --stages``). Here the worker only draws. :class:`RandAugmentDraws`
runs timm's ``RandAugment.__call__`` and ``AugmentOp.__call__`` unchanged, with each op's Pillow function swapped for
one that records ``(op, argument)``: the op choice (numpy), each op's probability, the magnitude noise and the random
sign (python's ``random``) are timm's draws, in timm's order, so a sample seed gives the recipe's ops. The draws
leave the worker with the uint8 image (:class:`AugmentedImage`, a few bytes) and :class:`BatchRandAugment` applies
them after the transfer, layer by layer, with one batched kernel call per op drawn (``rand_augment_ops.py``). Nothing
random happens on the device, so a resumed run augments as the uninterrupted one did.
"""

import copy
from functools import partial
from typing import NamedTuple

import torch
from PIL import Image
from timm.data import auto_augment as timm_ops

from convnext_pl.data.augment import rand_augment_ops as kernels
from convnext_pl.errors import UserError

# timm's Pillow op function -> its tensor kernel in rand_augment_ops. Together they cover every op of timm's
# RandAugment lists (_RAND_TRANSFORMS, _RAND_INCREASING_TRANSFORMS): the increasing variants differ only in their
# level functions, which run in the worker.
KERNEL_OF_TIMM_OP = {
    timm_ops.auto_contrast: "auto_contrast",
    timm_ops.equalize: "equalize",
    timm_ops.invert: "invert",
    timm_ops.rotate: "rotate",
    timm_ops.posterize: "posterize",
    timm_ops.solarize: "solarize",
    timm_ops.solarize_add: "solarize_add",
    timm_ops.color: "color",
    timm_ops.contrast: "contrast",
    timm_ops.brightness: "brightness",
    timm_ops.sharpness: "sharpness",
    timm_ops.shear_x: "shear_x",
    timm_ops.shear_y: "shear_y",
    timm_ops.translate_x_rel: "translate_x_rel",
    timm_ops.translate_y_rel: "translate_y_rel",
    timm_ops.translate_x_abs: "translate_x_abs",
    timm_ops.translate_y_abs: "translate_y_abs",
}
KERNELS = tuple(KERNEL_OF_TIMM_OP.values())  # an op id is an index into this
NO_OP = -1  # a layer whose op did not apply (probability), or a layer left after them
GRID_MODES = {Image.Resampling.BICUBIC: "bicubic", Image.Resampling.BILINEAR: "bilinear"}


class AugmentedImage(NamedTuple):
    """A training sample's image as it leaves the worker, with the RandAugment draws the device applies to it.
    DataLoader's collate stacks each field: images [N, 3, S, S], ops [N, L], args [N, L]."""

    image: torch.Tensor  # uint8 [3, S, S], cropped and flipped (any strides: collate stacks it contiguous)
    ops: torch.Tensor  # int64 [L]: ids (into KERNELS) of the ops that applied, in order, then NO_OP
    args: torch.Tensor  # float64 [L]: each op's argument, from timm's level function (0 for none)


def _record(drawn: tuple, *level_args, op_id: int, **_) -> tuple:
    """Stands in for a timm op's image function: appends ``(op id, argument)`` to the draws instead of an image."""
    return (*drawn, (op_id, float(level_args[0]) if level_args else 0.0))


class RandAugmentDraws:
    """uint8 image -> :class:`AugmentedImage`: the draws timm's RandAugment makes, by timm's own code.

    Args:
        rand_augment: the ``timm.data.auto_augment.RandAugment`` of the recipe's transform.

    Raises:
        UserError: the policy is not RandAugment, or has an op without a tensor kernel (timm's ``3a`` ops) or a
            randomly chosen interpolation.
    """

    def __init__(self, rand_augment: timm_ops.RandAugment):
        if not isinstance(rand_augment, timm_ops.RandAugment):
            raise UserError(
                f"the fast pipeline applies RandAugment on the device, not {type(rand_augment).__name__}; use a "
                "rand-... auto_augment string or set data.init_args.fast_pipeline: false"
            )
        recording = []
        for op in rand_augment.ops:
            kernel, resample = KERNEL_OF_TIMM_OP.get(op.aug_fn), op.kwargs["resample"]
            if kernel is None or resample not in GRID_MODES:
                raise UserError(
                    f"the fast pipeline has no device kernel for RandAugment's {op.name} with {resample}; use "
                    "timm's rand-m*-inc* ops with bicubic or bilinear, or set data.init_args.fast_pipeline: false"
                )
            # timm's own __call__, drawing as it does, recording instead of changing pixels.
            op = copy.copy(op)
            op.aug_fn = partial(_record, op_id=KERNELS.index(kernel))
            recording.append(op)
        layers, weights = rand_augment.num_layers, rand_augment.choice_weights
        self.rand_augment = timm_ops.RandAugment(recording, layers, weights)
        first = rand_augment.ops[0]
        self.fill = tuple(first.kwargs["fillcolor"])  # timm's img_mean: the normalisation mean in 0..255
        self.interpolation = GRID_MODES[first.kwargs["resample"]]

    def __call__(self, image: torch.Tensor) -> AugmentedImage:
        drawn = self.rand_augment(())
        padding = [(NO_OP, 0.0)] * (self.rand_augment.num_layers - len(drawn))
        ops, args = zip(*drawn, *padding, strict=True)
        return AugmentedImage(image, torch.tensor(ops), torch.tensor(args, dtype=torch.float64))

    def device_half(self) -> "BatchRandAugment":
        """The :class:`BatchRandAugment` that applies these draws (same fill and interpolation)."""
        return BatchRandAugment(self.fill, self.interpolation)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rand_augment!r})"


class BatchRandAugment:
    """Applies :class:`RandAugmentDraws`' draws to a uint8 batch on its device.

    Layer by layer (the second op sees the first's output, as in timm), the images that drew the same op go through
    its kernel together; an op's argument is per image.

    Args:
        fill: colour of the points the geometric ops bring in from outside the image (timm's ``img_mean``).
        interpolation: ``bicubic`` (the recipe's) or ``bilinear``, for the geometric ops.
    """

    def __init__(self, fill: tuple[int, int, int], interpolation: str = "bicubic"):
        self.fill = tuple(fill)
        self.interpolation = interpolation
        self._fill: dict[torch.device, torch.Tensor] = {}

    def __call__(self, images: torch.Tensor, ops: torch.Tensor, args: torch.Tensor) -> torch.Tensor:
        """images uint8 [N, 3, H, W] (any device), ops int64 [N, L], args float64 [N, L] -> uint8 [N, 3, H, W].

        The grouping is decided on the host, from the op ids; the device gets one permutation per layer (sorting
        the images by op, so that each group is a slice) in one copy, and nothing waits for it: no device sync.
        """
        device, size = images.device, tuple(images.shape[-2:])
        ops = ops.cpu()
        orders = torch.argsort(ops, dim=0, stable=True)  # (N, L): the batch sorted by op id, per layer
        device_orders = orders.to(device, non_blocking=True)
        args = args.to(device, torch.float64, non_blocking=True)
        for layer in range(ops.shape[1]):
            op_ids, counts = torch.unique_consecutive(ops[orders[:, layer], layer], return_counts=True)
            order = device_orders[:, layer]
            batch, values = images[order], args[order, layer]  # a new tensor: the input batch stays as it is
            start = 0
            for op_id, count in zip(op_ids.tolist(), counts.tolist(), strict=True):
                group, start = slice(start, start + count), start + count
                if op_id != NO_OP:
                    batch[group] = self._apply(KERNELS[op_id], batch[group], values[group], size)
            images = torch.empty_like(batch).index_copy_(0, order, batch)  # back in the batch's order
        return images

    def _apply(self, kernel: str, images: torch.Tensor, values: torch.Tensor, size: tuple[int, int]):
        if kernel not in kernels.GEOMETRIC:
            return kernels.PIXELWISE[kernel](images, values)
        matrix, along_x, along_y = kernels.GEOMETRIC[kernel]
        fill = self._fill.get(images.device)
        if fill is None:
            fill = self._fill[images.device] = torch.tensor(
                self.fill, dtype=torch.uint8, device=images.device
            )
        return kernels.affine(images, matrix(values, size), fill, self.interpolation, along_x, along_y)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fill={self.fill}, interpolation={self.interpolation})"


def device_rand_augment(transform) -> BatchRandAugment | None:
    """The device half of the :class:`RandAugmentDraws` step of a composed worker transform (None without one)."""
    steps = getattr(transform, "transforms", [transform])
    return next((step.device_half() for step in steps if isinstance(step, RandAugmentDraws)), None)
