"""Entry point: ``python main.py fit --config configs/experiment/digits.yaml`` (see README)."""

from convnext_pl.training.cli import cli_main

if __name__ == "__main__":
    cli_main()
