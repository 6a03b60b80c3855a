"""Every piece in ``configs/trainer/`` builds a trainer for 1 and for 2 CPU processes without editing (only the
accelerator is overridden), and an inconsistent FSDP2 size is one ``error:`` line before any process starts."""

import pytest
from helpers import CONFIGS, DIGITS

from convnext_pl.cli import cli_main
from convnext_pl.errors import UserError
from convnext_pl.parallel import FSDP2Strategy, mesh_sizes

PIECES = sorted((CONFIGS / "trainer").glob("*.yaml"))
ON_CPU = ["--trainer.accelerator", "cpu"]


def _build(piece, devices: str, *extra: str, tmp_path):
    args = ["--config", DIGITS, "--config", str(piece), *ON_CPU, "--trainer.devices", devices, *extra]
    return cli_main([*args, "--trainer.default_root_dir", str(tmp_path)], run=False)


@pytest.mark.parametrize("devices", ["1", "2"])
@pytest.mark.parametrize("piece", PIECES, ids=lambda p: p.stem)
def test_every_trainer_piece_builds_for_one_and_two_cpu_processes(piece, devices, tmp_path):
    if piece.stem == "fsdp":  # FSDPStrategy (FSDP1) runs on CUDA only; fsdp2.yaml is its CPU-capable sibling
        with pytest.raises(ValueError, match="requires a GPU accelerator"):
            _build(piece, devices, tmp_path=tmp_path)
        return
    trainer = _build(piece, devices, tmp_path=tmp_path).trainer
    assert trainer.num_devices == int(devices)
    if isinstance(trainer.strategy, FSDP2Strategy):
        # Sharded over every process, whatever the device count: nothing in the piece to edit.
        assert (trainer.strategy._data_parallel_size, trainer.strategy._tensor_parallel_size) == (
            int(devices),
            1,
        )


def test_an_fsdp2_size_that_contradicts_the_devices_is_one_error_line_before_any_process_starts(
    tmp_path, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["fit", "--config", DIGITS, "--config", str(CONFIGS / "trainer" / "fsdp2.yaml"), *ON_CPU]
            + ["--trainer.devices", "2", "--trainer.strategy.init_args.data_parallel_size", "8"]
            + ["--trainer.default_root_dir", str(tmp_path)]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "error: trainer.strategy.init_args.data_parallel_size 8 x tensor_parallel_size 1 is 8, but devices x "
        "num_nodes is 2; remove data_parallel_size (it follows the devices) or change --trainer.devices / "
        "--trainer.num_nodes"
    )
    assert not (tmp_path / "digits").exists()  # refused before the run (or any process) started


@pytest.mark.parametrize(
    ("data_parallel", "tensor_parallel", "world", "expected"),
    [("auto", 1, 16, (16, 1)), ("auto", 2, 8, (4, 2)), (4, 2, 8, (4, 2))],
)
def test_mesh_sizes_follow_the_world_size(data_parallel, tensor_parallel, world, expected):
    assert mesh_sizes(data_parallel, tensor_parallel, world) == expected


def test_a_tensor_parallel_size_that_does_not_divide_the_world_is_refused():
    with pytest.raises(UserError, match="tensor_parallel_size 3 does not divide devices x num_nodes .8."):
        mesh_sizes("auto", 3, 8)
