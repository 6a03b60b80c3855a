"""Parameters and GFLOPs of UperNet + ConvNeXt: ``python -m convnext_pl.models.seg_summary [--backbone NAME]``.

Counted as the official numbers were (docs/paper.md §6): the whole model with the auxiliary head for the
parameters; the inference forward (decode head only, as mmseg's ``forward_dummy``) for the multiply-adds, at
the evaluation scale (2048x512 for the 512 crops, 2560x640 for the 640 crops). Built on the meta device.
"""

import argparse
import sys

import torch

from convnext_pl.errors import UserError
from convnext_pl.models.flops import count_macs
from convnext_pl.models.upernet import create_upernet

# The official ADE20K rows (facebookresearch/ConvNeXt semantic_segmentation/README.md): backbone -> (input
# (H, W) of the FLOPs count, published #params in millions, published GFLOPs).
PUBLISHED = {
    "convnext_tiny": ((2048, 512), 60, 939),
    "convnext_small": ((2048, 512), 82, 1027),
    "convnext_base": ((2048, 512), 122, 1170),
    "convnext_large": ((2560, 640), 235, 2458),
    "convnext_xlarge": ((2560, 640), 391, 3335),
}


def seg_summary(
    backbone: str, num_classes: int = 150, size: tuple[int, int] = (2048, 512)
) -> tuple[int, float]:
    """(parameters with the auxiliary head, GFLOPs of one inference pass at ``size`` (H, W))."""
    with torch.device("meta"):
        model = create_upernet(backbone, num_classes=num_classes)
        macs = count_macs(model, size)
    return sum(p.numel() for p in model.parameters()), macs / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convnext_pl.models.seg_summary", description=__doc__)
    parser.add_argument("--backbone", help="one backbone (default: the official rows, against their figures)")
    parser.add_argument("--num-classes", type=int, default=150, help="classes (default 150, ADE20K)")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="input size")
    args = parser.parse_args(argv)
    rows = [args.backbone] if args.backbone else list(PUBLISHED)
    print(f"{'UperNet backbone':<18} {'input':>9} {'parameters':>13} {'GFLOPs':>9}   published")
    try:
        for name in rows:
            published_size, params_m, gflops = PUBLISHED.get(name, ((2048, 512), None, None))
            size = tuple(args.size) if args.size else published_size
            params, measured = seg_summary(name, args.num_classes, size)
            comparable = params_m and args.num_classes == 150 and size == published_size
            published = f"{params_m}M, {gflops}G" if comparable else "-"
            print(
                f"{name:<18} {size[0]:>4}x{size[1]:<4} {params:>13,} {measured:>9.1f}   {published}",
                flush=True,
            )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
