"""Export (ONNX, TorchScript, safetensors) reproduces the trained network, and ``predict`` writes its CSV."""

import csv

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import DIGITS, run_main
from helpers.fakedata import write_digit_images
from safetensors import safe_open

from convnext_pl.export.formats import export, load_network, main, recorded_image_size
from convnext_pl.models import create_model
from convnext_pl.tasks.classification import ImageClassifier
from convnext_pl.weights.loading import load_pretrained


@pytest.fixture(scope="session")
def reference_net(digits_ckpt) -> torch.nn.Module:
    """The network as Lightning itself restores it from the checkpoint: the reference every export must match."""
    return ImageClassifier.load_from_checkpoint(digits_ckpt, map_location="cpu").net.eval()


@pytest.fixture(scope="session")
def image_size(digits_ckpt) -> int:
    """The digits config's image size as the checkpoint records it: the size exports trace the graph at."""
    size = recorded_image_size(torch.load(digits_ckpt, map_location="cpu", weights_only=True))
    assert size is not None
    return size


def _inputs(batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def test_load_network_restores_the_checkpoint_state_dict_which_holds_the_ema_weights(
    digits_ckpt, reference_net, image_size
):
    checkpoint = torch.load(digits_ckpt, map_location="cpu", weights_only=True)
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert not torch.equal(ema["net.head.weight"], raw["net.head.weight"])  # the two really differ
    net, _ = load_network(digits_ckpt)
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, ema[f"net.{name}"]), name
    x = _inputs(4, image_size)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference_net(x))


def test_onnx_export_matches_pytorch_for_any_batch_size(digits_onnx, reference_net, image_size):
    session = ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"])
    (images,) = session.get_inputs()
    # Spatial size fixed at the size the checkpoint's data used; the batch axis symbolic.
    assert images.name == "images" and images.shape[1:] == [3, image_size, image_size]
    assert isinstance(images.shape[0], str)
    for batch in (1, 5):  # traced with batch 2: the batch axis is dynamic
        x = _inputs(batch, image_size)
        (logits,) = session.run(["logits"], {"images": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, reference_net(x).numpy(), rtol=1e-4, atol=1e-4)


def test_torchscript_export_matches_pytorch(digits_ckpt, reference_net, image_size, tmp_path):
    path = export(digits_ckpt, "torchscript", tmp_path / "digits.pt")
    with pytest.warns(FutureWarning):  # PyTorch marks torch.jit deprecated; loading still works
        scripted = torch.jit.load(str(path))
    x = _inputs(3, image_size)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), reference_net(x))


def test_safetensors_export_loads_into_a_fresh_model_with_load_pretrained(
    digits_ckpt, reference_net, image_size, tmp_path
):
    path = export(digits_ckpt, "safetensors", tmp_path / "digits.safetensors")
    with safe_open(str(path), "pt") as f:
        assert '"convnext_atto"' in f.metadata()["net"]  # how to rebuild the network travels with the weights
    fresh = load_pretrained(create_model("convnext_atto", num_classes=10, patch_size=2), path).eval()
    x = _inputs(3, image_size)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), reference_net(x))


def test_export_command_line_writes_the_file(digits_ckpt, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    main(["--ckpt", str(digits_ckpt), "--format", "safetensors", "--out", str(out)])
    assert out.is_file() and str(out) in capsys.readouterr().out


@pytest.mark.parametrize(
    "problem, argv",
    [
        ("missing checkpoint", ["--ckpt", "{tmp}/none.ckpt", "--format", "onnx", "--out", "{tmp}/a.onnx"]),
        ("unknown format", ["--ckpt", "{ckpt}", "--format", "tflite", "--out", "{tmp}/a.tflite"]),
        ("existing output", ["--ckpt", "{ckpt}", "--format", "onnx", "--out", "{tmp}/exists.onnx"]),
        ("not a checkpoint", ["--ckpt", "{tmp}/exists.onnx", "--format", "onnx", "--out", "{tmp}/b.onnx"]),
        ("no network config", ["--ckpt", "{tmp}/bare.ckpt", "--format", "onnx", "--out", "{tmp}/c.onnx"]),
    ],
)
def test_export_errors_are_one_line_and_exit_code_2(problem, argv, digits_ckpt, tmp_path, capsys):
    (tmp_path / "exists.onnx").write_bytes(b"not an onnx file")
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1e-3}}, tmp_path / "bare.ckpt")
    argv = [a.format(tmp=tmp_path, ckpt=digits_ckpt) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2, problem
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert (tmp_path / "exists.onnx").read_bytes() == b"not an onnx file"  # never overwritten silently


def test_overwrite_replaces_an_existing_output(digits_ckpt, tmp_path):
    out = tmp_path / "digits.safetensors"
    out.write_bytes(b"old")
    export(digits_ckpt, "safetensors", out, overwrite=True)
    assert out.read_bytes() != b"old"


@pytest.mark.slow
def test_predict_command_writes_one_csv_row_per_image(digits_ckpt, tmp_path):
    truths = write_digit_images(tmp_path / "images", 6)
    runs = tmp_path / "runs"
    run_main(
        ["predict", f"--config={DIGITS}", f"--ckpt_path={digits_ckpt}", f"--data.init_args.predict_dir={tmp_path / 'images'}",
         f"--trainer.default_root_dir={runs}", "--trainer.enable_progress_bar=false"]
    )  # fmt: skip
    (csv_path,) = runs.glob("**/predictions.csv")
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["path"] for row in rows) == sorted(truths)
    for row in rows:
        classes = [row[f"top{k}_class"] for k in range(1, 6)]
        probs = [float(row[f"top{k}_prob"]) for k in range(1, 6)]
        assert set(classes) <= {str(d) for d in range(10)} and len(set(classes)) == 5
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
