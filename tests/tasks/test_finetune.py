"""Fine-tuning from an official-format checkpoint through the CLI: the body loads, the head is new, layer decay holds."""

from pathlib import Path

import pytest
import torch
from helpers import DIGITS, EXPERIMENTS, QUIET
from helpers.fakedata import write_image_folder
from lightning.pytorch import Callback

from convnext_pl.models import create_model
from convnext_pl.training.cli import cli_main

LAYER_DECAY = 0.8


@pytest.fixture(scope="module")
def official_atto(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A file in the official release format: ``{"model": state_dict}``, 1000 classes, 4x4 stem."""
    state = create_model("convnext_atto").state_dict()
    path = tmp_path_factory.mktemp("weights") / "convnext_atto_1k.pth"
    torch.save({"model": state}, path)
    return path, state


class WeightsAtTrainStart(Callback):
    """Copies the network's weights when training starts: after ``setup`` loaded the file, before any step."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}


def _fit(args: list[str]) -> tuple[object, WeightsAtTrainStart]:
    """Parse and build everything with ``cli_main`` as the command line does, then fit with the recorder on."""
    cli = cli_main(args + QUIET, run=False)
    recorder = WeightsAtTrainStart()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli, recorder


def _assert_body_loaded_and_head_new(recorder, file_state, num_classes: int) -> None:
    body = [k for k in file_state if not k.startswith("head.")]
    assert body and all(torch.equal(recorder.state[k], file_state[k]) for k in body)
    assert recorder.state["head.weight"].shape == (num_classes, file_state["head.weight"].shape[1])
    # head_init_scale 0.001: the new head starts near zero (trunc-normal std 0.02 x 0.001)
    assert recorder.state["head.weight"].abs().max() < 1e-3


def test_digits_fine_tuning_loads_the_body_replaces_the_head_and_decays_lr_per_layer(official_atto, tmp_path):
    path, file_state = official_atto
    model = [f"--model.pretrained={path}", f"--model.layer_decay={LAYER_DECAY}"]
    # The released weights have the 4x4 stem; at 32x32 stage 4 is then 1x1.
    model += ["--model.net.init_args.patch_size=4", "--model.net.init_args.head_init_scale=0.001"]
    trainer = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]
    cli, recorder = _fit(
        [f"--config={DIGITS}", *model, "--data.init_args.image_size=32", *trainer]
        + [f"--trainer.default_root_dir={tmp_path}"]
    )
    assert cli.trainer.global_step == 3
    _assert_body_loaded_and_head_new(recorder, file_state, num_classes=10)
    net = cli.model.net
    assert net.num_classes == 10 and net.head.out_features == 10
    assert not torch.equal(
        net.state_dict()["stages.2.0.pwconv1.weight"], file_state["stages.2.0.pwconv1.weight"]
    )

    groups = cli.trainer.optimizers[0].param_groups
    head_id = max(group["layer_id"] for group in groups)
    assert head_id >= 2  # layer decay is on: atto's depths 2,2,6,2 give stem 0 .. head 7
    assert {group["layer_id"] for group in groups} == set(range(head_id + 1))  # stem 0 .. head, none skipped
    head_lr = next(group["lr"] for group in groups if group["layer_id"] == head_id)
    assert head_lr > 0
    for group in groups:
        expected = head_lr * LAYER_DECAY ** (head_id - group["layer_id"])
        assert group["lr"] == pytest.approx(expected, rel=1e-9), group["param_names"][:2]


def test_imagefolder_fine_tuning_config_trains_from_an_official_file(official_atto, tmp_path):
    path, file_state = official_atto
    root = write_image_folder(tmp_path / "my_images", num_classes=3, per_class=4, size=40)
    cli, recorder = _fit(
        [
            f"--config={EXPERIMENTS / 'imagefolder_finetune.yaml'}",
            f"--model.pretrained={path}",
            "--model.net.init_args.name=convnext_atto",  # the variant the file holds (the config says tiny)
            f"--data.init_args.root={root}",
            "--data.init_args.num_classes=3",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
            "--trainer.accelerator=cpu",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
        ]
    )
    assert cli.trainer.global_step == 2
    _assert_body_loaded_and_head_new(recorder, file_state, num_classes=3)
    assert cli.datamodule.class_names == ["class_00", "class_01", "class_02"]


def test_released_weights_into_the_small_stem_is_one_line_error(official_atto, tmp_path, capsys):
    path, _ = official_atto
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["fit", f"--config={DIGITS}", f"--model.pretrained={path}"]
            + ["--trainer.max_steps=1", f"--trainer.default_root_dir={tmp_path}"]
            + QUIET
        )
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "downsample_layers.0.0.weight" in err[0]  # the 4x4 stem vs the config's 2x2
