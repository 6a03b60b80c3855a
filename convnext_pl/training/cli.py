"""The command line: a LightningCLI for ``fit``, ``validate``, ``test`` and ``predict``, callable from Python.

``python main.py fit --config configs/experiment/digits.yaml`` and ``cli_main(["fit", "--config", ...])`` are the
same thing. Beyond LightningCLI's defaults this adds: the data's class count flows into ``model.net`` (written once,
a contradiction is an error), runs land in ``runs/<run_name>/version_N`` with CSV (and TensorBoard, when installed)
logs, a configurable best/last checkpoint callback, and errors the user caused end in one line and exit code 2.
For interrupted runs (see docs/troubleshooting.md): checkpoints are written atomically, ``last.ckpt`` is refreshed
every ``--checkpoint.every_n_train_steps`` and on SIGTERM (exit code 143), ``--ckpt_path last`` finds the newest
``last.ckpt`` of the run name, and a non-finite loss stops the run (``--nonfinite_loss.action skip`` skips the step).
"""

import pickle
import signal
import sys
from pathlib import Path

import torch
import yaml
from lightning import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from convnext_pl.errors import PARSER_HINT, UserError, exit_with_error, one_line_errors, parser_error_line
from convnext_pl.tasks.base import refuse_another_tasks_checkpoint
from convnext_pl.tasks.classification import ImageClassifier
from convnext_pl.training import runs
from convnext_pl.training.checkpoint_io import AtomicCheckpointIO, checkpoint_load_error
from convnext_pl.training.checkpointing import (
    ResumableCheckpoint,
    keep_best_per_weights,
    task_checkpoint_defaults,
)
from convnext_pl.training.cli_checks import (
    check_config_files,
    check_image_size,
    hold_startup_lines,
    import_class,
    quiet_known_noise,
    release_startup_lines,
)
from convnext_pl.training.guards import NonFiniteLossGuard
from convnext_pl.training.parallel import refuse_what_this_machine_cannot_run
from convnext_pl.training.progress import LogLineProgress, TerminalProgress
from convnext_pl.training.resume import changed_model_values
from convnext_pl.training.seeding import StepSeeding

# Options declared with jsonargparse's range types (PositiveInt, OpenUnitInterval, ...) parse into int/float
# subclasses. When a value moves to another class's arguments (the ladder swaps model.net's class_path and keeps
# patch_size), jsonargparse dumps it with yaml.safe_dump, which represents only the exact int and float types.
yaml.SafeDumper.add_multi_representer(int, yaml.SafeDumper.represent_int)
yaml.SafeDumper.add_multi_representer(float, yaml.SafeDumper.represent_float)

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM (143)


class _OneLineParser(LightningArgumentParser):
    """LightningCLI's parser, reporting its errors as one line (not the usage text and a nested type report)."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse parsing a nested piece: the outer parser reports it
            return super().error(message, ex)
        exit_with_error(parser_error_line(message) + PARSER_HINT)


class ConvNeXtCLI(LightningCLI):
    """LightningCLI with this project's defaults (see the module docstring)."""

    def __init__(self, args=None, run: bool = True, **kwargs):
        kwargs.setdefault("trainer_defaults", {})
        kwargs["trainer_defaults"] = {
            "default_root_dir": "runs",
            # Each task installs its own predictions writer (TaskModule.prediction_writer).
            "callbacks": [LearningRateMonitor(logging_interval="step")],
            **kwargs["trainer_defaults"],
        }
        super().__init__(
            LightningModule,  # the task: `model: {class_path: convnext_pl.ImageClassifier, init_args: ...}`
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=_OneLineParser,
            # config.yaml is written when the run starts, so a mistake found in set-up leaves no run folder.
            save_config_callback=kwargs.pop("save_config_callback", runs.SaveConfigWhenTheRunStarts),
            # `true` (LightningCLI's default) seeds with 0 anyway, after a "No seed found" warning.
            seed_everything_default=0,
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
        parser.add_argument(
            "--allow_untrained",
            type=bool,
            default=False,
            help="validate/test/predict on a randomly initialised network on purpose (smoke tests); without it "
            "they refuse to run without --ckpt_path or pretrained weights.",
        )
        parser.add_argument(
            "--accept_changed_settings",
            type=bool,
            default=False,
            help="fit --ckpt_path with another effective batch, lr, schedule length or data than the checkpoint's: "
            "continue the checkpoint's lr schedule (without it such a resume is refused).",
        )
        # Callback groups are always added, whatever trainer.callbacks a config sets.
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.add_lightning_class_args(NonFiniteLossGuard, "nonfinite_loss")
        parser.add_lightning_class_args(StepSeeding, "step_seeding")
        parser.set_defaults(
            {
                # monitor, mode and filename: the task's (TaskModule.monitor), unless a config sets them.
                "checkpoint.monitor": None,
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": None,
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self._link_num_classes(config)
        task_checkpoint_defaults(import_class(config.model.class_path), config.checkpoint)
        self._run_name = runs.run_name(config)

    def _link_num_classes(self, config) -> None:
        """Give ``model.init_args.net`` the data's class count unless the config wrote one (a contradiction is
        an error). A task whose network has no ``num_classes`` is left alone.

        ``link_arguments`` cannot serve: its source would be ``data.init_args.num_classes``, which is not an
        argument but a property of the built DataModule, and a link target can no longer be written by the user,
        so the contradiction check (and the configs that write ``num_classes``) would be lost.
        """
        net, data = (config.model.get("init_args") or {}).get("net"), config.get("data")
        if net is None or data is None or "num_classes" not in (net.get("init_args") or {}):
            return
        # A DataModule's __init__ touches no disk, so building one here only to read num_classes is cheap.
        data_class = import_class(data.class_path)
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

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        # Trainer settings this machine cannot run, as one line before the Trainer (or any process) starts.
        refuse_what_this_machine_cannot_run((self.config[subcommand] if subcommand else self.config).trainer)
        # Before anything is written, and before LightningCLI reads the checkpoint's hyperparameters.
        if subcommand:
            self._check_before_anything_starts(self.config[subcommand], subcommand)

    def _check_before_anything_starts(self, config, subcommand: str) -> None:
        """The run-folder policy (``convnext_pl.training.runs``) on the parsed config; ``--ckpt_path last`` is resolved."""
        root, name = runs.root_dir(config), runs.run_name(config)
        runs.check_root_dir(root)
        self._root_dir = (root, runs.existing_ancestor(root))  # what a failed run may remove again
        dirpath = (config.get("checkpoint") or {}).get("dirpath")
        ckpt_path = runs.resolve_ckpt_path(config.get("ckpt_path"), root, name, dirpath)
        if ckpt_path != config.get("ckpt_path"):
            config.ckpt_path = ckpt_path  # config.yaml records the exact file
            rank_zero_info(f"Resuming from {ckpt_path}")
        runs.refuse_a_used_checkpoint_folder(subcommand, dirpath, ckpt_path)
        if runs.check_trained_weights(subcommand, ckpt_path, config.model, config.get("allow_untrained")):
            rank_zero_warn(f"{subcommand} on an untrained, randomly initialised network (--allow_untrained)")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI loads --ckpt_path here (torch.load, weights_only=True) to take the model's hyperparameters
        # from the checkpoint: the first place a refused or damaged file shows, another task's checkpoint is
        # refused, and a value of the command line that the checkpoint's would replace is named.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        given = None
        try:
            if path and Path(path).is_file():
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                refuse_another_tasks_checkpoint(
                    import_class(self.config[subcommand].model.class_path), checkpoint, path
                )
                given = self.config[subcommand].model.clone()
            super()._parse_ckpt_path()
        except (pickle.UnpicklingError, RuntimeError) as err:
            user_error = checkpoint_load_error(path, err)
            if user_error is None:
                raise
            raise user_error from err
        if given is not None:
            self._keep_or_refuse_given_values(subcommand, path, given)

    def _keep_or_refuse_given_values(self, subcommand: str, path: str, given) -> None:
        """A resume (``fit``) whose command line sets a model value other than the checkpoint's is refused in one
        line naming it, or with ``--accept_changed_settings true`` resumes with the given values, listed.
        ``validate``/``test``/``predict`` evaluate with the given values (``test_scales``, ``flip`` ...), listed."""
        changes = changed_model_values(given, self.config[subcommand].model)
        if not changes:
            return
        if subcommand == "fit" and not self.config[subcommand].get("accept_changed_settings"):
            raise UserError(
                f"resuming {path} with model settings other than the checkpoint's: {', '.join(changes)}; give "
                "the checkpoint's values (its run's config.yaml), or pass --accept_changed_settings true to "
                "resume with the given ones"
            )
        self.config[subcommand].model = given
        rank_zero_info(f"Using the given model settings over the checkpoint's: {', '.join(changes)}")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # The first place both the network and the data exist; still before any folder is written.
        check_image_size(self.model, self.datamodule)

    def instantiate_trainer(self, **kwargs):
        trainer_config = self._get(self.config_init, "trainer", default={})
        own_bar = any(isinstance(c, ProgressBar) for c in trainer_config.get("callbacks") or [])
        if trainer_config.get("enable_progress_bar") is not False and not own_bar:
            # A terminal: tqdm's bar, its numbers read at log intervals (not a sync per step); not a terminal (CI,
            # SLURM, `| tee`): periodic log lines instead of tqdm's redraws.
            bar = TerminalProgress() if sys.stdout.isatty() else LogLineProgress()
            self.trainer_defaults["callbacks"] = [*self.trainer_defaults["callbacks"], bar]
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = runs.default_loggers(
                trainer_config.get("default_root_dir") or "runs", self._run_name
            )
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep any other plugin a config chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        self._ema_best = keep_best_per_weights(trainer)  # with EMA: a best-raw and a best-EMA checkpoint
        if self.save_config_callback:
            runs.refuse_an_earlier_runs_folder(
                trainer.log_dir, self.save_config_kwargs.get("config_filename", "config.yaml")
            )
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            # Whatever stopped the run before it wrote a file (a mistake found in set-up, a refused resume):
            # the folders the loggers made for it go too. A folder holding any file is kept.
            if hasattr(self, "_root_dir"):
                runs.remove_a_failed_runs_empty_folder(getattr(self, "trainer", None), *self._root_dir)
            raise

    def before_fit(self) -> None:
        if self.config[self.subcommand].get("accept_changed_settings"):
            self.model.accept_changed_settings = True  # read by the task's configure_optimizers on a resume
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            # First in line, so a resume with changed settings is refused before the run folder is written.
            self.trainer.callbacks.insert(0, runs.ChangedResumeCheck(ckpt_path))
        # Lightning's model summary counts FLOPs with one forward of `example_input_array` (else it prints
        # "Total Flops 0"): one image of the data's size gives the network's real FLOPs. Classification only:
        # the dense tasks take other inputs (or set their own example).
        size = getattr(self.datamodule, "image_size", None)
        if (
            isinstance(self.model, ImageClassifier)
            and isinstance(size, int)
            and self.model.example_input_array is None
        ):
            self.model.example_input_array = torch.zeros(1, 3, size, size)

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
            if getattr(self, "_ema_best", None) is not None:
                lines.append(f"Best EMA checkpoint:  {self._ema_best.best_model_path or '-'}")
            lines.append(f"Last checkpoint:  {trainer.checkpoint_callback.last_model_path or '-'}")
        lines.append(f"Logs and config:  {log_dir}")
        print("\n".join(lines), flush=True)


def cli_main(args: list[str] | None = None, run: bool = True) -> ConvNeXtCLI:
    """Run the CLI (``args`` as on the command line; None reads ``sys.argv``) and return it.

    Errors the user caused print ``error: <one sentence>`` to stderr and raise ``SystemExit(2)``; a run stopped
    by SIGTERM (after saving ``last.ckpt``) raises ``SystemExit(143)``.
    """
    argv = sys.argv
    quiet_known_noise()
    hold_startup_lines()
    try:
        with one_line_errors():
            check_config_files(argv[1:] if args is None else args)
            if args is not None:
                # Called from Python (tests, notebooks): the host's own argv (pytest's, the Jupyter kernel's) is
                # not ours, and LightningCLI would warn about it.
                sys.argv = argv[:1]
            return ConvNeXtCLI(args=args, run=run)
    except MisconfigurationException as error:
        # Lightning's exception for settings it cannot run with (an accelerator this machine does not have ...).
        exit_with_error(f"Lightning cannot run these settings: {' '.join(str(error).split())}")
    except SIGTERMException:
        # Lightning exits with status 0 after SIGTERM; a scheduler must not mistake a preempted run for a finished one.
        raise SystemExit(SIGTERM_EXIT_CODE) from None
    finally:
        sys.argv = argv
        # A refused run prints its error line alone; any other ending shows what Lightning said on the way.
        release_startup_lines(print_them=sys.exc_info()[0] is not SystemExit)
        end_process_group()


def end_process_group() -> None:
    """Destroy the process group a multi-process run set up (Lightning leaves it for reuse). Left to the
    interpreter's exit, gloo's worker threads can still be running when their C++ objects are destroyed, and the
    process aborts with "terminate called without an active exception" after the run finished: exit code 134
    (pytorch/pytorch#190489; ``benchmarks/process_group_exit.py`` counts it with and without this call)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
