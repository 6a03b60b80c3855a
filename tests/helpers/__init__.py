"""Shared test scaffolding: repository paths, command-line fragments, a quiet trainer and synthetic data,
``main.py`` as a subprocess, notebook execution, generated data sets (``helpers.fakedata``) and test callbacks
that break runs on purpose (``helpers.callbacks``). Fixtures live in ``tests/conftest.py``.
"""

from .cli_args import CPU, DEMO_EPOCHS, QUIET, SHORT, tiny_detection, tiny_segmentation
from .paths import CONFIGS, DIGITS, EXPERIMENTS, NOTEBOOKS, ROOT, TESTS
from .processes import run_main, run_python
from .refusals import refused, run_folders
from .training import atto_classifier, max_difference, quiet_trainer, synthetic_data

__all__ = [
    "CONFIGS",
    "CPU",
    "DEMO_EPOCHS",
    "DIGITS",
    "EXPERIMENTS",
    "NOTEBOOKS",
    "QUIET",
    "ROOT",
    "SHORT",
    "TESTS",
    "atto_classifier",
    "max_difference",
    "quiet_trainer",
    "refused",
    "run_folders",
    "run_main",
    "run_python",
    "synthetic_data",
    "tiny_detection",
    "tiny_segmentation",
]
