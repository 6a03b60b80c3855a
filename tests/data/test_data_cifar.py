"""CIFAR-10/100 on files written in the genuine pickle format (never downloaded)."""

import pytest
import torch
from helpers.fakedata import CIFAR10_CLASSES, CIFAR100_CLASSES, truncate_file, write_cifar
from PIL import Image

from convnext_pl.data import CIFARDataModule
from convnext_pl.data.classification.cifar import CIFAR_STATS
from convnext_pl.errors import UserError


@pytest.mark.parametrize(
    ("variant", "classes"), [("cifar10", CIFAR10_CLASSES), ("cifar100", CIFAR100_CLASSES)], ids=["10", "100"]
)
def test_native_32_batches_and_real_class_names(tmp_path, cifar_md5_bypass, variant, classes):
    write_cifar(tmp_path, variant, n_train=120, n_test=40)
    module = CIFARDataModule(root=str(tmp_path), variant=variant, batch_size=16, num_workers=0, re_prob=0.25)
    module.setup("fit")
    assert module.class_names == classes and module.num_classes == len(classes)
    assert len(module.train_dataset) == 120 and len(module.val_dataset) == 40
    assert module.test_dataset is module.val_dataset  # CIFAR's test split is the held-out split
    assert module.mean == CIFAR_STATS[variant][0]
    for loader in (module.train_dataloader(), module.val_dataloader(), module.test_dataloader()):
        images, targets = next(iter(loader))
        assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
        assert targets.dtype == torch.int64 and 0 <= targets.min() and targets.max() < len(classes)
        assert images.abs().max() < 8  # normalised (erasing noise included), not 0..1 or 0..255


def test_validation_images_are_the_stored_pixels_normalised(tmp_path, cifar_md5_bypass):
    write_cifar(tmp_path, n_train=10, n_test=10)
    module = CIFARDataModule(root=str(tmp_path), num_workers=0, batch_size=10)
    module.setup("validate")
    image, _ = module.val_dataset[0]
    raw = (
        torch.from_numpy(module.val_dataset.data[0]).permute(2, 0, 1).float() / 255
    )  # (H, W, C) -> (C, H, W)
    mean, std = (torch.tensor(s)[:, None, None] for s in CIFAR_STATS["cifar10"])
    torch.testing.assert_close(image, (raw - mean) / std)


def test_upsampled_for_finetuning_uses_the_recipe_and_imagenet_statistics(tmp_path, cifar_md5_bypass):
    write_cifar(tmp_path, n_train=10, n_test=4)
    module = CIFARDataModule(root=str(tmp_path), image_size=96, batch_size=4, num_workers=0)
    module.setup("fit")
    assert module.mean == (0.485, 0.456, 0.406)
    assert next(iter(module.train_dataloader()))[0].shape == (4, 3, 96, 96)
    assert next(iter(module.val_dataloader()))[0].shape == (4, 3, 96, 96)


def test_missing_data_says_how_to_get_it(tmp_path):
    module = CIFARDataModule(root=str(tmp_path / "cifar"), variant="cifar100")
    with pytest.raises(UserError) as err:
        module.setup("fit")
    message = str(err.value)
    assert str(tmp_path / "cifar" / "cifar-100-python") in message
    assert "download: true" in message and "cifar-100-python.tar.gz" in message


def test_truncated_batch_file_is_named(tmp_path, cifar_md5_bypass):
    folder = write_cifar(tmp_path, n_train=50, n_test=10)
    truncate_file(folder / "data_batch_3", 500)
    with pytest.raises(UserError) as err:
        CIFARDataModule(root=str(tmp_path), num_workers=0).setup("fit")
    message = str(err.value)
    assert str(folder / "data_batch_3") in message and "download: true" in message and "\n" not in message


def test_missing_test_file_is_named(tmp_path, cifar_md5_bypass):
    folder = write_cifar(tmp_path, "cifar100", n_train=20, n_test=10)
    (folder / "test").unlink()
    with pytest.raises(UserError, match="is missing") as err:
        CIFARDataModule(root=str(tmp_path), variant="cifar100", num_workers=0).setup("test")
    assert str(folder / "test") in str(err.value)


def test_md5_check_is_kept_in_the_product(tmp_path):
    """Without the test bypass, files that differ from the published ones are rejected, naming the first."""
    folder = write_cifar(tmp_path, n_train=10, n_test=10)
    with pytest.raises(UserError, match="md5") as err:
        CIFARDataModule(root=str(tmp_path), num_workers=0).setup("fit")
    assert str(folder / "data_batch_1") in str(err.value)


def test_predict_needs_only_the_meta_file_for_class_names(tmp_path):
    write_cifar(tmp_path, n_train=10, n_test=10)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (50, 40), (200, 30, 30)).save(photos / "red.png")
    with_meta = CIFARDataModule(root=str(tmp_path), num_workers=0, predict_dir=str(photos))
    with_meta.setup("predict")
    assert with_meta.class_names == CIFAR10_CLASSES
    images, paths = next(iter(with_meta.predict_dataloader()))
    assert images.shape == (1, 3, 32, 32) and paths == [str(photos / "red.png")]
    without_data = CIFARDataModule(root=str(tmp_path / "nowhere"), predict_dir=str(photos))
    without_data.setup("predict")
    assert without_data.class_names == []
