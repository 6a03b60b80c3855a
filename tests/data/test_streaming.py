"""Shards (``convnext_pl/data/streaming``): the converter's command line, the format, the shard order, the
DataModule's equivalence with the folder module, and every mistake a user can make with them, on local shards
(object storage: ``test_streaming_s3.py``)."""

import io
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import CPU, EXPERIMENTS, QUIET, refused, run_folders, run_python
from PIL import Image

from convnext_pl.data import ImageFolderDataModule
from convnext_pl.data.classification.folder import VisibleImageFolder
from convnext_pl.data.classification.synthetic_files import truncate_file, write_image_folder
from convnext_pl.data.streaming import StreamingImageDataModule
from convnext_pl.data.streaming.__main__ import main as streaming_main
from convnext_pl.data.streaming.sampler import ShardOrderSampler
from convnext_pl.data.streaming.shards import load_split_index
from convnext_pl.data.streaming.writer import convert
from convnext_pl.errors import UserError

SMALL = dict(num_classes=4, batch_size=8, num_workers=0, image_size=32)
SHARD_MB = 0.05  # ~16 images of 40 px per shard: 8 shards per split


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folder"), num_classes=4, per_class=30, size=40)


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    assert convert(str(folder), str(out), ["train", "val"], SHARD_MB, workers=2, progress=False) == {
        "train": 120,
        "val": 120,
    }
    return out


def test_shards_keep_every_image_byte_for_byte_indexed_in_imagefolder_order_as_webdataset_tars(
    folder, shards
):
    index = load_split_index(str(shards), "train")
    samples = VisibleImageFolder(str(folder / "train")).samples
    assert len(index.shards) > 4 and len(index) == len(samples)
    assert index.classes == [f"class_{c:02d}" for c in range(4)]
    for i in (0, 17, 64, 119):  # sample i is image i of the folder, wherever its bytes are
        record = index.shards[int(index.shard[i])]
        with open(shards / "train" / record["name"], "rb") as f:
            f.seek(int(index.offset[i]))
            assert f.read(int(index.size[i])) == Path(samples[i][0]).read_bytes()
        assert int(index.label[i]) == samples[i][1]
    # Plain POSIX tars in webdataset's layout: <key>.cls, <key>.jpeg, readable by `tar` and by webdataset.
    with tarfile.open(shards / "train" / "shard-000000.tar") as tar:
        names = tar.getnames()
    key = names[0].removesuffix(".cls")
    assert names[:2] == [f"{key}.cls", f"{key}.jpeg"] and len(names) == 2 * index.shards[0]["count"]


def test_shard_order_gives_each_rank_its_own_shards_covers_the_epoch_and_is_a_function_of_seed_and_epoch():
    shards = [list(range(s, 120, 12)) for s in range(12)]  # 12 shards of 10 samples, stored interleaved
    shard_of = {i: s for s, samples in enumerate(shards) for i in samples}

    def ranks(world: int, epoch: int, window: int = 20) -> list[list[int]]:
        out = []
        for rank in range(world):
            sampler = ShardOrderSampler(range(120), shards, window, num_replicas=world, rank=rank, seed=3)
            sampler.set_epoch(epoch)
            out.append(list(sampler.epoch_indices()))
        return out

    two = ranks(2, epoch=0)
    assert sorted(two[0] + two[1]) == list(range(120))  # every sample once
    read_by = [{shard_of[i] for i in part} for part in two]
    assert not read_by[0] & read_by[1] and len(read_by[0]) == 6  # 60 samples per rank = 6 whole shards each
    # A window of 20 samples (shard-aligned here) reads 2 shards at a time.
    for start in range(0, 60, 20):
        assert len({shard_of[i] for i in two[0][start : start + 20]}) == 2
    assert ranks(2, epoch=0) == two and ranks(2, epoch=1) != two
    # Uneven: 120 samples over 7 ranks pad to 7 x 18 = 126 with the epoch's first samples, as DistributedSampler.
    seven = ranks(7, epoch=0)
    assert {len(part) for part in seven} == {18} and set().union(*map(set, seven)) == set(range(120))


def test_shards_mix_the_classes_so_that_a_window_of_the_shard_order_does(shards):
    module = StreamingImageDataModule(str(shards), shuffle_window=32, **SMALL)
    module.setup("fit")
    labels = module.train_dataset.targets
    for samples in module.train_dataset.shard_samples():
        assert len({labels[i] for i in samples}) >= 3  # ImageFolder order would give one class per shard


def test_shards_with_a_global_shuffle_train_on_the_same_batches_as_the_image_folder(folder, shards):
    # The same seed gives the same permutation, the same per-sample augmentation seeds and the same transforms:
    # the shards are the folder, batch for batch (with the recipe's RandAugment and random erasing on).
    streaming = StreamingImageDataModule(str(shards), shuffle="global", auto_augment="rand-m9-mstd0.5-inc1",
                                         re_prob=0.25, **SMALL)  # fmt: skip
    images = ImageFolderDataModule(str(folder), auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, **SMALL)
    for module in (streaming, images):
        module.setup("fit")
    for (a, y_a), (b, y_b) in zip(streaming.train_dataloader(), images.train_dataloader(), strict=True):
        assert torch.equal(a, b) and torch.equal(y_a, y_b)
    val_a, val_b = next(iter(streaming.val_dataloader())), next(iter(images.val_dataloader()))
    assert torch.equal(val_a[0], val_b[0]) and torch.equal(val_a[1], val_b[1])


def test_a_shard_ordered_sample_is_augmented_exactly_as_the_same_sample_from_the_folder(folder, shards):
    streaming = StreamingImageDataModule(str(shards), fast_pipeline=True, **SMALL)
    images = ImageFolderDataModule(str(folder), fast_pipeline=True, **SMALL)
    for module in (streaming, images):
        module.setup("fit")
    keys = list(iter(streaming.train_dataloader().sampler))[:5]
    for key in keys:
        got, want = streaming.train_dataloader().dataset[key], images.train_dataloader().dataset[key]
        assert torch.equal(got[0].image, want[0].image) and got[1:] == want[1:]


def test_every_validation_image_is_evaluated_once_across_ranks(shards):
    module = StreamingImageDataModule(str(shards), **SMALL)
    module.setup("validate")
    seen = []
    for rank in range(3):
        module.trainer = SimpleNamespace(
            world_size=3, global_rank=rank
        )  # what the sampler reads of a Trainer
        seen += list(module.val_dataloader().sampler)
    assert sorted(seen) == list(range(120))


def test_the_command_line_converts_resumes_an_interrupted_conversion_and_refuses_a_non_empty_output(
    folder, tmp_path, capsys
):
    out = tmp_path / "out"
    streaming_main(["write", "--src", str(folder), "--out", str(out), "--shard-size-mb", str(SHARD_MB),
                    "--workers", "1", "--no-progress"])  # fmt: skip
    assert "train: 120 images, val: 120 images" in capsys.readouterr().out
    # Run again: refused, nothing touched.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(SystemExit) as exit_info:
        streaming_main(["write", "--src", str(folder), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "is not empty; add --overwrite to replace it or --resume to continue it" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # An interrupted conversion: the index not yet written, one shard half written, a temporary folder left.
    (out / "train" / "index.json").unlink()
    truncate_file(out / "train" / "shard-000003.tar", 1000)
    (out / "train" / ".partial-abc").mkdir()
    with pytest.raises(UserError, match="index.json is missing .*add --resume"):
        load_split_index(str(out), "train")
    streaming_main(["write", "--src", str(folder), "--out", str(out), "--shard-size-mb", str(SHARD_MB),
                    "--workers", "1", "--no-progress", "--resume"])  # fmt: skip
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    rewritten = {p.name for p in after if p in before and p.is_file() and after[p] != before[p]}
    assert rewritten == {"shard-000003.tar", "shard-000003.json", "index.json", "index.npz"}
    assert not (out / "train" / ".partial-abc").exists()
    assert len(load_split_index(str(out), "train")) == 120


def test_a_flat_tree_of_class_folders_becomes_the_train_split_and_resize_shrinks_the_longer_side(tmp_path):
    # ImageNet-22K's layout: <wnid>/*.JPEG with no split folders.
    wnids = [f"n{c:08d}" for c in range(3)]
    write_image_folder(
        tmp_path, num_classes=3, per_class=4, size=(80, 40), splits=("flat",), class_names=wnids
    )
    counts = convert(str(tmp_path / "flat"), str(tmp_path / "out"), ["train", "val"], resize_longer=32, workers=1,
                     progress=False)  # fmt: skip
    assert counts == {"train": 12}
    module = StreamingImageDataModule(str(tmp_path / "out"), num_classes=3, val_split=None, batch_size=4,
                                      num_workers=0, image_size=16)  # fmt: skip
    module.setup("fit")
    assert module.train_dataset.classes == wnids and module.val_dataloader() == []
    assert Image.open(io.BytesIO(module.train_dataset.reader.read(0))).size == (32, 16)
    with pytest.raises(UserError, match="validate needs a validation split"):
        module.setup("validate")


def test_damaged_shards_and_indexes_are_named_with_the_fix(shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    truncate_file(copy / "train" / "shard-000002.tar", 100)
    module = StreamingImageDataModule(str(copy), shuffle="global", **SMALL)
    module.setup("fit")
    with pytest.raises(
        UserError, match=r"shard .*shard-000002.tar is truncated or changed; rewrite it with .*--resume"
    ):
        for _ in module.train_dataloader():
            pass
    (copy / "val" / "index.npz").write_bytes(b"not an npz")
    with pytest.raises(UserError, match="the index of .*val is damaged"):
        StreamingImageDataModule(str(copy), **SMALL).setup("validate")
    with pytest.raises(UserError, match="num_classes is 5"):
        StreamingImageDataModule(str(shards), **{**SMALL, "num_classes": 5}).setup("fit")


def test_main_py_refuses_shards_that_are_not_there_in_one_line_and_leaves_no_run_folder(tmp_path, capsys):
    runs = tmp_path / "runs"
    message = refused(
        ["fit", "--config", str(EXPERIMENTS / "digits_streaming.yaml"), "--data.init_args.root", str(tmp_path / "none"),
         *QUIET, *CPU, "--trainer.default_root_dir", str(runs)],
        capsys, runs,
    )  # fmt: skip
    assert "index.json is missing" in message and "python -m convnext_pl.data.streaming write" in message


@pytest.mark.slow
def test_the_streaming_demo_converts_the_digits_and_trains_from_shards_through_main_py(tmp_path):
    images, out = tmp_path / "images", tmp_path / "shards"
    # make demo-streaming's three commands; the converter's in this process (its command line is main()).
    streaming_main(["digits-folder", "--out", str(images)])
    streaming_main(
        ["write", "--src", str(images), "--out", str(out), "--shard-size-mb", "0.25", "--no-progress"]
    )
    assert len(list((out / "train").glob("*.tar"))) >= 8
    result = run_python(
        ["main.py", "fit", "--config", str(EXPERIMENTS / "digits_streaming.yaml"), f"--data.init_args.root={out}",
         "--trainer.max_epochs=1", "--trainer.limit_train_batches=4", *QUIET,
         f"--trainer.default_root_dir={tmp_path / 'runs'}"],
    )  # fmt: skip
    assert "val/acc1" in result.stdout
    assert (tmp_path / "runs" / "digits_streaming" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert run_folders(tmp_path / "runs")
