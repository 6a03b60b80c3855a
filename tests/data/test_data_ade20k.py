"""ADE20K layout, reduce-zero-label, the official training pipeline, and one-sentence data errors."""

import numpy as np
import pytest
import torch
from helpers import refused, tiny_segmentation
from PIL import Image
from torchvision import tv_tensors

from convnext_pl.data import ADE20KDataModule, SegmentationFolderDataModule, SyntheticScenesDataModule
from convnext_pl.data.segmentation.ade20k_synthetic import write_scenes
from convnext_pl.data.segmentation.folder import reduce_zero_label
from convnext_pl.data.segmentation.transforms import CategoryRatioCrop, fit_size, seg_train_transform
from convnext_pl.errors import UserError


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("ade") / "ADEChallengeData2016", 4, 2, image_size=40, seed=1)


def _module(root, **overrides):
    options = dict(root=str(root), num_workers=0, batch_size=2, scale=(64, 40), crop_size=(32, 32))
    return ADE20KDataModule(**{**options, **overrides})


def test_official_layout_on_disk(ade_root):
    assert sorted(p.name for p in (ade_root / "images" / "training").iterdir())[0] == "ADE_train_00000001.jpg"
    label = Image.open(ade_root / "annotations" / "validation" / "ADE_valid_00000001.png")
    assert label.mode == "L" and set(np.unique(np.array(label))) <= {0, 1, 2, 3, 4, 5}


def test_labels_after_reduce_zero_label(ade_root):
    dm = _module(ade_root)
    dm.setup("validate")
    image, label = dm.datasets["val"][0]
    raw = torch.from_numpy(np.array(Image.open(dm.datasets["val"].labels[0]))).long()
    expected = torch.where(raw == 0, 255, raw - 1)  # 0 = other -> ignore; 1..150 -> 0..149
    assert torch.equal(label, expected)
    assert image.shape[1:] == fit_size(*raw.shape, (64, 40))  # the image is fitted, the label keeps its size
    assert torch.equal(reduce_zero_label(torch.tensor([0, 1, 150, 255])), torch.tensor([255, 0, 149, 255]))
    assert dm.num_classes == 150 and dm.class_names[0] == "wall" and len(dm.class_names) == 150


def test_train_batches_are_crops_padded_with_ignore(ade_root):
    dm = _module(ade_root, scale=(40, 20), ratio_range=(0.5, 0.5))  # images fitted to 20x15: smaller than 32
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and labels.shape == (2, 32, 32) and labels.dtype == torch.long
    assert (labels[:, -1, :] == 255).all() and (images[:, :, -1, :] == 0).all()  # bottom padding


def test_crop_rule_avoids_one_class_covering_the_crop():
    # Class 1 everywhere except a 4x4 patch of class 2 in the top-left corner: only crops that hold the patch
    # keep class 1 under 75 %; an unconstrained crop would almost never hold it.
    mask = torch.ones(1, 64, 64, dtype=torch.long)
    mask[:, :4, :4] = 2
    crop = CategoryRatioCrop((6, 6), cat_max_ratio=0.75, tries=10_000)
    for _ in range(5):
        out = crop(tv_tensors.Mask(mask))
        _, counts = torch.unique(out, return_counts=True)
        assert len(counts) == 2 and counts.max() / counts.sum() < 0.75


def test_train_pipeline_keeps_image_and_mask_aligned():
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    image[:, :, 30:] = 255  # right half white
    mask = torch.zeros(1, 40, 60, dtype=torch.long)
    mask[:, :, 30:] = 1
    out_image, out_mask = seg_train_transform((60, 40), (1.0, 1.0), (40, 60), 1.0)(
        tv_tensors.Image(image), tv_tensors.Mask(mask)
    )
    white = out_image.mean(dim=0) > out_image.mean()
    assert torch.equal(white, out_mask[0] == 1)  # flips and crops moved both together


def test_corrupt_png_is_one_sentence_naming_the_file(tmp_path, ade_root):
    root = write_scenes(tmp_path / "ADEChallengeData2016", 2, 2, image_size=40)
    broken = root / "annotations" / "validation" / "ADE_valid_00000002.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dm = _module(root)
    dm.setup("validate")
    with pytest.raises(UserError, match="ADE_valid_00000002.png") as info:
        dm.datasets["val"][1]
    assert "\n" not in str(info.value)


def test_size_mismatch_is_one_sentence_naming_the_file(tmp_path):
    root = write_scenes(tmp_path / "ADEChallengeData2016", 2, 1, image_size=40)
    label = root / "annotations" / "validation" / "ADE_valid_00000001.png"
    Image.fromarray(np.ones((10, 12), np.uint8), mode="L").save(label)
    dm = _module(root)
    dm.setup("validate")
    with pytest.raises(UserError, match=r"ADE_valid_00000001.png' is \(10, 12\)"):
        dm.datasets["val"][0]


def test_missing_folder_and_label(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        _module(tmp_path / "nowhere").setup("fit")
    root = write_scenes(tmp_path / "ADEChallengeData2016", 1, 1, image_size=40)
    (root / "annotations" / "training" / "ADE_train_00000001.png").unlink()
    with pytest.raises(UserError, match="ADE_train_00000001.png' is missing"):
        _module(root).setup("fit")


def test_generic_folder_module_checks_class_count(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "images" / split / "a.png")
        Image.fromarray(np.full((20, 24), 3, np.uint8), mode="L").save(tmp_path / "labels" / split / "a.png")
    dm = SegmentationFolderDataModule(str(tmp_path), num_classes=3, num_workers=0, scale=(24, 20))
    dm.setup("validate")
    with pytest.raises(UserError, match="holds class 3 but the data set has 3 classes"):
        dm.datasets["val"][0]
    ok = SegmentationFolderDataModule(str(tmp_path), num_classes=4, num_workers=0, scale=(24, 20))
    ok.setup("validate")
    assert ok.datasets["val"][0][1].unique().tolist() == [3]


def test_synthetic_module_writes_once_and_never_overwrites(tmp_path):
    dm = SyntheticScenesDataModule(root=str(tmp_path / "scenes"), train_images=2, val_images=1, image_size=32)
    assert not (tmp_path / "scenes").exists()  # __init__ touches no disk
    dm.prepare_data()
    first = (tmp_path / "scenes" / "images" / "training" / "ADE_train_00000001.jpg").read_bytes()
    SyntheticScenesDataModule(
        root=str(tmp_path / "scenes"), train_images=2, image_size=32, seed=5
    ).prepare_data()
    assert (tmp_path / "scenes" / "images" / "training" / "ADE_train_00000001.jpg").read_bytes() == first
    again = write_scenes(tmp_path / "again", 2, 1, image_size=32)
    assert (again / "images" / "training" / "ADE_train_00000001.jpg").read_bytes() == first  # deterministic
    assert dm.num_classes == 5


def test_fewer_images_than_one_batch(ade_root):
    dm = _module(ade_root, batch_size=8)  # 4 training images
    dm.setup("fit")
    with pytest.raises(UserError, match="fewer than one batch of 8"):
        dm.train_dataloader()


def test_a_set_whose_labels_are_all_ignored_is_named_as_such_before_training(tmp_path, capsys):
    """ADE20K label maps of only 0 ("other"): after reduce_zero_label every pixel is 255, so nothing can be
    learned. main.py's fit says so in set-up (before it said "loss is nan ... lower model.lr")."""
    root = write_scenes(tmp_path / "ADEChallengeData2016", 4, 2, image_size=40, seed=1)
    for label in (root / "annotations" / "training").iterdir():
        Image.fromarray(np.zeros_like(np.array(Image.open(label)))).save(label)
    line = refused(["fit", *tiny_segmentation(root, tmp_path / "runs")], capsys, tmp_path)
    folder = root / "annotations" / "training"
    assert line == (
        f"error: every pixel of the first 4 label maps in '{folder}' is the ignore value 255 after "
        "reduce_zero_label (which makes class 0 the ignore value): there is no class to learn; check the label "
        "PNGs, or set data.init_args.reduce_zero_label false if 0 is a class"
    )


def test_a_batch_without_labelled_pixels_has_loss_zero_not_nan():
    from convnext_pl.tasks.segmentation import SemanticSegmenter

    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = SemanticSegmenter._pixel_loss(logits, torch.full((2, 4, 4), 255))
    assert loss.item() == 0.0
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0] = 255
    expected = torch.nn.functional.cross_entropy(
        logits, labels, ignore_index=255
    )  # torch's mean over labelled
    assert torch.allclose(SemanticSegmenter._pixel_loss(logits, labels), expected)
