"""The command line: a LightningCLI for ``fit``, ``validate``, ``test`` and ``predict``, callable from Python.

``python main.py fit --config configs/experiment/digits.yaml`` and ``cli_main(["fit", "--config", ...])`` are the
same thing. Beyond LightningCLI's defaults this adds: the data's class count flows into ``model.net`` (written once,
a contradiction is an error), runs land in ``runs/<run_name>/version_N`` with CSV (and TensorBoard, when installed)
logs, a configurable best/last checkpoint callback, and errors the user caused end in one line and exit code 2.
"""

import importlib
import sys
from pathlib import Path

from lightning import LightningDataModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger

from convnext_pl.callbacks import TopKPredictionWriter
from convnext_pl.errors import UserError
from convnext_pl.module import ImageClassifier

USER_ERROR_EXIT_CODE = 2


class ConvNeXtCLI(LightningCLI):
    """LightningCLI with this project's defaults (see the module docstring)."""

    def __init__(self, args=None, run: bool = True, **kwargs):
        kwargs.setdefault("trainer_defaults", {})
        kwargs["trainer_defaults"] = {
            "default_root_dir": "runs",
            "callbacks": [LearningRateMonitor(logging_interval="step"), TopKPredictionWriter()],
            **kwargs["trainer_defaults"],
        }
        super().__init__(
            ImageClassifier,
            LightningDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,  # the module builds its own parameter groups and schedule
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Runs go to <trainer.default_root_dir>/<run_name>/version_N (default: the first config's file name).",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:03d}-acc1_{val/acc1:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self._link_num_classes(config)
        self._run_name = config.get("run_name") or _first_config_stem(config) or "default"

    def _link_num_classes(self, config) -> None:
        """Give ``model.net`` the data's class count unless the config wrote one; a contradiction is an error."""
        net, data = config.model.get("net"), config.get("data")
        if net is None or data is None or "num_classes" not in (net.get("init_args") or {}):
            return
        # A DataModule's __init__ touches no disk, so building one here only to read num_classes is cheap.
        module_name, _, class_name = data.class_path.rpartition(".")
        data_class = getattr(importlib.import_module(module_name), class_name)
        data_classes = getattr(data_class(**data.init_args.as_dict()), "num_classes", None)
        written = net.init_args.num_classes
        if data_classes is None:
            return
        if written is None:
            net.init_args.num_classes = data_classes
        elif written != data_classes:
            raise UserError(
                f"model.net.init_args.num_classes is {written} but the data has {data_classes} classes; "
                "remove num_classes from the model config (it follows the data)."
            )

    def instantiate_trainer(self, **kwargs):
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = self._default_loggers(trainer_config.get("default_root_dir") or "runs")
        return super().instantiate_trainer(**kwargs)

    def _default_loggers(self, root: str) -> list[Logger]:
        """CSV always (notebooks read its metrics.csv); TensorBoard beside it, same folder, when installed."""
        csv_logger = CSVLogger(root, name=self._run_name)  # next free version_N: earlier runs stay untouched
        loggers: list[Logger] = [csv_logger]
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            importlib.import_module("tensorboard")
            loggers.append(TensorBoardLogger(root, name=self._run_name, version=csv_logger.version))
        except ImportError:
            pass
        return loggers

    def after_fit(self) -> None:
        trainer = self.trainer
        log_dir = trainer.log_dir  # a collective under DDP/FSDP (a broadcast): every rank must ask for it
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("val")}
        lines = ["", "Validation metrics after the last epoch:"]
        lines += [f"  {k:<14} {v:.4f}" for k, v in metrics.items()]
        if trainer.checkpoint_callback is not None:
            lines.append(f"Best checkpoint:  {trainer.checkpoint_callback.best_model_path or '-'}")
            lines.append(f"Last checkpoint:  {trainer.checkpoint_callback.last_model_path or '-'}")
        lines.append(f"Logs and config:  {log_dir}")
        print("\n".join(lines), flush=True)


def _first_config_stem(config) -> str | None:
    paths = config.get("config") or []
    return Path(str(paths[0])).stem if paths else None


def _one_line(error: BaseException) -> str:
    # An error raised in a DataLoader worker is re-raised with the worker's traceback in its message;
    # the user's sentence is its last line.
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    prefix = f"{UserError.__module__}.{UserError.__name__}: "
    return last.removeprefix(prefix)


def cli_main(args: list[str] | None = None, run: bool = True) -> ConvNeXtCLI:
    """Run the CLI (``args`` as on the command line; None reads ``sys.argv``) and return it.

    Errors the user caused print ``error: <one sentence>`` to stderr and raise ``SystemExit(2)``.
    """
    try:
        return ConvNeXtCLI(args=args, run=run)
    except UserError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
