"""``python -m convnext_pl.analysis curves RUN --out FILE.png``: a run's training and validation curves as a PNG."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from convnext_pl.analysis.runs import plot_training_curves, read_metrics
from convnext_pl.errors import UserError


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2, like the training CLI."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see --help.\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (None: ``sys.argv``) and draw the figure it asks for."""
    parser = _OneLineParser(prog="python -m convnext_pl.analysis", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    curves = commands.add_parser(
        "curves", help="Loss and validation accuracy of a run, from its metrics.csv."
    )
    curves.add_argument("run", help="The run's version folder (runs/<name>/version_N) or its metrics.csv.")
    curves.add_argument("--out", required=True, help="PNG file to write (its folder is created).")
    args = parser.parse_args(argv)
    try:
        figure = plot_training_curves(read_metrics(args.run))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
