"""The detection task through the command line, as a user runs it: fit on the synthetic shapes, validate, predict
(COCO results + drawn images), resume from ``last.ckpt``; and fit with DDP on 2 CPU processes.

One tiny run shared by the in-process steps: 64-px shapes, 8 training images, convnext_atto, narrow heads.
"""

import csv
import json

import pytest
import torch
from helpers import CPU, EXPERIMENTS, run_main, tiny_detection
from pycocotools.coco import COCO

from convnext_pl.training.cli import cli_main

CONFIG = str(EXPERIMENTS / "coco_shapes_mask_rcnn.yaml")


tiny = tiny_detection


def val_metrics(run_dir) -> dict[str, float]:
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    return {k: float(v) for row in rows for k, v in row.items() if k.startswith("val/") and v}


def test_fit_validate_predict_and_resume(tmp_path, capsys):
    root, runs = tmp_path / "shapes", tmp_path / "runs"
    args = tiny(root, runs)
    cli_main(["fit", *args, "--trainer.max_epochs", "1", "--run_name", "det"])
    first = runs / "det" / "version_0"
    metrics = val_metrics(first)
    names = {f"val/{iou}_{m}" for iou in ("box", "mask") for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    assert names <= metrics.keys()
    assert (root / "annotations" / "instances_val2017.json").is_file()  # written on first use
    # Layer-wise decay 0.95 with the official ids (num_layers 6): every group's lr is lr * 0.95 ** (7 - id). atto's
    # 6-block stage 2 takes ids 3 + j // 3 = 3, 4 only, so id 5 has no parameter.
    rows = list(csv.DictReader((first / "metrics.csv").open()))
    first_step = next(row for row in rows if row.get("lr-AdamW/pg1"))
    logged = {round(float(v), 12) for k, v in first_step.items() if k.startswith("lr-") and v}
    assert logged == {round(4.0e-4 * 0.95 ** (7 - i), 12) for i in (0, 1, 2, 3, 4, 6, 7)}
    last = first / "checkpoints" / "last.ckpt"

    cli_main(["validate", *args, "--run_name", "det_val", "--ckpt_path", str(last)])
    assert val_metrics(runs / "det_val" / "version_0")["val/box_AP"] == pytest.approx(metrics["val/box_AP"])

    cli_main(["predict", *args, "--run_name", "det_pred", "--ckpt_path", str(last)])
    out = runs / "det_pred" / "version_0"
    results = json.loads((out / "detections.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score", "segmentation"} <= results[0].keys()
    coco = COCO(str(root / "annotations" / "instances_val2017.json"))
    loaded = coco.loadRes(str(out / "detections.json"))  # the official evaluation reads the file as written
    assert {a["category_id"] for a in loaded.anns.values()} <= {1, 3, 7}  # COCO ids, not labels
    assert len(list((out / "drawn").glob("*.png"))) == 2

    # Two epochs instead of one: another schedule length, refused in one line and leaving no folder ...
    resume = ["fit", *args, "--trainer.max_epochs", "2", "--run_name", "det", "--ckpt_path", "last"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(resume)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: resuming {last} with changed settings: total optimizer steps 2 -> 4;")
    assert not (runs / "det" / "version_1").exists()
    # ... unless asked for: the checkpoint's schedule goes on.
    cli_main([*resume, "--accept_changed_settings=true"])
    resumed = torch.load(runs / "det" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 4  # 2 steps before the resume, 2 after


@pytest.mark.slow
def test_ddp_two_cpu_processes_fit_and_report_one_ap(tmp_path):
    root, runs = tmp_path / "shapes", tmp_path / "runs"
    args = [a for a in tiny(root, runs) if a not in CPU]
    run_main(
        ["fit", *args, "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
         "--trainer.strategy", "ddp", "--run_name", "ddp",
         # 3 validation images: 2 on rank 0, 1 on rank 1 (each image once); the uneven ranks reduce AP once
         "--data.init_args.val_images", "3"],
        timeout=400,
    )  # fmt: skip
    metrics = val_metrics(runs / "ddp" / "version_0")
    assert 0.0 <= metrics["val/box_AP"] <= 1.0 and 0.0 <= metrics["val/mask_AP"] <= 1.0
