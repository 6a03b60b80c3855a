"""Multi-process training on the CPU with the strategy YAML pieces, driven through ``python main.py``.

DDP (``configs/trainer/ddp.yaml``) and FSDP2 (``configs/trainer/fsdp2.yaml``) each fit on 2 processes with gloo,
save a checkpoint, resume from it and validate; every rank must report the same validation result. The FSDP
piece (``configs/trainer/fsdp.yaml``) needs GPUs in Lightning: on the CPU its YAML is resolved, on a GPU it fits.
"""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, run_main
from jsonargparse import ArgumentParser
from lightning import Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from convnext_pl.errors import UserError
from convnext_pl.models import create_model
from convnext_pl.models.convnext import Block
from convnext_pl.tasks.classification import ImageClassifier
from convnext_pl.training.callbacks import EMA
from convnext_pl.training.parallel import fully_shard_network, shard_units

# Per-device batch 16, 2 processes, accumulation 2: an effective batch of 64 (and 2 optimizer steps per epoch
# from 4 batches per rank). The lr refers to the paper's batch 4096 and must be rescaled to 64.
BATCH, DEVICES, ACCUMULATE, LR, REFERENCE_BATCH = 16, 2, 2, 4.0e-3, 4096
CPU_TWO_PROCESSES = [
    "--trainer.accelerator", "cpu",
    "--trainer.devices", str(DEVICES),
    "--trainer.precision", "32-true",
    "--trainer.accumulate_grad_batches", str(ACCUMULATE),
    "--trainer.limit_train_batches", "4",
    "--trainer.limit_val_batches", "2",
    "--trainer.num_sanity_val_steps", "0",
    "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false",
    "--data.init_args.batch_size", str(BATCH),
    "--model.lr", str(LR),
    "--model.lr_reference_batch", str(REFERENCE_BATCH),
    "--model.warmup_epochs", "0",  # the first logged lr is then the peak lr itself
]  # fmt: skip


# The one group given by hand: the module's DDP and FSDP2 fits (two fixtures, which would otherwise make two
# groups, conftest._shared_run_group) run on one worker, one after the other; their two processes take both cores.
pytestmark = pytest.mark.xdist_group("two_process_runs")


class RankReport(Callback):
    """Writes what each rank saw at the end of validation to ``<folder>/rank<global_rank>.json``.

    ``val/*`` metrics are read after Lightning's cross-rank reduction, so every rank must hold the same numbers;
    ``local_params`` counts the parameter elements stored on this rank (all of them under DDP, a shard under FSDP),
    ``total_params`` those of the whole network.
    Imported by the ``main.py`` subprocesses as ``test_strategies.RankReport`` (``tests/`` on ``PYTHONPATH``).

    Args:
        folder: where the per-rank files go.
    """

    def __init__(self, folder: str):
        self.folder = folder

    def on_validation_end(self, trainer, pl_module) -> None:
        params = [p.to_local() if hasattr(p, "to_local") else p for p in pl_module.net.parameters()]
        report = {
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "net_class": type(pl_module.net).__name__,
            "local_params": sum(p.numel() for p in params),
            "total_params": sum(p.numel() for p in pl_module.net.parameters()),  # a DTensor's numel is global
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")},
        }
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def reporter(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    return ["--trainer.callbacks+=test_strategies.RankReport", f"--trainer.callbacks.folder={folder}"]


def read_reports(folder: Path) -> list[dict]:
    reports = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(DEVICES)]
    return reports


def fit_and_resume(root: Path, strategy_yaml: str, *overrides: str) -> dict:
    """Fit one epoch with ``strategy_yaml``, then resume from its last checkpoint for a second epoch."""
    common = [
        "--config",
        "configs/experiment/digits.yaml",
        "--config",
        strategy_yaml,
        *CPU_TWO_PROCESSES,
        *overrides,
    ]
    common += ["--trainer.default_root_dir", str(root), "--run_name", "run"]
    run_main(["fit", *common, "--trainer.max_epochs", "1", *reporter(root / "first")])
    checkpoint = root / "run" / "version_0" / "checkpoints" / "last.ckpt"
    run_main(
        [
            "fit",
            *common,
            "--trainer.max_epochs",
            "2",
            "--ckpt_path",
            str(checkpoint),
            "--accept_changed_settings=true",  # a longer run: continue the checkpoint's schedule
            *reporter(root / "resumed"),
        ]
    )
    return {
        "checkpoint": checkpoint,
        "first": read_reports(root / "first"),
        "resumed": read_reports(root / "resumed"),
        "log_dir": root / "run" / "version_0",
    }


def assert_resumed_and_ranks_agree(runs: dict) -> None:
    steps_per_epoch = 4 // ACCUMULATE
    for rank, report in enumerate(runs["resumed"]):
        # The second run continued from the checkpoint: epoch 1, optimizer steps of both epochs.
        assert (report["epoch"], report["global_step"]) == (1, 2 * steps_per_epoch), f"rank {rank}"
    for stage in ("first", "resumed"):
        zero, one = runs[stage]
        assert set(zero["metrics"]) >= {"val/loss", "val/acc1", "val/acc5"}
        assert zero["metrics"] == one["metrics"], f"{stage}: ranks disagree on the validation result"


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> dict:
    return fit_and_resume(tmp_path_factory.mktemp("ddp"), "configs/trainer/ddp.yaml")


@pytest.fixture(scope="module")
def fsdp2_runs(tmp_path_factory) -> dict:
    # No size to set: the piece shards over devices x num_nodes, whatever --trainer.devices says.
    return fit_and_resume(tmp_path_factory.mktemp("fsdp2"), "configs/trainer/fsdp2.yaml")


@pytest.mark.slow
def test_ddp_fits_resumes_and_every_rank_validates_the_same(ddp_runs):
    assert_resumed_and_ranks_agree(ddp_runs)
    for report in ddp_runs["first"]:
        assert report["local_params"] == report["total_params"]  # DDP replicates the whole model
    assert ddp_runs["checkpoint"].is_file()


@pytest.mark.slow
def test_ddp_logs_the_effective_batch_and_the_lr_scaled_to_it(ddp_runs):
    effective = BATCH * DEVICES * ACCUMULATE
    peak_lr = LR * effective / REFERENCE_BATCH
    hparams = yaml.safe_load((ddp_runs["log_dir"] / "hparams.yaml").read_text())
    assert hparams["effective_batch_size"] == effective
    assert hparams["peak_lr"] == pytest.approx(peak_lr)
    with (ddp_runs["log_dir"] / "metrics.csv").open() as f:
        logged_lrs = [float(row["lr-AdamW/pg1"]) for row in csv.DictReader(f) if row.get("lr-AdamW/pg1")]
    assert logged_lrs[0] == pytest.approx(
        peak_lr
    )  # no warm-up: the optimizer really starts at the scaled peak


@pytest.mark.slow
def test_fsdp2_shards_fits_resumes_from_a_distributed_checkpoint_and_every_rank_validates_the_same(
    fsdp2_runs,
):
    assert_resumed_and_ranks_agree(fsdp2_runs)
    full = fsdp2_runs["first"][0]["total_params"]
    local = [r["local_params"] for r in fsdp2_runs["first"]]
    assert {r["net_class"] for r in fsdp2_runs["first"]} == {"FSDPConvNeXt"}
    assert sum(local) >= full and max(local) < 0.6 * full  # each rank stores about half of every parameter
    shards = sorted(p.name for p in fsdp2_runs["checkpoint"].glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # one file per rank, resumed above


def resolve_strategy(path: str) -> Strategy:
    """Instantiate ``trainer.strategy`` of a YAML piece the way LightningCLI does (jsonargparse)."""
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    config = parser.parse_object(
        {"strategy": yaml.safe_load((ROOT / path).read_text())["trainer"]["strategy"]}
    )
    return parser.instantiate(config).strategy


def test_fsdp_yaml_wraps_and_checkpoints_each_convnext_block():
    strategy = resolve_strategy("configs/trainer/fsdp.yaml")
    assert isinstance(strategy, FSDPStrategy)
    for policy in (
        strategy.kwargs["auto_wrap_policy"],
        strategy._activation_checkpointing_kwargs["auto_wrap_policy"],
    ):
        assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {Block}
    assert strategy.kwargs[
        "use_orig_params"
    ]  # parameter names survive wrapping: weight-decay groups still apply


def test_fsdp2_yaml_is_pure_data_parallel():
    strategy = resolve_strategy("configs/trainer/fsdp2.yaml")
    assert isinstance(strategy, ModelParallelStrategy)
    # "auto" until the Trainer knows the devices: then devices x num_nodes (tests/training/test_trainer_pieces.py).
    assert strategy._data_parallel_size == "auto"
    assert strategy._tensor_parallel_size == 1


@pytest.mark.parametrize(
    ("name", "unit", "expected"),
    [
        ("convnext_atto", "block", (2, 2, 6, 2)),  # every block of every stage
        ("convnext_atto", "stage", (1, 1, 1, 1)),  # one unit per stage
        ("convnext_iso_small", "block", (18,)),  # the isotropic model's blocks
    ],
)
def test_shard_units_are_the_blocks_or_the_stages(name, unit, expected):
    net = create_model(name, num_classes=10)
    units = shard_units(net, unit)
    assert len(units) == sum(expected)
    if unit == "block":
        assert all(isinstance(u, Block) for u in units)
    else:
        assert [len(u) for u in units] == list(net.depths)


class _Mesh:
    """Stands in for a (data_parallel, tensor_parallel) DeviceMesh; a real one needs a process group."""

    def __init__(self, data_parallel: int, tensor_parallel: int):
        self.sizes = {"data_parallel": data_parallel, "tensor_parallel": tensor_parallel}

    def __getitem__(self, name):
        return type("Dim", (), {"size": lambda _self: self.sizes[name]})()

    def size(self) -> int:
        return self.sizes["data_parallel"] * self.sizes["tensor_parallel"]


def test_fsdp2_refuses_lightnings_default_tensor_parallel_split():
    # ModelParallelStrategy's defaults on one 8-GPU node: data_parallel 1 x tensor_parallel 8. Sharding only over
    # data_parallel would feed all 8 GPUs the same samples; the message says which sizes to set.
    net = create_model("convnext_atto", num_classes=10)
    with pytest.raises(
        UserError, match="tensor_parallel_size to 1 and data_parallel_size to devices x num_nodes .8."
    ):
        fully_shard_network(net, _Mesh(1, 8))
    assert not any(hasattr(p, "to_local") for p in net.parameters())  # nothing was sharded


def test_ema_refuses_a_sharded_strategy_with_one_sentence():
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
        logger=False,
        enable_checkpointing=False,
    )
    module = ImageClassifier(create_model("convnext_atto", num_classes=10))
    with pytest.raises(
        UserError, match="unsharded copy of the model on every rank.*--trainer.callbacks"
    ) as error:
        EMA().setup(trainer, module, "fit")
    assert "\n" not in str(error.value)


def test_ema_under_ddp_keeps_a_full_copy_without_lightnings_sharding_warning(recwarn):
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    module = ImageClassifier(create_model("convnext_atto", num_classes=10))
    ema = EMA()
    ema.setup(trainer, module, "fit")
    assert ema.averaged_net is not None and ema.averaged_net is not module.net
    assert not [w for w in recwarn if "support sharding" in str(w.message)]


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA device")
def test_fsdp_fits_on_gpus(tmp_path):
    devices = min(2, torch.cuda.device_count())
    run_main(
        ["fit", "--config", "configs/experiment/digits.yaml", "--config", "configs/trainer/fsdp.yaml"]
        + [
            "--trainer.devices",
            str(devices),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "4",
        ]
        + [
            "--trainer.limit_val_batches",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--run_name",
            "run",
        ]
    )
    assert (tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt").is_file()  # state_dict_type: full


@pytest.mark.parametrize("ending", ["finished", "refused"])
def test_the_cli_destroys_the_process_group_it_leaves_however_the_run_ends(ending, tmp_path):
    """A 2-process run that had finished sometimes aborted at the interpreter's exit ("terminate called without an
    active exception", exit 134): gloo's threads still ran while their C++ objects were destroyed. cli_main
    destroys the process group Lightning leaves for reuse before returning or raising. A 1-process gloo group
    stands for it here; the suite's 2-process runs that finish (DDP and FSDP2, 10 of them) check exit code 0."""
    from helpers import CPU, DIGITS, QUIET

    from convnext_pl.training.cli import cli_main

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    args = ["validate", "--config", DIGITS, *CPU, *QUIET, f"--trainer.default_root_dir={tmp_path / 'runs'}"]
    try:
        if ending == "finished":
            cli_main([*args, "--allow_untrained=true", "--trainer.limit_val_batches=1"])
        else:
            with pytest.raises(SystemExit):
                cli_main(args)  # no trained weights: refused
        assert not torch.distributed.is_initialized()
    finally:  # the group must not outlive the test on this xdist worker, whatever failed
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
