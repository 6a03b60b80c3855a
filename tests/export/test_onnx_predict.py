"""``python -m convnext_pl.export predict`` on an ONNX export writes the CSV ``main.py predict`` writes for the same
checkpoint and images, from the preprocessing the export recorded; bad input is one ``error:`` line."""

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision.transforms as T
from helpers import DIGITS, QUIET
from helpers.fakedata import write_digit_images
from PIL import Image

from convnext_pl.data import (
    CIFARDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
)
from convnext_pl.data.augment.transform_spec import build_transform, describe_transform
from convnext_pl.export.formats import main, predict_metadata
from convnext_pl.export.onnx_predict import CLASS_NAMES_KEY, PREPROCESSING_KEY, softmax
from convnext_pl.training.cli import cli_main


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return sorted(csv.DictReader(f), key=lambda row: row["path"])


@pytest.mark.parametrize(
    "datamodule",
    [
        lambda: DigitsDataModule(image_size=16),
        lambda: CIFARDataModule(image_size=32),
        lambda: CIFARDataModule(image_size=224),  # ImageNet recipe: resize 256, center crop 224, bicubic
        lambda: SyntheticDataModule(image_size=32),
        lambda: ImageFolderDataModule(root="unused", num_classes=3, image_size=384),  # squashed, no crop
    ],
    ids=["digits", "cifar32", "cifar224", "synthetic", "folder384"],
)
def test_a_described_evaluation_transform_rebuilds_to_the_same_pixels(datamodule):
    transform = datamodule().evaluation_transform()
    steps = json.loads(json.dumps(describe_transform(transform)))  # travels as JSON text in the ONNX file
    rebuilt = build_transform(steps)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    assert torch.equal(rebuilt(image), transform(image))


def test_a_random_transform_step_cannot_be_described():
    with pytest.raises(ValueError, match="RandomHorizontalFlip"):
        describe_transform(T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]))


def test_export_records_the_checkpoint_preprocessing_and_class_names(digits_onnx):
    metadata = ort.InferenceSession(str(digits_onnx)).get_modelmeta().custom_metadata_map
    assert json.loads(metadata[CLASS_NAMES_KEY]) == [str(d) for d in range(10)]
    steps = json.loads(metadata[PREPROCESSING_KEY])
    # The digits data module's evaluation transform at the checkpoint's 16 px.
    assert [s["op"] for s in steps] == ["grayscale", "resize", "to_tensor", "normalize"]
    assert steps[1]["size"] == [16, 16]


def test_a_checkpoint_without_a_data_module_exports_without_metadata_and_says_so():
    with pytest.warns(UserWarning, match="predict` will refuse it"):
        assert predict_metadata({"hyper_parameters": {}}, 16) is None


def test_softmax_rows_sum_to_one_and_match_torch():
    logits = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32) * 30  # large: overflow-safe
    np.testing.assert_allclose(softmax(logits), torch.from_numpy(logits).softmax(-1).numpy(), atol=1e-6)


def test_onnx_predict_equals_main_py_predict_on_the_same_images(digits_ckpt, digits_onnx, tmp_path, capsys):
    images = tmp_path / "images"
    write_digit_images(images, 5)
    runs = tmp_path / "runs"
    cli_main(["predict", f"--config={DIGITS}", f"--ckpt_path={digits_ckpt}", f"--data.init_args.predict_dir={images}",
              f"--trainer.default_root_dir={runs}", *QUIET])  # fmt: skip
    (lightning_csv,) = runs.glob("**/predictions.csv")
    onnx_csv = tmp_path / "onnx.csv"
    main(
        ["predict", str(digits_onnx), "--images", str(images), "--output", str(onnx_csv), "--batch-size", "2"]
    )
    assert f"Wrote predictions for 5 images to {onnx_csv}" in capsys.readouterr().out
    expected, got = _read_csv(lightning_csv), _read_csv(onnx_csv)
    assert list(got[0]) == list(expected[0])  # the same columns: path, top1_class, top1_prob, ... top5_prob
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    for want, row in zip(expected, got, strict=True):
        for k in range(1, 6):
            assert row[f"top{k}_class"] == want[f"top{k}_class"], row["path"]
            assert abs(float(row[f"top{k}_prob"]) - float(want[f"top{k}_prob"])) <= 1e-4


def test_onnx_predict_takes_single_files_in_the_order_given(digits_onnx, tmp_path):
    truths = write_digit_images(tmp_path / "images", 3)
    files = sorted(truths, reverse=True)
    out = tmp_path / "some.csv"
    main(["predict", str(digits_onnx), "--images", *files, "--output", str(out)])
    with out.open(newline="") as f:
        assert [row["path"] for row in csv.DictReader(f)] == files


def _identity_onnx(path: Path, metadata: dict[str, str] | None = None) -> None:
    """A valid one-node ONNX model (Identity) that no convnext_pl export wrote, with ``metadata`` props."""
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    out = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "bare", [value], [out])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.helper.set_model_props(model, metadata or {})
    onnx.save(model, path)


@pytest.mark.parametrize(
    "problem, argv",
    [
        ("missing model", ["{tmp}/none.onnx", "--images", "{images}"]),
        ("not an onnx file", ["{tmp}/text.onnx", "--images", "{images}"]),
        ("onnx without metadata", ["{tmp}/bare.onnx", "--images", "{images}"]),
        ("folder without images", ["{onnx}", "--images", "{tmp}/empty"]),
        ("missing image", ["{onnx}", "--images", "{tmp}/none.png"]),
        ("undecodable image", ["{onnx}", "--images", "{tmp}/text.png"]),
        ("batch size 0", ["{onnx}", "--images", "{images}", "--batch-size", "0"]),
        ("negative threads", ["{onnx}", "--images", "{images}", "--threads", "-1"]),
        ("damaged metadata", ["{tmp}/damaged.onnx", "--images", "{images}"]),
    ],
)
def test_onnx_predict_errors_are_one_line_and_exit_code_2(problem, argv, digits_onnx, tmp_path, capsys):
    write_digit_images(tmp_path / "images", 1)
    (tmp_path / "text.onnx").write_text("not an onnx file")
    (tmp_path / "text.png").write_text("not a png")
    (tmp_path / "empty").mkdir()
    _identity_onnx(tmp_path / "bare.onnx")
    _identity_onnx(tmp_path / "damaged.onnx", {PREPROCESSING_KEY: '[{"op": "rotate"}]'})
    argv = [a.format(tmp=tmp_path, images=tmp_path / "images", onnx=digits_onnx) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *argv, "--output", str(tmp_path / "out.csv")])
    assert exit_info.value.code == 2, problem
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out.csv").exists()


def test_onnx_predict_never_overwrites_an_existing_csv_unless_asked(digits_onnx, tmp_path, capsys):
    write_digit_images(tmp_path / "images", 1)
    out = tmp_path / "mine.csv"
    out.write_text("my own notes")
    argv = ["predict", str(digits_onnx), "--images", str(tmp_path / "images"), "--output", str(out)]
    with pytest.raises(SystemExit):
        main(argv)
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "my own notes"
    main([*argv, "--overwrite"])
    assert out.read_text().startswith("path,top1_class,top1_prob")
