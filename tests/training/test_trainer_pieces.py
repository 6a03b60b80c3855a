"""Every piece in ``configs/trainer/`` builds a trainer for 1 and for 2 CPU processes without editing (only the
accelerator is overridden); what a piece cannot run on this machine (FSDP1 on a CPU, a GPU piece without a GPU)
and an inconsistent FSDP2 size are one ``error:`` line before any process starts."""

import pytest
import torch
from helpers import CONFIGS, DIGITS, run_main

from convnext_pl.errors import UserError
from convnext_pl.training.cli import cli_main
from convnext_pl.training.parallel import FSDP2Strategy, mesh_sizes

PIECES = sorted((CONFIGS / "trainer").glob("*.yaml"))
ON_CPU = ["--trainer.accelerator", "cpu"]


def _build(piece, devices: str, *extra: str, tmp_path):
    args = ["--config", DIGITS, "--config", str(piece), *ON_CPU, "--trainer.devices", devices, *extra]
    return cli_main([*args, "--trainer.default_root_dir", str(tmp_path)], run=False)


@pytest.mark.parametrize("devices", ["1", "2"])
@pytest.mark.parametrize("piece", PIECES, ids=lambda p: p.stem)
def test_every_trainer_piece_builds_for_one_and_two_cpu_processes(piece, devices, tmp_path):
    if piece.stem == "fsdp":  # FSDPStrategy (FSDP1) runs on CUDA only: one error line naming fsdp2.yaml
        with pytest.raises(SystemExit) as exit_info:
            _build(piece, devices, tmp_path=tmp_path)
        assert exit_info.value.code == 2
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


FSDP1_ON_CPU = (
    "error: Lightning's FSDPStrategy (configs/trainer/fsdp.yaml) runs on CUDA GPUs only and {here}; use "
    "--config configs/trainer/fsdp2.yaml (FSDP2) instead, which shards over CPU processes too"
)
NO_GPU = (
    "error: trainer.accelerator is gpu but torch finds no GPU on this machine; add --trainer.accelerator cpu"
)
# What each piece says on a machine without a GPU when its accelerator (gpu) is left as it is.
WITHOUT_A_GPU = {
    "gpu": NO_GPU + ", or run on a GPU machine",
    "multi_gpu": NO_GPU + " and --trainer.devices N (the number of CPU processes), or run on a GPU machine",
    "ddp": NO_GPU + " and --trainer.devices N (the number of CPU processes), or run on a GPU machine",
    "fsdp2": NO_GPU + " and --trainer.devices N (the number of CPU processes), or run on a GPU machine",
    "fsdp": FSDP1_ON_CPU.format(here="torch finds none on this machine"),
}


@pytest.mark.parametrize("piece", sorted(WITHOUT_A_GPU), ids=str)
def test_a_gpu_piece_on_a_machine_without_a_gpu_is_one_error_line_naming_the_fix(
    piece, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what a CPU-only machine reports
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["fit", "--config", DIGITS, "--config", str(CONFIGS / "trainer" / f"{piece}.yaml")]
            + ["--trainer.default_root_dir", str(tmp_path)]
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == WITHOUT_A_GPU[piece]
    assert not (tmp_path / "digits").exists()


def test_the_gpu_pieces_list_covers_every_piece_but_cpu():
    assert sorted(WITHOUT_A_GPU) == sorted(p.stem for p in PIECES if p.stem != "cpu")


def test_every_gpu_count_on_the_cpu_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # ddp.yaml keeps devices: -1 (every GPU)
        cli_main(["fit", "--config", DIGITS, "--config", str(CONFIGS / "trainer" / "ddp.yaml"), *ON_CPU])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: trainer.devices -1 does not count CPU processes (-1 means every GPU); give --trainer.devices N, "
        "the number of processes to train on the CPU"
    )


def test_main_py_with_fsdp_yaml_on_the_cpu_says_use_fsdp2_yaml_in_one_line(tmp_path):
    result = run_main(
        ["fit", "--config", DIGITS, "--config", str(CONFIGS / "trainer" / "fsdp.yaml"), *ON_CPU]
        + ["--trainer.default_root_dir", str(tmp_path)],
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    here = "trainer.accelerator is cpu" if torch.cuda.is_available() else "torch finds none on this machine"
    assert result.stderr.strip().splitlines()[-1] == FSDP1_ON_CPU.format(here=here)
    assert not (tmp_path / "digits").exists()
