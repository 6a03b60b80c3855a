"""COCO and ADE20K as shards (``python -m convnext_pl.data.streaming write --layout coco|ade20k``): the converter
keeps the images', label maps' and annotation file's bytes, the streaming DataModules give the folder modules'
batches for the same seed, both train through the command line, COCO goes to and comes back from an S3 server on
127.0.0.1, and damaged shards, an interrupted conversion and a non-empty output are handled as for classification
(``test_streaming.py``)."""

import csv
import json
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, CPU, EXPERIMENTS, QUIET

from convnext_pl.data import ADE20KDataModule, COCODataModule
from convnext_pl.data.classification.synthetic_files import truncate_file, write_image_folder
from convnext_pl.data.detection.coco_synthetic import write_coco_shapes
from convnext_pl.data.segmentation.ade20k_synthetic import write_scenes
from convnext_pl.data.streaming import (
    StreamingADE20KDataModule,
    StreamingCOCODataModule,
    StreamingImageDataModule,
)
from convnext_pl.data.streaming.__main__ import main as streaming_main
from convnext_pl.data.streaming.shards import load_split_index
from convnext_pl.data.streaming.writer import convert
from convnext_pl.errors import UserError
from convnext_pl.training.cli import cli_main

SHARD_MB = 0.01  # a few images per shard: several shards per split
COCO = dict(
    batch_size=2, num_workers=0, train_scales=(48, 64), crop_scales=(40,), crop_size=(32, 48), max_size=96
)
ADE = dict(batch_size=2, num_workers=0, scale=(64, 48), crop_size=(32, 32), num_classes=5)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """The synthetic shapes (COCO layout) and scenes (ADE20K layout), converted once into local shards."""
    root = tmp_path_factory.mktemp("dense")
    coco, ade = write_coco_shapes(root / "coco", 8, 4, 64), write_scenes(root / "ade", 8, 4, 48)
    shards = {"coco": root / "coco_shards", "ade20k": root / "ade_shards"}
    assert convert(str(coco), str(shards["coco"]), shard_size_mb=SHARD_MB, workers=2, progress=False,
                   layout="coco") == {"train2017": 8, "val2017": 4}  # fmt: skip
    assert convert(str(ade), str(shards["ade20k"]), shard_size_mb=SHARD_MB, workers=2, progress=False,
                   layout="ade20k") == {"training": 8, "validation": 4}  # fmt: skip
    return {"coco": coco, "ade": ade, **{f"{k}_shards": v for k, v in shards.items()}}


def _member_names(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return tar.getnames()


def test_coco_shards_keep_each_image_in_sorted_id_order_and_the_annotation_file_byte_for_byte(sources):
    index = load_split_index(str(sources["coco_shards"]), "val2017", "coco")
    document = json.loads((sources["coco"] / "annotations" / "instances_val2017.json").read_text())
    files = {image["id"]: image["file_name"] for image in document["images"]}
    assert index.label.tolist() == sorted(files) and len(index.shards) > 1
    for i, image_id in enumerate(sorted(files)):
        with open(sources["coco_shards"] / "val2017" / index.shards[int(index.shard[i])]["name"], "rb") as f:
            f.seek(int(index.offset[i]))
            assert f.read(int(index.size[i])) == (sources["coco"] / "val2017" / files[image_id]).read_bytes()
    copied = sources["coco_shards"] / "val2017" / "instances_val2017.json"
    assert copied.read_bytes() == (sources["coco"] / "annotations" / "instances_val2017.json").read_bytes()
    assert index.classes == ["rectangle", "ellipse", "triangle"]  # in category id order
    names = _member_names(sources["coco_shards"] / "val2017" / "shard-000000.tar")
    assert names[0].endswith(".id") and names[1] == names[0].replace(".id", ".png")  # webdataset's pairing


def test_ade20k_shards_keep_each_image_and_label_map_in_sorted_name_order(sources):
    index = load_split_index(str(sources["ade20k_shards"]), "training", "ade20k")
    images = sorted((sources["ade"] / "images" / "training").iterdir())
    for i, image in enumerate(images):
        with open(
            sources["ade20k_shards"] / "training" / index.shards[int(index.shard[i])]["name"], "rb"
        ) as f:
            f.seek(int(index.offset[i]))
            assert f.read(int(index.size[i])) == image.read_bytes()
            f.seek(int(index.seg_offset[i]))
            label = sources["ade"] / "annotations" / "training" / f"{image.stem}.png"
            assert f.read(int(index.seg_size[i])) == label.read_bytes()
    names = _member_names(sources["ade20k_shards"] / "training" / "shard-000000.tar")
    assert names[0].endswith(".jpg") and names[1] == names[0].replace(".jpg", ".seg.png")


def _same_detection_batches(a, b) -> int:
    count = 0
    for (images_a, targets_a), (images_b, targets_b) in zip(a, b, strict=True):
        for x, y in zip(images_a, images_b, strict=True):
            assert torch.equal(x, y)
        for x, y in zip(targets_a, targets_b, strict=True):
            assert x.keys() == y.keys() and all(
                torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in x
            )
        count += 1
    return count


def test_coco_from_shards_with_a_global_shuffle_gives_the_folder_modules_batches(sources):
    # Same seed, same permutation, same per-sample seeds, same transforms: images, boxes, masks and labels equal.
    shards = StreamingCOCODataModule(str(sources["coco_shards"]), shuffle="global", **COCO)
    folder = COCODataModule(str(sources["coco"]), **COCO)
    for module in (shards, folder):
        module.setup("fit")
    assert shards.num_classes == folder.num_classes == 3 and shards.class_names == folder.class_names
    assert shards.category_ids == folder.category_ids and shards.has_masks
    assert _same_detection_batches(shards.train_dataloader(), folder.train_dataloader()) == 4
    assert _same_detection_batches(shards.val_dataloader(), folder.val_dataloader()) == 2
    # The shard order reads every training image once per epoch.
    ordered = StreamingCOCODataModule(str(sources["coco_shards"]), shuffle_window=4, **COCO)
    ordered.setup("fit")
    seen = [int(t["image_id"]) for _, targets in ordered.train_dataloader() for t in targets]
    assert sorted(seen) == sorted(folder.datasets["train"].ids)


def test_coco_in_shard_order_stopped_mid_epoch_continues_with_the_batches_an_uninterrupted_epoch_gives(
    sources,
):
    # The loader state a checkpoint keeps, restored into a new DataModule: the rest of the epoch is the same
    # images, boxes and masks (the state --ckpt_path last restores; not run here as a killed main.py process).
    def loader(state=None):
        module = StreamingCOCODataModule(str(sources["coco_shards"]), shuffle_window=4, **COCO)
        module.setup("fit")
        if state is not None:
            module.load_state_dict(state)
        return module, module.train_dataloader()

    whole = list(loader()[1])
    module, interrupted = loader()
    first = next(iter(interrupted))
    resumed = list(loader(module.state_dict())[1])
    assert _same_detection_batches([first], whole[:1]) == 1
    assert _same_detection_batches(resumed, whole[1:]) == len(whole) - 1 == 3


def test_ade20k_from_shards_with_a_global_shuffle_gives_the_folder_modules_batches(sources):
    shards = StreamingADE20KDataModule(str(sources["ade20k_shards"]), shuffle="global", **ADE)
    folder = ADE20KDataModule(str(sources["ade"]), **ADE)
    for module in (shards, folder):
        module.setup("fit")
    for loader in ("train_dataloader", "val_dataloader"):
        pairs = list(zip(getattr(shards, loader)(), getattr(folder, loader)(), strict=True))
        assert pairs and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)


def _metrics(runs: Path) -> dict[str, str]:
    rows = list(csv.DictReader(next(runs.rglob("metrics.csv")).open()))
    return {k: v for row in rows for k, v in row.items() if v}


def test_detection_and_segmentation_train_from_shards_through_the_command_line(sources, tmp_path):
    runs = tmp_path / "runs"
    # One training batch of 4, half the validation batches (the CLI parses "1" as 1.0: every batch).
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=0.25", "--trainer.limit_val_batches=0.5",
             "--trainer.check_val_every_n_epoch=1", "--trainer.num_sanity_val_steps=0",
             "--trainer.log_every_n_steps=1", *QUIET, *CPU]  # fmt: skip
    cli_main(
        ["fit", "--config", str(EXPERIMENTS / "coco_shapes_mask_rcnn.yaml"),
         "--data", str(CONFIGS / "data" / "coco_streaming.yaml"), f"--data.init_args.root={sources['coco_shards']}",
         *[f"--data.init_args.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in COCO.items()],
         "--data.init_args.shuffle_window=4", "--data.init_args.num_classes=3",
         "--model.init_args.net.init_args.min_size=64", "--model.init_args.net.init_args.max_size=96",
         "--model.init_args.net.init_args.fpn_channels=32", "--model.init_args.net.init_args.representation_size=64",
         "--model.init_args.warmup_steps=0",
         *short, f"--trainer.default_root_dir={runs / 'det'}"]
    )  # fmt: skip
    assert "val/box_AP" in _metrics(runs / "det") and "val/mask_AP" in _metrics(runs / "det")
    cli_main(
        ["fit", "--config", str(EXPERIMENTS / "segmentation_synthetic.yaml"),
         "--data", str(CONFIGS / "data" / "ade20k_streaming.yaml"), f"--data.init_args.root={sources['ade20k_shards']}",
         *[f"--data.init_args.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in ADE.items()],
         "--data.init_args.shuffle_window=4", *short, f"--trainer.default_root_dir={runs / 'seg'}"]
    )  # fmt: skip
    assert "val/mIoU" in _metrics(runs / "seg")
    steps = [torch.load(path, weights_only=True)["global_step"] for path in sorted(runs.rglob("last.ckpt"))]
    assert steps == [1, 1]


def test_coco_converted_into_a_bucket_reads_back_through_the_cache_as_the_local_shards(sources, s3, tmp_path):
    s3.bucket("shards")
    streaming_main(["write", "--layout", "coco", "--src", str(sources["coco"]), "--out", "s3://shards/coco",
                    "--split", "val2017", "--shard-size-mb", str(SHARD_MB), "--no-progress"])  # fmt: skip
    bucket = StreamingCOCODataModule("s3://shards/coco", cache_dir=str(tmp_path), num_classes=3, **COCO)
    local = StreamingCOCODataModule(str(sources["coco_shards"]), **COCO)
    for module in (bucket, local):
        module.setup("validate")
    assert bucket.split_paths("val2017")[1].read_bytes() == (sources["coco_shards"] / "val2017" /
                                                            "instances_val2017.json").read_bytes()  # fmt: skip
    assert _same_detection_batches(bucket.val_dataloader(), local.val_dataloader()) == 2
    assert len(list(tmp_path.rglob("shard-*.tar"))) == len(local.datasets["val"].reader.index.shards)
    # An annotation file replaced in the bucket fails its recorded hash and is never used.
    s3.client().put_object(Bucket="shards", Key="coco/val2017/instances_val2017.json", Body=b"{}")
    replaced = StreamingCOCODataModule("s3://shards/coco", cache_dir=str(tmp_path / "other"), **COCO)
    with pytest.raises(
        UserError, match=r"instances_val2017.json does not match the SHA-256 its index records"
    ):
        replaced.setup("validate")
    assert not list((tmp_path / "other").rglob("*.json"))


def test_a_damaged_shard_or_a_shard_of_another_layout_is_named_with_the_fix(sources, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sources["ade20k_shards"], copy)
    truncate_file(copy / "training" / "shard-000001.tar", 100)
    module = StreamingADE20KDataModule(str(copy), shuffle="global", **ADE)
    module.setup("fit")
    with pytest.raises(UserError, match=r"shard .*training/shard-000001.tar is truncated or changed; rewrite it "
                       r"with `python -m convnext_pl.data.streaming write --src <ade20k root> --layout ade20k "
                       r".*--resume`"):  # fmt: skip
        for _ in module.train_dataloader():
            pass
    with pytest.raises(
        UserError, match=r"instances_val2017.json lists 3 categories but num_classes is 80; set"
    ):
        StreamingCOCODataModule(str(sources["coco_shards"]), num_classes=80, **COCO).setup("validate")
    with pytest.raises(
        UserError, match=r"none/val2017/index.json is missing .* write --src <coco root> --layout coco"
    ):
        StreamingCOCODataModule(str(tmp_path / "none"), **COCO).setup("validate")
    with pytest.raises(
        UserError,
        match=r"holds ade20k shards, not coco; read it with convnext_pl.data.streaming.StreamingADE20KDataModule",
    ):
        StreamingCOCODataModule(str(copy), val_split="validation", **COCO).setup("validate")


def test_an_interrupted_dense_conversion_resumes_and_a_non_empty_output_is_refused(sources, tmp_path, capsys):
    out = tmp_path / "out"
    command = ["write", "--layout", "ade20k", "--src", str(sources["ade"]), "--out", str(out),
               "--shard-size-mb", str(SHARD_MB), "--workers", "1", "--no-progress"]  # fmt: skip
    streaming_main(command)
    assert "training: 8 images, validation: 4 images" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        streaming_main(command)
    assert exit_info.value.code == 2 and "is not empty; add --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        streaming_main([*command, "--overwrite", "--resize-longer", "32"])
    assert (
        "--resize-longer would re-encode the images but not their ade20k annotations"
        in capsys.readouterr().err
    )
    # Killed mid-way: no index yet, one shard half written, a temporary folder left.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    (out / "training" / "index.json").unlink()
    truncate_file(out / "training" / "shard-000002.tar", 1000)
    (out / "training" / ".partial-abc").mkdir()
    streaming_main([*command, "--resume"])
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    rewritten = {p.name for p in after if p in before and p.is_file() and after[p] != before[p]}
    assert rewritten == {"shard-000002.tar", "shard-000002.json", "index.json", "index.npz"}
    assert not (out / "training" / ".partial-abc").exists()
    module = StreamingADE20KDataModule(str(out), shuffle="global", **ADE)
    module.setup("fit")
    assert len(list(module.train_dataloader())) == 4


def test_classification_shards_of_format_1_are_still_read_and_an_unknown_format_is_refused(tmp_path):
    write_image_folder(tmp_path / "folder", num_classes=2, per_class=2, size=8, splits=("train",))
    convert(str(tmp_path / "folder"), str(tmp_path / "out"), ["train"], workers=1, progress=False)
    manifest_path = tmp_path / "out" / "train" / "index.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["format"] == 2 and manifest["layout"] == "imagefolder"
    del manifest["layout"]  # what the converter wrote before the dense layouts
    manifest_path.write_text(json.dumps({**manifest, "format": 1}))
    module = StreamingImageDataModule(
        str(tmp_path / "out"), num_classes=2, val_split=None, num_workers=0, batch_size=2
    )
    module.setup("fit")
    assert len(module.train_dataset) == 4
    manifest_path.write_text(json.dumps({**manifest, "format": 3}))
    with pytest.raises(UserError, match=r"index.json is of format 3, not 2; .*--overwrite"):
        load_split_index(str(tmp_path / "out"), "train")


def test_the_converter_names_a_missing_image_or_annotation_file_of_the_source(tmp_path):
    coco = write_coco_shapes(tmp_path / "coco", 2, 1, 32)
    next((coco / "train2017").iterdir()).unlink()
    with pytest.raises(
        UserError, match=r"1 images of .*instances_train2017.json are missing, the first .*\.png"
    ):
        convert(str(coco), str(tmp_path / "out"), layout="coco", progress=False)
    with pytest.raises(UserError, match=r"annotations has none of instances_training.json"):
        convert(str(coco), str(tmp_path / "out"), ["training"], layout="coco", progress=False)
    with pytest.raises(
        UserError, match=r"images has none of training, validation; give the ADEChallengeData2016"
    ):
        convert(str(coco), str(tmp_path / "out"), layout="ade20k", progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything is written
