"""Parameters, GFLOPs and feature-map sizes of a model: ``python -m convnext_pl.models.summary --model NAME``.

Models named by string are built on the meta device: shapes and operation counts need no memory or
arithmetic, so even ConvNeXt V2-Huge (660M parameters) is summarised in about a second.
"""

import argparse
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from convnext_pl.errors import UserError
from convnext_pl.models.flops import count_macs
from convnext_pl.models.registry import create_model, list_models


@dataclass(frozen=True)
class ModelSummary:
    """What a model costs and what it produces at one input size.

    Args:
        name: the registered model name (or the class name of a model passed as a module).
        params: exact number of parameters.
        gmacs: paper-convention GFLOPs, i.e. multiply-adds / 1e9 (see ``flops.count_macs``).
        image_size: side of the square input the counts refer to.
        feature_shapes: ``(C, H, W)`` of the feature map after each stage (``forward_stages``).
        total_stride: input pixels per final feature-map pixel along each side.
    """

    name: str
    params: int
    gmacs: float
    image_size: int
    feature_shapes: tuple[tuple[int, int, int], ...]
    total_stride: int

    def __str__(self) -> str:
        lines = [
            f"{self.name} at {self.image_size}x{self.image_size}",
            f"  parameters   {self.params:,}",
            f"  GFLOPs       {self.gmacs:.2f}  (multiply-adds / 1e9, the paper's convention)",
            f"  total stride {self.total_stride}",
            "  stage  channels  feature map",
        ]
        for i, (c, h, w) in enumerate(self.feature_shapes):
            lines.append(f"  {i:<5}  {c:<8}  {h}x{w}")
        return "\n".join(lines)

    def table_row(self, name_width: int = 24) -> str:
        """One line of the ``--all`` table: name, parameters, GFLOPs, final feature map (C x H x W)."""
        c, h, w = self.feature_shapes[-1]
        return f"{self.name:<{name_width}} {self.params:>13,} {self.gmacs:>9.2f}   {c}x{h}x{w}"


def table_header(name_width: int = 24) -> str:
    """The column titles matching :meth:`ModelSummary.table_row`."""
    return f"{'model':<{name_width}} {'parameters':>13} {'GFLOPs':>9}   final map"


def model_summary(
    model_or_name: nn.Module | str,
    image_size: int = 224,
    in_chans: int = 3,
    num_classes: int = 1000,
    patch_size: int | None = None,
) -> ModelSummary:
    """Summarise a model, given as a module or by its registered name.

    Args:
        model_or_name: a model with ``forward_stages`` and ``total_stride`` (left where it is, its device and
            mode restored), or a name for :func:`create_model` (built on the meta device).
        image_size: side of the square input.
        in_chans: input channels.
        num_classes: classifier outputs when building by name (ignored for a module).
        patch_size: stem patch size when building by name (None: the variant's default).

    Raises:
        UserError: an unknown model name, or an image smaller than the model's total stride.
    """
    if isinstance(model_or_name, str):
        name, device = model_or_name, torch.device("meta")
        with device:
            model = create_model(name, num_classes=num_classes, in_chans=in_chans, patch_size=patch_size)
    else:
        model, name = model_or_name, type(model_or_name).__name__
        device = next(model.parameters()).device
    if image_size < model.total_stride:
        raise UserError(
            f"Image size {image_size} is smaller than the total stride {model.total_stride} of {name}; "
            "use a larger --image-size or a smaller --patch-size."
        )
    # The device context puts count_macs' and our probe input next to the weights (meta for named models).
    with device:
        macs = count_macs(model, image_size, in_chans)
        features = _stage_shapes(model, image_size, in_chans)
    return ModelSummary(
        name=name,
        params=sum(p.numel() for p in model.parameters()),
        gmacs=macs / 1e9,
        image_size=image_size,
        feature_shapes=features,
        total_stride=model.total_stride,
    )


def _stage_shapes(model: nn.Module, image_size: int, in_chans: int) -> tuple[tuple[int, int, int], ...]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps = model.forward_stages(torch.zeros(1, in_chans, image_size, image_size))
    finally:
        model.train(was_training)
    return tuple((m.shape[1], m.shape[2], m.shape[3]) for m in maps)  # (1, C, H, W) -> (C, H, W)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m convnext_pl.models.summary", description="Parameters, GFLOPs and feature-map sizes."
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a registered model name, e.g. convnext_tiny")
    which.add_argument("--all", action="store_true", help="one line per registered model")
    parser.add_argument("--image-size", type=int, default=224, help="side of the square input (default 224)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    parser.add_argument(
        "--patch-size", type=int, default=None, help="stem patch size (default: the variant's)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the summary of one model, or the ``--all`` table; return the exit code."""
    args = _parse_args(argv)
    options = dict(image_size=args.image_size, num_classes=args.num_classes, patch_size=args.patch_size)
    try:
        if args.all:
            names = list_models()
            width = max(len(name) for name in names)
            print(table_header(width))
            for name in names:  # each row is printed as soon as it is measured (about a second per model)
                print(model_summary(name, **options).table_row(width), flush=True)
        else:
            print(model_summary(args.model, **options))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2  # the exit code argparse uses for bad arguments
    return 0


if __name__ == "__main__":
    sys.exit(main())
