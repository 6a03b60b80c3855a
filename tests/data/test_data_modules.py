"""The contract every DataModule keeps, the digits and synthetic modules, and prediction over a folder."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.fakedata import write_image_folder
from PIL import Image

from convnext_pl.data import (
    CIFARDataModule,
    ClassificationDataModule,
    COCOShapesDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    ImageNetDataModule,
    SyntheticDataModule,
    SyntheticScenesDataModule,
)
from convnext_pl.data.classification.digits import DIGITS_MEAN, DIGITS_STD
from convnext_pl.data.resumable import ResumableSampler
from convnext_pl.errors import UserError


def _all_modules(root):
    return [
        DigitsDataModule(),
        SyntheticDataModule(num_classes=7),
        CIFARDataModule(root=str(root), variant="cifar100"),
        ImageFolderDataModule(root=str(root), num_classes=5),
        ImageNetDataModule(root=str(root)),
    ]


def test_init_touches_no_disk_and_knows_its_shape(tmp_path):
    missing = tmp_path / "not" / "there"
    modules = _all_modules(missing)  # no error: nothing is read before setup
    assert not (tmp_path / "not").exists()
    assert [m.num_classes for m in modules] == [10, 7, 100, 5, 1000]
    for module in modules:
        assert isinstance(module, ClassificationDataModule)
        assert isinstance(module.batch_size, int) and isinstance(module.num_workers, int)
        assert isinstance(module.image_size, int) and module.predict_dir is None
        assert len(module.mean) == 3 and len(module.std) == 3
        assert module.hparams["batch_size"] == module.batch_size  # recorded into checkpoints


@pytest.mark.parametrize(
    ("index", "how_to_get_it"),
    [(2, "set data.init_args.download: true"), (3, "expected"), (4, "expected")],
    ids=["cifar", "folder", "imagenet"],
)
def test_setup_reports_missing_data_root_as_one_sentence_naming_it(tmp_path, index, how_to_get_it):
    root = tmp_path / "absent"
    module = _all_modules(root)[index]
    with pytest.raises(UserError) as err:
        module.setup("fit")
    message = str(err.value)
    assert str(root) in message and how_to_get_it in message and "\n" not in message


def _first_batch(loader):
    images, targets = next(iter(loader))
    assert images.dtype == torch.float32 and targets.dtype == torch.int64
    assert images.ndim == 4 and images.shape[1] == 3 and len(targets) == len(images)
    return images, targets


def test_digits_batches_are_normalised_upsampled_grey_images():
    module = DigitsDataModule(image_size=32, batch_size=64)
    module.setup("fit")
    assert module.class_names == [str(d) for d in range(10)]
    images, targets = _first_batch(module.train_dataloader())
    assert images.shape == (64, 3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 2])  # grey repeated into every channel
    val_images, _ = _first_batch(module.val_dataloader())
    raw = module.val_dataset.images  # (N, 8, 8) in 0..1
    expected = (
        F.interpolate(raw[:64, None], size=32, mode="bilinear", align_corners=False) - DIGITS_MEAN[0]
    ) / (DIGITS_STD[0])
    torch.testing.assert_close(val_images[:, :1], expected)  # validation: no augmentation
    assert abs(val_images.mean().item()) < 0.3 and 0.6 < val_images.std().item() < 1.2


def test_digits_split_is_fixed_by_the_seed_and_stratified():
    def split(seed):
        module = DigitsDataModule(seed=seed)
        module.setup("fit")
        return module.train_dataset, module.val_dataset

    train_a, val_a = split(0)
    train_b, val_b = split(0)
    _, val_c = split(1)
    assert torch.equal(val_a.images, val_b.images) and torch.equal(train_a.targets, train_b.targets)
    assert not torch.equal(val_a.images, val_c.images)
    assert len(train_a) + len(val_a) == 1797 and len(val_a) == 360
    per_class = torch.bincount(val_a.targets, minlength=10).float() / torch.bincount(
        torch.cat([train_a.targets, val_a.targets]), minlength=10
    )
    assert torch.allclose(per_class, torch.full((10,), 0.2), atol=0.01)  # 20% of every digit


def test_digits_training_images_are_augmented_differently_each_time():
    module = DigitsDataModule(augment=True)
    module.setup("fit")
    first, second = module.train_dataset[0][0], module.train_dataset[0][0]
    assert not torch.equal(first, second)
    assert module.test_dataset is module.val_dataset


def test_synthetic_images_depend_only_on_seed_and_index():
    a, b = SyntheticDataModule(seed=3), SyntheticDataModule(seed=3)
    a.setup("fit")
    b.setup("fit")
    torch.testing.assert_close(a.train_dataset[5][0], b.train_dataset[5][0])
    assert not torch.equal(a.train_dataset[5][0], a.val_dataset[5][0])  # val holds other images
    targets = torch.tensor([a.train_dataset[i][1] for i in range(len(a.train_dataset))])
    assert torch.bincount(targets).tolist() == [26] * 6 + [25] * 4  # 256 images cycling over 10 classes


def test_synthetic_class_signal_is_learnable():
    """Nearest class mean on 4x4-pooled images, fitted on train, classifies val: the signal is there."""
    module = SyntheticDataModule(num_classes=10, image_size=32, train_size=200, val_size=100, batch_size=50)
    module.setup("fit")

    def features(dataset):
        images, targets = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
        return F.adaptive_avg_pool2d(torch.stack(images), 4).flatten(1), torch.tensor(targets)

    train_x, train_y = features(module.train_dataset)
    val_x, val_y = features(module.val_dataset)
    means = torch.stack([train_x[train_y == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(val_x, means).argmin(1) == val_y).float().mean().item()
    assert accuracy > 0.9
    images, _ = _first_batch(module.train_dataloader())
    assert images.shape == (50, 3, 32, 32) and 0.8 < images.std().item() < 1.2


def test_batch_larger_than_training_split_is_a_user_error():
    module = SyntheticDataModule(train_size=16, batch_size=32)
    with pytest.raises(UserError, match="lower data.init_args.batch_size"):
        module.setup("fit")


def test_loaders_follow_the_contract():
    module = SyntheticDataModule(num_workers=2)
    module.setup("fit")
    train, val = module.train_dataloader(), module.val_dataloader()
    assert train.drop_last and not val.drop_last
    assert isinstance(train.sampler, ResumableSampler) and train.sampler.shuffle  # resumable mid-epoch
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)
    assert train.persistent_workers and train.batch_size == module.batch_size
    in_process = SyntheticDataModule(num_workers=0)
    in_process.setup("fit")
    assert not in_process.train_dataloader().persistent_workers  # DataLoader refuses it without workers


def _write_loose_images(root):
    rng = np.random.default_rng(0)
    names = ["b.jpg", "a.PNG", "nested/deeper/c.JpEg", "nested/d.bmp", "e.webp"]
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)).save(path)
    (root / "notes.txt").write_text("not an image")
    return sorted(str(root / name) for name in names)


@pytest.mark.parametrize(
    "module",
    [
        lambda d: DigitsDataModule(image_size=16, batch_size=2, predict_dir=d),
        lambda d: SyntheticDataModule(image_size=24, batch_size=2, predict_dir=d),
        lambda d: CIFARDataModule(root="nowhere", batch_size=2, num_workers=0, predict_dir=d),
        lambda d: ImageFolderDataModule(
            root="nowhere", num_classes=3, image_size=32, batch_size=2, num_workers=0, predict_dir=d
        ),
    ],
    ids=["digits", "synthetic", "cifar", "folder"],
)
def test_predict_yields_every_image_under_the_folder_with_its_path(tmp_path, module):
    expected = _write_loose_images(tmp_path / "photos")
    dm = module(str(tmp_path / "photos"))
    dm.setup("predict")  # needs no training data
    batches = list(dm.predict_dataloader())
    assert all(isinstance(batch_paths, list) for _, batch_paths in batches)
    paths = [p for _, batch_paths in batches for p in batch_paths]
    assert paths == expected  # recursive, sorted, any letter case, non-images left out
    images = torch.cat([images for images, _ in batches])
    assert images.shape == (5, 3, dm.image_size, dm.image_size) and images.dtype == torch.float32


def test_predict_class_names_come_without_training_images(tmp_path):
    _write_loose_images(tmp_path / "photos")
    digits = DigitsDataModule(predict_dir=str(tmp_path / "photos"))
    digits.setup("predict")
    assert digits.class_names == [str(d) for d in range(10)]
    write_image_folder(tmp_path / "data", num_classes=3, per_class=1, splits=("train",))
    folder = ImageFolderDataModule(
        root=str(tmp_path / "data"), num_classes=3, predict_dir=str(tmp_path / "photos")
    )
    folder.setup("predict")
    assert folder.class_names == ["class_00", "class_01", "class_02"]


@pytest.mark.parametrize("setup_dir", [None, "missing", "empty"])
def test_predict_without_images_is_a_user_error(tmp_path, setup_dir):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    predict_dir = None if setup_dir is None else str(tmp_path / setup_dir)
    module = SyntheticDataModule(predict_dir=predict_dir)
    with pytest.raises(UserError, match="predict_dir") as err:
        module.setup("predict")
    if predict_dir is not None:
        assert predict_dir in str(err.value)


def _evaluated_on(module, world_size: int, loader: str) -> list[int]:
    """The sample indices ``loader`` (val/test) gives each of ``world_size`` ranks, all ranks together."""
    seen = []
    for rank in range(world_size):
        module.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)  # what the sampler reads
        seen += list(getattr(module, f"{loader}_dataloader")().sampler)
    module.trainer = None
    return seen


@pytest.mark.parametrize("family", ["classification", "segmentation", "detection"])
def test_evaluation_on_several_ranks_reads_every_image_exactly_once(family, tmp_path):
    """Lightning's DistributedSampler would pad the last ranks with repeated images (5 on 2 ranks: 6 evaluated)
    and top-1, mIoU and AP would count them twice; every task's module gives each image to one rank."""
    if family == "classification":
        module = DigitsDataModule(batch_size=8)
    elif family == "segmentation":
        module = SyntheticScenesDataModule(
            root=str(tmp_path / "scenes"), train_images=2, val_images=5, image_size=32
        )
    else:
        module = COCOShapesDataModule(
            root=str(tmp_path / "shapes"), train_images=2, val_images=5, image_size=48
        )
    module.prepare_data()
    module.setup("fit")
    size = len(module.val_dataloader().dataset)
    for loader in ("val", "test"):
        for world_size in (2, 3):
            assert sorted(_evaluated_on(module, world_size, loader)) == list(range(size))
