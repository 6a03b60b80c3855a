"""``python -m convnext_pl.roadmap``: the roadmap report, or ``train`` for the ladder (paper Sec. 2, Fig. 2).

``python -m convnext_pl.roadmap [--csv FILE] [--plot FILE.png]`` prints params and GFLOPs of every step beside the
paper's numbers (``convnext_pl.roadmap.report``). ``python -m convnext_pl.roadmap train --config <experiment
yaml> --epochs N [--steps 0 5 13] [--out DIR] [--width-multiplier M] [--threads T] [--<cli key> <value> ...]``
trains the steps with one recipe through the project's CLI and writes the measured table (CSV, Markdown) and
chart (``convnext_pl.roadmap.ladder``). The networks are in ``convnext_pl.roadmap.steps``.
"""

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from convnext_pl.errors import OneLineArgumentParser, UserError, one_line_errors
from convnext_pl.roadmap.ladder import LADDER_COLUMNS, run_ladder, step_names
from convnext_pl.roadmap.report import format_table, markdown_table, plot, step_table, write_csv


def build_parser() -> argparse.ArgumentParser:
    """The report's options, and the ``train`` subcommand's; unknown ``train`` options go to the project's CLI."""
    parser = OneLineArgumentParser(prog="python -m convnext_pl.roadmap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", help="also write the report as CSV to this file")
    parser.add_argument("--plot", help="also draw the Figure-2-style chart to this PNG file")
    commands = parser.add_subparsers(dest="command")
    train = commands.add_parser("train", allow_abbrev=False, help="train the steps with one recipe")
    train.add_argument("--config", required=True, help="experiment YAML, e.g. configs/experiment/digits.yaml")
    train.add_argument("--epochs", type=int, required=True, help="epochs per step")
    train.add_argument("--steps", nargs="+", help="step numbers or names (default: the main line 0-13)")
    train.add_argument("--out", default="runs/roadmap", help="folder for the runs and the results table")
    train.add_argument(
        "--width-multiplier", type=float, default=1.0, help="scale every width (0.25 on a CPU)"
    )
    train.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m convnext_pl.roadmap``: the report, or ``train`` for the ladder (see the module docstring)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command != "train":
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        rows = step_table()
        print(format_table(rows))
        if args.csv:
            write_csv(rows, args.csv)
        if args.plot:
            plot(rows, args.plot)
        return
    try:
        names = step_names(args.steps)
    except UserError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with one_line_errors():
        rows = run_ladder(args.config, args.epochs, names, args.out, args.width_multiplier, extra)
    print(markdown_table(rows, LADDER_COLUMNS))
    print(f"\n{len(rows)} steps in {time.perf_counter() - start:.0f} s; table and chart in {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
