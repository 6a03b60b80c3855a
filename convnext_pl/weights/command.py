"""``python -m convnext_pl.weights``: ``list`` prints the released weights as a table, ``download`` fills the cache
(for compute nodes without internet)."""

import argparse
import sys

import torch

from convnext_pl.errors import UserError
from convnext_pl.weights.catalogue import Weights, list_weights
from convnext_pl.weights.download import resolve
from convnext_pl.weights.loading import read_state_dict


def _format_table(entries: list[Weights]) -> str:
    rows = [("name", "params", "res", "top-1", "classes", "source")]
    params = {}
    for entry in entries:
        key = (entry.arch.factory, tuple(sorted(entry.arch.kwargs.items())))
        if key not in params:
            with torch.device("meta"):  # counts without allocating or initialising
                params[key] = sum(p.numel() for p in entry.build().parameters())
        # top-1 for classification; a dense-prediction file shows its first figure with the metric's name
        metric, value = next(iter(entry.reported.items()), (None, None))
        top1 = entry.reported.get("top1")
        rows.append((
            entry.name,
            f"{params[key] / 1e6:.1f}M",
            str(entry.image_size),
            f"{top1:.1f}" if top1 is not None else f"{value:.1f} {metric}" if value is not None else "-",
            str(entry.num_classes or "-"),
            f"hf-hub:{entry.hf_hub_id}" if entry.hf_hub_id else entry.url,  # what a load by name downloads
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    """``list [--filter TEXT]`` prints the catalogue; ``download NAME...`` fills the cache and prints the paths."""
    parser = argparse.ArgumentParser(prog="python -m convnext_pl.weights", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="print the released weights as a table")
    listing.add_argument("--filter", default=None, help="only names containing this text (e.g. tiny, in22k)")
    listing.add_argument("--task", default=None, help="classification, segmentation or detection")
    fetching = commands.add_parser("download", help="download into the cache (TORCH_HOME / HF_HOME)")
    fetching.add_argument("names", nargs="+", help="released names, URLs or hf-hub:<repo>")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            entries = list_weights(args.filter, args.task)
            if not entries:
                raise UserError(f"no released weights match '{args.filter}'; run 'list' without --filter")
            print(_format_table(entries))
        else:
            for name in args.names:
                print(f"{name}: {resolve(name, check=read_state_dict).path}", flush=True)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
