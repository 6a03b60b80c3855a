"""Safe loading: files from elsewhere are read with ``torch.load(weights_only=True)``, as safetensors, or (CIFAR's
pickles) with an unpickler that knows only arrays, and a file that would run code is refused before it can; the
project's own checkpoints need nothing more than that."""

import os
import pickle
from pathlib import Path

import pytest
import torch
from helpers import DIGITS, QUIET, SHORT
from helpers.fakedata import write_cifar

from convnext_pl.data import CIFARDataModule
from convnext_pl.errors import UserError
from convnext_pl.training.checkpoint_io import AtomicCheckpointIO
from convnext_pl.training.cli import cli_main


class _Payload:
    """Unpickling this creates a folder: proof that loading the file ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload_ran"


def test_a_malicious_checkpoint_is_refused_by_every_loading_path_and_never_runs(tmp_path, marker, capsys):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, evil)
    runs = ["--trainer.default_root_dir", str(tmp_path / "runs")]
    # --ckpt_path: LightningCLI reads the checkpoint's hyperparameters before anything is built.
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", DIGITS, "--ckpt_path", str(evil), *runs, *SHORT, *QUIET])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: checkpoint {evil} was refused by torch.load(weights_only=True): it holds Python objects besides "
        "tensors and plain values; load only checkpoints written by this project (see docs/troubleshooting.md, "
        "'Which files are trusted')"
    )
    # Trainer.fit(ckpt_path=...) from Python goes through the CLI's checkpoint IO.
    cli = cli_main(["--config", DIGITS, *runs, *SHORT, *QUIET], run=False)
    with pytest.raises(UserError, match="refused by torch.load"):
        cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(evil))
    with pytest.raises(UserError, match="refused by torch.load"):
        AtomicCheckpointIO().load_checkpoint(evil)
    assert not marker.exists()


def test_a_malicious_pretrained_file_is_refused_through_the_cli_and_never_runs(tmp_path, marker, capsys):
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, evil)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", DIGITS, "--model.pretrained", str(evil),
                  "--trainer.default_root_dir", str(tmp_path), *SHORT, *QUIET])  # fmt: skip
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(
            f"error: Checkpoint '{evil}' is not a plain weights file: torch.load(weights_only=True) refused it"
        )
    )
    assert not marker.exists()


def test_the_projects_own_checkpoints_load_with_weights_only(digits_ckpt):
    # Every piece of state this project adds: EMA, step checkpoints, loss guard, seeding, the data loader position.
    checkpoint = torch.load(digits_ckpt, weights_only=True)
    assert {
        "state_dict",
        "current_model_state",
        "optimizer_states",
        "hyper_parameters",
        "DigitsDataModule",
    } <= set(checkpoint)
    assert checkpoint["DigitsDataModule"]["train_loader"].keys() == {"seed", "epoch", "batches", "world_size"}
    assert (
        checkpoint["hyper_parameters"]["net"]["init_args"]["name"] == "convnext_atto"
    )  # plain config values


def test_a_replaced_cifar_file_is_reported_without_running_it(tmp_path, marker):
    # torchvision unpickles CIFAR files only once their md5 matched; the diagnosis of a file that did not
    # match (truncated, or replaced) must not unpickle arbitrary objects either.
    write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "wb") as f:
        pickle.dump({"data": _Payload(marker), "labels": [0]}, f)
    with pytest.raises(
        UserError, match=r"data_batch_1 is unusable \(it cannot be unpickled: .* is not allowed"
    ):
        CIFARDataModule(root=str(tmp_path), num_workers=0).setup("fit")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["jpeg", "safetensors"])
def test_an_image_or_safetensors_file_as_ckpt_path_is_named_for_what_it_is(tmp_path, kind, capsys):
    """Before: "holds Python objects besides tensors", which is not the problem."""
    from helpers import refused
    from PIL import Image
    from safetensors.torch import save_file

    if kind == "jpeg":
        path = tmp_path / "photo.jpg"
        Image.new("RGB", (8, 8)).save(path)
        expected = f"error: {path} is a JPEG image, not a checkpoint; --ckpt_path takes a .ckpt a run wrote"
    else:
        path = tmp_path / "weights.safetensors"
        save_file({"w": torch.zeros(2)}, str(path))
        expected = (
            f"error: {path} is a safetensors file of weights, not a Lightning checkpoint: start from it with "
            "--model.init_args.pretrained (dense tasks: the backbone's --model.init_args.pretrained_backbone); "
            "--ckpt_path takes a .ckpt a run wrote"
        )
    runs = ["--trainer.default_root_dir", str(tmp_path / "runs")]
    args = ["validate", "--config", DIGITS, "--ckpt_path", str(path), *runs, *SHORT, *QUIET]
    assert refused(args, capsys, tmp_path) == expected
