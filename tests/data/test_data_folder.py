"""Image folders and ImageNet on small real JPEGs: batches, layout errors, corrupt files, devkit layout."""

import shutil
import warnings

import pytest
import torch
from helpers.fakedata import corrupt_jpeg, write_image_folder, write_imagenet_meta

from convnext_pl.data import ImageFolderDataModule, ImageNetDataModule
from convnext_pl.errors import UserError


def _module(root, num_classes=3, **kwargs):
    kwargs = {"batch_size": 4, "num_workers": 0, "image_size": 32, **kwargs}
    return ImageFolderDataModule(root=str(root), num_classes=num_classes, **kwargs)


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "data", num_classes=3, per_class=4, size=(48, 40))


def _setup_error(module, stage="fit") -> str:
    with pytest.raises(UserError) as err:
        module.setup(stage)
    message = str(err.value)
    assert "\n" not in message  # the CLI prints it as one line
    return message


def test_batches_class_names_and_recipe_transform(folder):
    module = _module(folder, re_prob=0.25)
    module.setup("fit")
    assert module.class_names == ["class_00", "class_01", "class_02"]
    assert len(module.train_dataset) == 12 and module.test_dataset is module.val_dataset
    for loader in (module.train_dataloader(), module.val_dataloader(), module.test_dataloader()):
        images, targets = next(iter(loader))
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
        assert targets.dtype == torch.int64 and set(targets.tolist()) <= {0, 1, 2}
    names = [type(t).__name__ for t in module.train_dataset.transform.transforms]
    assert (
        names[0] == "RandomResizedCropAndInterpolation"
        and "RandAugment" in names
        and "RandomErasing" in names
    )


def test_validation_uses_the_eval_resize_and_crop(folder):
    module = _module(folder, image_size=32, crop_pct=0.875)
    module.setup("validate")
    resize = module.val_dataset.transform.transforms[0]
    assert resize.size == 36  # floor(32 / 0.875), then the center 32 crop
    assert module.train_dataset is None  # validate builds only what it uses


def test_hidden_folders_are_not_classes(folder):
    (folder / "train" / ".ipynb_checkpoints").mkdir()
    module = _module(folder)
    module.setup("fit")
    assert len(module.class_names) == 3


def test_missing_train_folder(folder):
    shutil.rmtree(folder / "train")
    message = _setup_error(_module(folder))
    assert str(folder / "train") in message and "<class>" in message


def test_split_without_class_folders(folder):
    shutil.rmtree(folder / "val")
    (folder / "val").mkdir()
    (folder / "val" / "loose.jpg").write_bytes(b"")
    message = _setup_error(_module(folder))
    assert str(folder / "val") in message and "no class folders" in message


def test_class_count_differs_from_num_classes(folder):
    message = _setup_error(_module(folder, num_classes=5))
    assert str(folder / "train") in message and "set data.init_args.num_classes: 3" in message


def test_train_and_val_classes_differ(folder):
    (folder / "val" / "class_02").rename(folder / "val" / "class_99")
    message = _setup_error(_module(folder))
    assert str(folder / "val") in message and "class_02" in message and "class_99" in message


def test_class_folder_without_images(folder):
    for image in (folder / "val" / "class_01").iterdir():
        image.unlink()
    message = _setup_error(_module(folder))
    assert str(folder / "val") in message and "class_01" in message


def test_evaluating_needs_only_the_val_split(folder):
    shutil.rmtree(folder / "train")
    module = _module(folder)
    module.setup("test")
    assert len(module.test_dataset) == 12 and module.class_names == ["class_00", "class_01", "class_02"]


def _corrupt_one(folder):
    return str(corrupt_jpeg(sorted((folder / "train" / "class_01").iterdir())[1]))


def _first_batch_error(loader) -> str:
    try:
        next(iter(loader))
    except UserError as err:
        # torch's re-raise leaves the exception in a reference cycle with its traceback, which holds the
        # DataLoader iterator; freed later by the garbage collector, its worker takes 5 s to shut down.
        # Dropping the traceback frees the iterator (and its worker) right here.
        err.__traceback__ = None
        return str(err)
    pytest.fail("loading a corrupt image raised no UserError")


@pytest.mark.parametrize("num_workers", [0, 1], ids=["main-process", "worker"])
def test_corrupt_image_stops_loading_with_its_name(folder, num_workers):
    bad = _corrupt_one(folder)
    module = _module(folder, num_workers=num_workers, batch_size=12)
    module.setup("fit")  # no scan without skip_corrupt: setup stays cheap
    message = _first_batch_error(module.train_dataloader())
    # A worker's exception comes back wrapped in its traceback; the message is still our one sentence.
    assert message.startswith("cannot decode image") and "\n" not in message
    assert bad in message and "skip_corrupt: true" in message


def test_skip_corrupt_leaves_out_unreadable_images_and_warns(folder):
    bad = _corrupt_one(folder)
    (folder / "train" / "class_02" / "empty.jpg").write_bytes(b"")
    module = _module(folder, skip_corrupt=True, batch_size=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.setup("fit")
    (warning,) = [w for w in caught if "skip_corrupt" in str(w.message)]
    assert "left out 2 unreadable images" in str(warning.message) and bad in str(warning.message)
    paths = [path for path, _ in module.train_dataset.samples]
    assert len(paths) == 11 and bad not in paths  # 12 written + 1 empty file - 2 unreadable
    assert len(module.train_dataset.targets) == 11
    assert sum(len(targets) for _, targets in module.train_dataloader()) == 10  # 2 full batches of 5


def test_imagenet_defaults_follow_the_recipe(tmp_path):
    module = ImageNetDataModule(root=str(tmp_path / "none"))
    assert (module.num_classes, module.batch_size, module.num_workers, module.image_size) == (
        1000,
        128,
        8,
        224,
    )
    assert (module.auto_augment, module.re_prob, module.crop_pct) == ("rand-m9-mstd0.5-inc1", 0.25, 0.875)


WNIDS = {"n01440764": ("tench", "Tinca tinca"), "n01443537": ("goldfish", "Carassius auratus")}


def test_imagenet_auto_layout_reads_a_folder_tree(tmp_path):
    root = write_image_folder(tmp_path, num_classes=2, per_class=2, class_names=list(WNIDS))
    module = ImageNetDataModule(root=str(root), num_classes=2, batch_size=2, num_workers=0, image_size=32)
    assert module.resolved_layout() == "folder"
    module.setup("fit")
    assert module.class_names == list(WNIDS)  # no meta.bin: the WordNet ids themselves


def test_imagenet_auto_layout_detects_the_devkit_and_asks_for_the_archive(tmp_path):
    write_imagenet_meta(tmp_path, WNIDS, val_wnids=[])
    module = ImageNetDataModule(root=str(tmp_path), num_classes=2)
    assert module.resolved_layout() == "devkit"
    with pytest.raises(UserError) as err:
        module.prepare_data()
    message = str(err.value)
    assert str(tmp_path / "ILSVRC2012_img_train.tar") in message and "layout: folder" in message


def test_imagenet_devkit_layout_without_devkit_names_the_devkit_archive(tmp_path):
    module = ImageNetDataModule(root=str(tmp_path), layout="devkit")
    with pytest.raises(UserError, match="ILSVRC2012_devkit_t12.tar.gz"):
        module.prepare_data()


def test_imagenet_devkit_layout_reads_extracted_data_with_human_readable_names(tmp_path):
    """After torchvision's parsers ran (meta.bin + train/ + val/), the data reads with meta.bin's names."""
    root = write_image_folder(tmp_path, num_classes=2, per_class=2, class_names=list(WNIDS))
    write_imagenet_meta(root, WNIDS, val_wnids=[wnid for wnid in WNIDS for _ in range(2)])
    module = ImageNetDataModule(root=str(root), num_classes=2, batch_size=2, num_workers=0, layout="devkit")
    module.prepare_data()  # everything extracted already: nothing to do
    module.setup("fit")
    assert module.class_names == ["tench", "goldfish"]
    images, targets = next(iter(module.val_dataloader()))
    assert images.shape == (2, 3, 224, 224) and targets.tolist() == [0, 0]
