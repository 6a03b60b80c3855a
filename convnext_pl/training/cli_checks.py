"""What the command line checks and quiets before a run, as plain functions: config files that are not YAML, an
image size the network's stride reduces to nothing, a class named by its path, and start-up noise that tells
the user nothing (``convnext_pl.training.cli`` calls them)."""

import importlib
import logging
import warnings
from pathlib import Path

import yaml

from convnext_pl.errors import UserError


def _drop_lightning_tips(record: logging.LogRecord) -> bool:
    # Lightning advertises its cloud logger and model registry on every run (rank_zero_info "💡 Tip: ..."):
    # nothing a user of this template can act on.
    return not str(record.msg).startswith("💡 Tip:")


def quiet_known_noise() -> None:
    """Filter what the demo printed that tells the user nothing, each at the narrowest place."""
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_lightning_tips not in rank_zero_logger.filters:
        rank_zero_logger.addFilter(_drop_lightning_tips)
    # torch 2.14 deprecates isinstance(x, LeafSpec); Lightning 2.6.6's own _pytree helper still does it, once
    # per run. Nothing here calls it; the next Lightning release fixes it.
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", module=r"lightning\.pytorch"
    )


class _HeldStartupLines(logging.Filter):
    """Holds Lightning's information lines ("Seed set to 0", "GPU available ...") until the run really starts:
    a mistake found while the Trainer, the data or the weights are set up then prints its one ``error:`` line
    alone. Warnings and errors pass at once. Installed on the handlers Lightning gives its two loggers."""

    def __init__(self):
        super().__init__()
        self.holding, self.held = False, []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.holding and record.levelno < logging.WARNING:
            self.held.append(record)
            return False
        return True


_STARTUP = _HeldStartupLines()
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def _lightning_handlers() -> list[logging.Handler]:
    return [handler for name in _LIGHTNING_LOGGERS for handler in logging.getLogger(name).handlers]


def hold_startup_lines() -> None:
    """Start holding Lightning's information lines (see :class:`_HeldStartupLines`)."""
    for handler in _lightning_handlers():
        if _STARTUP not in handler.filters:
            handler.addFilter(_STARTUP)
    _STARTUP.holding, _STARTUP.held = True, []


def release_startup_lines(print_them: bool = True) -> None:
    """The run has started (or failed, ``print_them=False``): print the held lines in order, then let lines pass."""
    held, _STARTUP.holding, _STARTUP.held = _STARTUP.held, False, []
    if print_them:
        for record in held:
            logging.getLogger(record.name).handle(record)


def import_class(class_path: str) -> type:
    module_name, _, class_name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def check_image_size(model, datamodule) -> None:
    """Refuse an image size the network's total stride (stem patch x the downsampling layers) reduces to nothing:
    the last stage's map would be empty, and the first forward pass would fail deep in a convolution."""
    size, stride = (
        getattr(datamodule, "image_size", None),
        getattr(getattr(model, "net", None), "total_stride", None),
    )
    if isinstance(size, int) and isinstance(stride, int) and size < stride:
        raise UserError(
            f"data.init_args.image_size {size} is smaller than the network's total stride {stride} (stem "
            f"patch_size x downsampling); the smallest valid image size is {stride}, or use a smaller "
            "model.init_args.net.init_args.patch_size"
        )


def check_config_files(args: list[str]) -> None:
    """Refuse a ``--config`` file that is not valid YAML (naming the file and line: jsonargparse names neither), an
    empty one, or a folder."""
    values = [value for flag, value in zip(args, args[1:], strict=False) if flag in ("--config", "-c")]
    values += [arg.removeprefix("--config=") for arg in args if arg.startswith("--config=")]
    for value in values:
        if Path(value).is_dir():
            raise UserError(
                f"--config {value} is a folder; give a YAML file, e.g. configs/experiment/digits.yaml"
            )
        if not Path(value).is_file() and ":" not in value:  # an inline YAML string has a colon
            raise UserError(f"--config {value} does not exist; give the path of a YAML file")
        if not Path(value).is_file():
            continue  # an inline YAML string
        try:
            if yaml.safe_load(Path(value).read_text()) is None:
                raise UserError(f"config file {value} is empty; give a YAML file with settings")
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(
                f"config file {value} is not valid YAML ({err.problem}{where}); fix its syntax"
            ) from err
