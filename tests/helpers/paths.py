"""Where things are in the repository, for tests that run configs, notebooks or ``main.py``."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
CONFIGS = ROOT / "configs"
EXPERIMENTS = CONFIGS / "experiment"
NOTEBOOKS = ROOT / "notebooks"
# The demo experiment (8x8 digits upsampled to 16x16, convnext_atto): the fastest real run of the CLI.
DIGITS = str(EXPERIMENTS / "digits.yaml")
