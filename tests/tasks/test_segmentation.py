"""The segmentation task through the command line (fit, validate, predict, resume, DDP) and its pieces."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CPU, EXPERIMENTS, refused, run_main, tiny_segmentation
from lightning import Callback
from PIL import Image

from convnext_pl.errors import UserError
from convnext_pl.tasks.segmentation import iou_from_confusion
from convnext_pl.training.cli import cli_main

CONFIG = str(EXPERIMENTS / "segmentation_synthetic.yaml")


def _args(root: Path) -> list[str]:
    return tiny_segmentation(root / "scenes" / "ADEChallengeData2016", root / "runs")


# The fitted run's model settings; a resume gives the same ones (another value would be refused, see below).
FITTED_MODEL = ["--model.init_args.layer_decay=0.9", "--model.init_args.warmup_steps=0"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    # layer decay on: the logged lr of each parameter group shows the official stage-wise scales
    run_main(["fit", *_args(root), *CPU, *FITTED_MODEL])
    (run,) = (root / "runs" / "segmentation_synthetic").iterdir()
    return root, run


def test_fit_writes_checkpoints_and_logs_miou(fitted):
    _, run = fitted
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    miou = [float(r["val/mIoU"]) for r in rows if r.get("val/mIoU")]
    assert len(miou) == 1 and 0.0 <= miou[0] <= 100.0
    assert any(r.get("val/IoU/sky") for r in rows) and any(r.get("train/loss_aux") for r in rows)
    # stage_wise, num_layers 6: heads (id 7) at the peak lr, downsampling layers (id 0) at 0.9 ** 7 of it
    first = next(r for r in rows if r.get("lr-AdamW/pg1"))
    lrs = sorted({float(v) for k, v in first.items() if k.startswith("lr-AdamW") and v})
    assert lrs[-1] == pytest.approx(2e-3) and lrs[0] == pytest.approx(2e-3 * 0.9**7)


def test_validate_and_predict_from_the_checkpoint(fitted):
    root, run = fitted
    ckpt = str(run / "checkpoints" / "last.ckpt")
    # The run's own checkpoint as `pretrained`: the evaluation settings given here apply (--ckpt_path would
    # restore the model arguments saved in the checkpoint over them); multi-scale + flip from the command line.
    ms_flip = ["--model.init_args.test_scales=[0.75,1.0,1.25]", "--model.init_args.flip=true"]
    cli = cli_main(["validate", *_args(root), *CPU, f"--model.init_args.pretrained={ckpt}", *ms_flip])
    assert cli.model.hparams.flip and len(cli.model.hparams.test_scales) == 3
    assert 0.0 <= float(cli.trainer.callback_metrics["val/mIoU"]) <= 100.0
    images = root / "scenes" / "ADEChallengeData2016" / "images" / "validation"
    cli = cli_main(
        ["predict", *_args(root), *CPU, f"--ckpt_path={ckpt}", f"--data.init_args.predict_dir={images}"]
    )
    out = Path(cli.trainer.log_dir) / "masks"
    for image_path in sorted(images.iterdir()):
        mask = Image.open(out / f"{image_path.stem}.png")
        assert mask.mode == "P" and mask.size == Image.open(image_path).size  # colour-coded, image size
        assert set(np.unique(np.array(mask))) <= set(range(5))


def test_resume_from_last_checkpoint_continues_the_step_count(fitted, capsys):
    root, run = fitted
    ckpt = str(run / "checkpoints" / "last.ckpt")
    resume = ["fit", *_args(root), *CPU, *FITTED_MODEL, "--trainer.max_epochs=2", f"--ckpt_path={ckpt}"]
    # Another batch size and twice the epochs (another poly schedule), refused in one line before a folder is made
    # ...
    before = sorted(run.parent.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*resume, "--data.init_args.batch_size=1"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    changes = "effective batch 2 -> 1, total optimizer steps 2 -> 4;"
    assert error.startswith(f"error: resuming {ckpt} with changed settings: {changes}")
    assert sorted(run.parent.iterdir()) == before
    # ... unless asked for: the checkpoint's schedule goes on.
    cli = cli_main([*resume, "--accept_changed_settings=true"])
    assert cli.trainer.global_step == 4  # two steps restored, two more run
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2


def test_iou_from_confusion_matches_mmseg_rule():
    matrix = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])  # class 2 absent everywhere
    iou, accuracy = iou_from_confusion(matrix)
    torch.testing.assert_close(iou[:2], torch.tensor([3 / 4, 2 / 3]))
    assert torch.isnan(iou[2]) and accuracy == pytest.approx(5 / 6)


class BatchNormReport(Callback):
    """Writes, per rank, the world size and the running mean of the first head BatchNorm (by class path)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_end(self, trainer, pl_module) -> None:
        bn = pl_module.net.decode_head.bottleneck.bn
        self.folder.mkdir(parents=True, exist_ok=True)
        line = f"{type(bn).__name__} {trainer.world_size} {bn.running_mean.sum().item():.6f}"
        (self.folder / f"rank{trainer.global_rank}.txt").write_text(line)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    # On CPU the heads keep plain BatchNorm (torch's SyncBatchNorm runs on GPUs only): each rank normalises its
    # own batch, and DDP keeps the weights, not the running statistics, equal across ranks.
    report = tmp_path / "report"
    run_main(
        ["fit", *_args(tmp_path), "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
         # 3 validation images: 2 on rank 0, 1 on rank 1 (each image once); the uneven ranks reduce mIoU once
         "--data.init_args.val_images=3",
         "--trainer.precision=32-true", "--trainer.callbacks+=test_segmentation.BatchNormReport",
         f"--trainer.callbacks.init_args.folder={report}"],
        timeout=400,
    )  # fmt: skip
    reports = [(report / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert [r[:2] for r in reports] == [["BatchNorm2d", "2"]] * 2


def test_sync_batchnorm_on_cpu_is_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", *_args(tmp_path), *CPU, "--trainer.strategy=ddp", "--trainer.sync_batchnorm=true"])
    assert info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert "sync_batchnorm needs GPUs" in line


@pytest.mark.gpu
def test_sync_batchnorm_on_a_gpu(tmp_path):
    report = tmp_path / "report"
    cli_main(
        ["fit", *_args(tmp_path), "--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.strategy=ddp",
         "--trainer.sync_batchnorm=true", "--trainer.callbacks+=test_segmentation.BatchNormReport",
         f"--trainer.callbacks.init_args.folder={report}"]
    )  # fmt: skip
    assert (report / "rank0.txt").read_text().startswith("SyncBatchNorm 1")


def test_pretrained_backbone_and_released_layout_load_in_setup(tmp_path):
    from convnext_pl.models import create_model
    from convnext_pl.models.upernet import create_upernet
    from convnext_pl.tasks.segmentation import SemanticSegmenter

    imagenet = create_model("convnext_atto")
    torch.save({"model": imagenet.state_dict()}, tmp_path / "atto_in1k.pth")
    task = SemanticSegmenter(
        create_upernet("convnext_atto", 5, channels=16), pretrained_backbone=str(tmp_path / "atto_in1k.pth")
    )
    task.setup("fit")
    assert torch.equal(task.net.backbone.stages[2][3].pwconv1.weight, imagenet.stages[2][3].pwconv1.weight)

    released = create_upernet("convnext_atto", 5, channels=16)
    torch.save({"state_dict": released.state_dict(), "meta": {"iter": 160000}}, tmp_path / "upernet.pth")
    task = SemanticSegmenter(
        create_upernet("convnext_atto", 5, channels=16), pretrained=str(tmp_path / "upernet.pth")
    )
    task.setup("validate")
    assert torch.equal(task.net.decode_head.conv_seg.weight, released.decode_head.conv_seg.weight)


@pytest.mark.parametrize(
    "size,decay_type,num_layers,drop_path", [("tiny", "stage_wise", 6, 0.4), ("base", "stage_wise", 12, 0.4)]
)
def test_ade20k_configs_carry_the_official_recipe(size, decay_type, num_layers, drop_path):
    import yaml

    config = yaml.safe_load((EXPERIMENTS / f"ade20k_upernet_convnext_{size}.yaml").read_text())
    model, data, trainer = config["model"]["init_args"], config["data"]["init_args"], config["trainer"]
    assert (model["decay_type"], model["num_layers"], model["layer_decay"]) == (decay_type, num_layers, 0.9)
    assert model["net"]["init_args"]["drop_path_rate"] == drop_path
    assert (model["lr"], model["lr_reference_batch"], model["warmup_steps"]) == (1e-4, 16, 1500)
    assert (data["batch_size"] * trainer["devices"], trainer["max_steps"], data["crop_size"]) == (
        16,
        160000,
        [512, 512],
    )
    assert (model["inference"], model["slide_stride"], trainer["sync_batchnorm"]) == (
        "slide",
        [341, 341],
        True,
    )


def test_checkpoint_of_another_class_count_is_one_sentence():
    from convnext_pl.models.upernet import create_upernet
    from convnext_pl.tasks.segmentation import SemanticSegmenter

    saved = SemanticSegmenter(create_upernet("convnext_atto", 7, channels=16)).state_dict()
    task = SemanticSegmenter(create_upernet("convnext_atto", 5, channels=16))
    with pytest.raises(UserError, match=r"'net\.decode_head\.conv_seg\.weight' has shape \(7, 16, 1, 1\)"):
        task.on_load_checkpoint({"state_dict": saved})


def test_batch_size_one_is_refused_before_training_with_the_reason(tmp_path, capsys):
    """One image per batch leaves the pyramid pooling's BatchNorm one value per channel (torch: "Expected more
    than 1 value per channel"); main.py's fit refuses it in set-up, before an epoch is spent."""
    args = [
        "fit",
        *tiny_segmentation(tmp_path / "scenes", tmp_path / "runs"),
        "--data.init_args.batch_size=1",
    ]
    line = refused(args, capsys, tmp_path)
    assert line == (
        "error: data.init_args.batch_size 1 cannot train UperNet: the BatchNorm after its pyramid pooling sees "
        "one value per channel on a 1x1 map; use batch_size 2 or more (or several GPUs with "
        "trainer.sync_batchnorm true)"
    )
