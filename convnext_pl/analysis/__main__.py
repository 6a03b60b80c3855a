"""``python -m convnext_pl.analysis curves RUN --out FILE.png``: a run's training and validation curves as a PNG."""

from collections.abc import Sequence
from pathlib import Path

from convnext_pl.analysis.runs import plot_training_curves, read_metrics
from convnext_pl.errors import OneLineArgumentParser, one_line_errors


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (None: ``sys.argv``) and draw the figure it asks for."""
    parser = OneLineArgumentParser(prog="python -m convnext_pl.analysis", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    curves = commands.add_parser(
        "curves", help="Loss and validation accuracy of a run, from its metrics.csv."
    )
    curves.add_argument("run", help="The run's version folder (runs/<name>/version_N) or its metrics.csv.")
    curves.add_argument("--out", required=True, help="PNG file to write (its folder is created).")
    args = parser.parse_args(argv)
    with one_line_errors():
        figure = plot_training_curves(read_metrics(args.run))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
