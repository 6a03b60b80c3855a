"""``validate``/``test`` with ``pretrained``: released weights by name, at their own transform, beside their figure.

The "released" file is a random atto in timm's layout, laid into a temporary Hugging Face cache under the real
catalogue name ``convnext_atto.d2_in1k`` (HF_HUB_OFFLINE=1): the whole path a user takes, without a network.
"""

from dataclasses import replace

import pytest
import torch
import yaml
from helpers import CPU, QUIET, run_main
from helpers.fakedata import write_image_folder
from test_pretrained_download import _timm_atto_safetensors, _write_hf_cache

from convnext_pl.data import ImageFolderDataModule
from convnext_pl.models import create_model
from convnext_pl.training.cli import cli_main
from convnext_pl.weights.catalogue import CATALOGUE, Arch


def _config(tmp_path, root, num_classes: int) -> str:
    config = {
        "model": {
            "class_path": "convnext_pl.ImageClassifier",
            "init_args": {
                "net": {
                    "class_path": "convnext_pl.models.create_model",
                    "init_args": {"name": "convnext_atto"},
                }
            },
        },
        "data": {
            "class_path": "convnext_pl.data.ImageFolderDataModule",
            "init_args": {
                "root": str(root),
                "num_classes": num_classes,
                "batch_size": 4,
                "num_workers": 0,
                "image_size": 32,
            },
        },
    }
    path = tmp_path / "validate.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def offline_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return {"TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_validate_released_name_through_main_uses_its_transform_and_prints_its_figure(
    tmp_path, offline_caches
):
    data, _ = _timm_atto_safetensors(num_classes=1000)
    _write_hf_cache("timm/convnext_atto.d2_in1k", "model.safetensors", data)
    root = _thousand_class_folder(tmp_path / "images")
    result = run_main(
        ["validate", "--config", _config(tmp_path, root, 1000), "--model.init_args.pretrained", "convnext_atto.d2_in1k",
         "--trainer.limit_val_batches=0.004", f"--trainer.default_root_dir={tmp_path / 'runs'}", *CPU, *QUIET],
        env=offline_caches,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "Evaluating convnext_atto.d2_in1k with its own transform: 224x224, center crop 0.875" in output
    assert "convnext_atto.d2_in1k: measured top-1" in output and "the source reports top-1 75.7" in output


def _thousand_class_folder(root):
    """An ImageNet-1K-sized label set (1000 class folders of one image), written in well under a second."""
    one = write_image_folder(root / "one", num_classes=1, per_class=1, size=16, splits=("val",))
    image = next((one / "val").rglob("*.JPEG")).read_bytes()
    for c in range(1000):
        (root / "val" / f"n{c:08d}").mkdir(parents=True)
        (root / "val" / f"n{c:08d}" / "image.JPEG").write_bytes(image)
    return root


def _lightning_checkpoint(path, num_classes: int) -> torch.nn.Module:
    net = create_model("convnext_atto", num_classes=num_classes)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    # The layout Lightning writes for this project's ImageClassifier: the network under `net.` in "state_dict".
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "epoch": 0}, path)
    return net.eval()


@pytest.mark.parametrize("subcommand, metric", [("validate", "val/acc1"), ("test", "test/acc1")])
def test_a_ckpt_as_pretrained_gives_the_accuracy_of_its_weights(subcommand, metric, tmp_path, offline_caches):
    root = write_image_folder(tmp_path / "images", num_classes=3, per_class=4, size=40, splits=("val",))
    net = _lightning_checkpoint(tmp_path / "run.ckpt", num_classes=3)
    cli = cli_main(
        [subcommand, "--config", _config(tmp_path, root, 3), "--model.init_args.pretrained", str(tmp_path / "run.ckpt"),
         f"--trainer.default_root_dir={tmp_path / 'runs'}", *CPU, *QUIET]
    )  # fmt: skip
    # The expected accuracy, from the same weights on the same images with the data module's own transform.
    dataset = ImageFolderDataModule(str(root), num_classes=3, image_size=32)
    dataset.setup("validate")
    assert dataset.val_dataset.transform is not None
    images, targets = zip(*(dataset.val_dataset[i] for i in range(len(dataset.val_dataset))), strict=True)
    with torch.no_grad():
        predicted = net(torch.stack(images)).argmax(-1)
    expected = (predicted == torch.tensor(targets)).float().mean().item()
    assert cli.trainer.callback_metrics[metric].item() == pytest.approx(expected)
    assert torch.equal(cli.model.net.head.weight, net.head.weight)


def test_a_22k_head_on_data_of_another_class_count_is_refused_in_one_sentence(
    tmp_path, offline_caches, monkeypatch, capsys
):
    root = write_image_folder(tmp_path / "images", num_classes=3, per_class=2, size=40, splits=("val",))
    entry = replace(CATALOGUE["convnext_atto.d2_in1k"], name="convnext_atto.test_in22k", num_classes=21841,
                    arch=Arch(CATALOGUE["convnext_atto.d2_in1k"].arch.factory, {"name": "convnext_atto", "num_classes": 21841}))  # fmt: skip
    monkeypatch.setitem(CATALOGUE, entry.name, entry)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["validate", "--config", _config(tmp_path, root, 3), "--model.init_args.pretrained", entry.name,
                  f"--trainer.default_root_dir={tmp_path / 'runs'}", *CPU, *QUIET])  # fmt: skip
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: convnext_atto.test_in22k has an ImageNet-22K head (21841 classes)")
    assert "the model has 3 outputs" in error
