"""Where runs go and what the command line refuses before a run starts: plain functions, testable without a CLI.

A run of ``python main.py <subcommand> --config <experiment>.yaml`` writes to
``<trainer.default_root_dir>/<run_name>/version_N`` (the run name defaults to the first config file's name; the
next free ``version_N`` keeps earlier runs untouched). The checks here run after parsing and before any folder
exists: the run name and root folder, ``--ckpt_path`` (``last`` resolved to a file), a checkpoint folder that holds
an earlier run's files, and evaluation without trained weights. A ``fit --ckpt_path`` resume with changed settings
is refused once the data is set up and before the run folder gets a file (:class:`ChangedResumeCheck`).
"""

import importlib
import os
import tempfile
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger

from convnext_pl.errors import UserError
from convnext_pl.training.checkpointing import find_last_checkpoint
from convnext_pl.training.cli_checks import release_startup_lines
from convnext_pl.training.resume import refuse_a_changed_resume

DEFAULT_ROOT_DIR = "runs"
EVALUATING = ("validate", "test", "predict")


def run_name(config) -> str:
    """``--run_name``, else the first config file's name, else "default"; a plain name, never a path."""
    paths = config.get("config") or []
    name = config.get("run_name") or (Path(str(paths[0])).stem if paths else "default")
    if "/" in name or "\\" in name or name in (".", "..") or name != name.strip():
        raise UserError(
            f"--run_name {name!r} is not a plain name; give a folder name without '/' or '..' (the run goes to "
            "<trainer.default_root_dir>/<run_name>; set --trainer.default_root_dir to choose where)"
        )
    return name


def root_dir(config) -> Path:
    return Path(config.trainer.get("default_root_dir") or DEFAULT_ROOT_DIR)


def existing_ancestor(folder: Path) -> Path:
    """``folder`` itself if it exists, else its nearest ancestor that does."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_root_dir(root: Path) -> None:
    """Refuse a root folder that cannot be created or written, without creating anything."""
    existing = existing_ancestor(root)
    if not existing.is_dir():
        raise UserError(
            f"trainer.default_root_dir {root} cannot be created: {existing} is a file; choose another folder"
        )
    try:  # os.access says yes to root everywhere (even /proc): try a folder, removed at once
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=existing))
    except OSError as err:
        raise UserError(
            f"trainer.default_root_dir {root} cannot be created or written ({err.strerror} in {existing}); "
            "choose another folder"
        ) from err


def last_checkpoint(root: Path, name: str, dirpath: str | None) -> Path:
    """The newest ``last*.ckpt`` of the run name's versions (or of ``checkpoint.dirpath``, when set)."""
    run_dir = root / name
    candidates = [path for path in [find_last_checkpoint(run_dir)] if path is not None]
    if dirpath:
        candidates += Path(dirpath).glob("last*.ckpt")
    if not candidates:
        raise UserError(
            f"--ckpt_path last found no last.ckpt under {run_dir}/version_*/checkpoints; start the run without "
            "--ckpt_path, or give --run_name / --trainer.default_root_dir of the run to resume"
        )
    return max(candidates, key=lambda path: path.stat().st_mtime)


def resolve_ckpt_path(ckpt_path: str | None, root: Path, name: str, dirpath: str | None) -> str | None:
    """``--ckpt_path`` as the file to load: ``last`` becomes the newest ``last.ckpt`` of the run; a path that does
    not exist, and ``best`` (which only means something inside one process), are refused."""
    if ckpt_path == "best":
        raise UserError(
            "--ckpt_path best refers to the best checkpoint of a fit in the same process; pass the path "
            "printed as 'Best checkpoint' when the run ended"
        )
    if ckpt_path == "last":
        return str(last_checkpoint(root, name, dirpath))
    if (
        ckpt_path
        and "://" not in ckpt_path
        and ckpt_path != "hpc"
        # a file, or the folder of a distributed checkpoint (FSDP2, sharded FSDP: torch.distributed.checkpoint)
        and not (Path(ckpt_path).is_file() or (Path(ckpt_path) / ".metadata").is_file())
    ):
        raise UserError(
            f"--ckpt_path {ckpt_path} does not exist; give a .ckpt file, or 'last' to resume this run"
        )
    return ckpt_path


def refuse_a_used_checkpoint_folder(subcommand: str, dirpath: str | None, ckpt_path: str | None) -> None:
    """A new fit must not write its checkpoints among an earlier run's."""
    if subcommand == "fit" and dirpath and not ckpt_path and any(Path(dirpath).glob("*.ckpt")):
        raise UserError(
            f"checkpoint.dirpath {dirpath} already holds checkpoints of an earlier run; choose an empty "
            "folder, or resume that run with --ckpt_path last"
        )


def refuse_an_earlier_runs_folder(log_dir: str | Path, config_filename: str = "config.yaml") -> None:
    """The default loggers always start a new version folder, but a logger with a fixed version (or none: then
    runs log into default_root_dir) reuses one. Lightning's config saver would refuse only once the run has
    started, and the failed run's CSVLogger would then delete the earlier run's metrics.csv."""
    config_file = Path(log_dir) / config_filename
    if config_file.is_file():
        raise UserError(
            f"{config_file} already exists: that folder holds an earlier run, which this one would "
            "overwrite; set another --trainer.default_root_dir or --run_name, or a new logger version"
        )


def remove_an_empty_run_folder(log_dir: str | Path) -> None:
    """Remove ``log_dir`` (``<root>/<run_name>/version_N``), the folders in it and then the run name's folder if
    they hold no file: what the loggers create when ``fit`` starts, before anything is written into it. Never
    removes a file (``os.rmdir`` refuses a folder that is not empty)."""
    folder = Path(log_dir)
    if not folder.is_dir():
        return
    subfolders = sorted(
        (p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    )
    try:
        for empty in [*subfolders, folder, folder.parent]:  # deepest first
            empty.rmdir()
    except OSError:
        pass  # a file is in it (or an earlier run's folder beside it): keep the rest


class ChangedResumeCheck(Callback):
    """``fit --ckpt_path`` with changed settings refused before the run folder gets a file, and the empty folder
    removed: Lightning's loggers create ``version_N`` at the start of ``fit``'s set-up, before the DataModule is set
    up, and counting this run's optimizer steps needs the set-up data. Callbacks are set up after the DataModule,
    and this one, first in line, before the config-saving callback writes ``config.yaml`` (see
    :func:`convnext_pl.training.resume.refuse_a_changed_resume`)."""

    def __init__(self, ckpt_path: str | Path):
        self.ckpt_path = ckpt_path

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        try:
            refuse_a_changed_resume(trainer, pl_module, self.ckpt_path)
        except UserError:
            if trainer.is_global_zero and log_dir is not None:
                remove_an_empty_run_folder(log_dir)
            raise


def default_loggers(root: str | Path, name: str) -> list[Logger]:
    """CSV always (notebooks read its metrics.csv); TensorBoard beside it, same folder, when installed."""
    csv_logger = CSVLogger(root, name=name)  # next free version_N: earlier runs stay untouched
    loggers: list[Logger] = [csv_logger]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        importlib.import_module("tensorboard")
        loggers.append(TensorBoardLogger(root, name=name, version=csv_logger.version))
    except ImportError:
        pass
    return loggers


def names_trained_weights(model_config) -> bool:
    """Whether the model config names the task's whole weights (``model.init_args.pretrained``): a dense task's
    ``pretrained_backbone`` alone leaves its heads random, so it does not count."""
    if hasattr(model_config, "as_dict"):
        model_config = model_config.as_dict()
    if not isinstance(model_config, dict):
        return False
    init_args = model_config.get("init_args", model_config) or {}
    return bool(init_args.get("pretrained"))


def check_trained_weights(
    subcommand: str, ckpt_path: str | None, model_config, allow_untrained: bool
) -> bool:
    """Refuse to evaluate or predict with randomly initialised weights unless asked to; True: untrained on purpose."""
    if subcommand not in EVALUATING or ckpt_path or names_trained_weights(model_config):
        return False
    if allow_untrained:
        return True
    raise UserError(
        f"{subcommand} needs trained weights: give --ckpt_path <run>/checkpoints/last.ckpt (or 'last') or "
        "--model.pretrained <released name or file> (the whole task's weights; a dense task's pretrained_backbone "
        "leaves its heads random); --allow_untrained evaluates a random network on purpose"
    )


class SaveConfigWhenTheRunStarts(SaveConfigCallback):
    """LightningCLI's ``SaveConfigCallback`` that writes ``config.yaml`` once the run really starts (``on_fit_start``,
    or the start of validate/test/predict), not in ``setup``: every mistake found while the data, the weights
    or a checkpoint are set up (a missing folder, a bogus weights name, a checkpoint of another task) then
    leaves only empty folders, which the CLI removes (:func:`remove_an_empty_run_folder`), never a run folder
    holding a config of a run that did not happen."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pass

    def _save_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        release_startup_lines()  # the run has started: Lightning's start-up lines print now, before its progress
        if not self.already_saved:
            super().setup(trainer, pl_module, trainer.state.stage.value if trainer.state.stage else "fit")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_now(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_now(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_now(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_now(trainer, pl_module)


def remove_a_failed_runs_empty_folder(trainer: pl.Trainer | None, root: Path, existed: Path) -> None:
    """After a run failed: remove its ``version_N`` folder (and the run name's) if no file was written there,
    then the folders from ``root`` (its ``default_root_dir``) up to ``existed``, the nearest one that was there
    before the run, while they are empty: a refused run leaves only what it found. Reads the logger's folder
    without a collective (the other ranks may have failed too)."""
    if trainer is not None and not trainer.is_global_zero:
        return
    logger = trainer.loggers[0] if trainer is not None and trainer.loggers else None
    log_dir = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    if log_dir is not None:
        remove_an_empty_run_folder(log_dir)
    made = [root, *root.parents]
    try:
        for folder in made[: made.index(existed)] if existed in made else []:
            folder.rmdir()  # refuses a folder that is not empty: nothing of anyone's is removed
    except OSError:
        pass
