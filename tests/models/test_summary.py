"""model_summary and its command line: exact parameters, paper GFLOPs, feature-map sizes, clean errors."""

import subprocess

import pytest
from helpers import run_python

from convnext_pl.errors import UserError
from convnext_pl.models import create_model, model_summary
from convnext_pl.models import summary as summary_module


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_python(["-m", "convnext_pl.models.summary", *args], timeout=120, check=False)


def test_summary_of_tiny_matches_the_paper():
    result = model_summary("convnext_tiny")
    assert result.name == "convnext_tiny" and result.image_size == 224
    assert result.params == 28_589_128
    assert result.gmacs == pytest.approx(4.4555, abs=1e-3)  # paper: 4.5G
    assert result.feature_shapes == ((96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7))
    assert result.total_stride == 32
    text = str(result)
    assert "28,589,128" in text and "4.46" in text and "7x7" in text


def test_summary_of_a_module_equals_the_summary_by_name():
    model = create_model("convnext_atto", num_classes=10).train()
    by_module = model_summary(model, image_size=64)
    by_name = model_summary("convnext_atto", image_size=64, num_classes=10)
    assert (by_module.params, by_module.gmacs, by_module.feature_shapes) == (
        by_name.params,
        by_name.gmacs,
        by_name.feature_shapes,
    )
    assert model.training  # the mode it came in with is restored


@pytest.mark.parametrize("patch_size, final, stride", [(None, 1, 32), (2, 2, 16), (1, 4, 8)])
def test_small_images_and_small_patches(patch_size, final, stride):
    result = model_summary("convnext_atto", image_size=32, num_classes=10, patch_size=patch_size)
    assert result.feature_shapes[-1] == (320, final, final)
    assert result.total_stride == stride


def test_an_image_smaller_than_the_total_stride_is_a_user_error():
    with pytest.raises(UserError, match="smaller than the total stride 32"):
        model_summary("convnext_atto", image_size=16)


def test_cli_prints_parameters_gflops_and_feature_maps():
    result = _run_cli("--model", "convnext_tiny")
    assert result.returncode == 0, result.stderr
    assert "28,589,128" in result.stdout and "4.46" in result.stdout
    assert "56x56" in result.stdout and "7x7" in result.stdout


def test_cli_unknown_model_is_one_line_and_exit_code_2():
    result = _run_cli("--model", "convnext_gigantic")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "convnext_gigantic" in lines[0] and "convnext_tiny" in lines[0]  # names the valid models


def test_all_prints_one_row_per_model(monkeypatch, capsys):
    # The real table builds every registered model (about a second each on the meta device); three suffice.
    names = ["convnext_atto", "convnextv2_atto", "convnext_iso_small"]
    monkeypatch.setattr(summary_module, "list_models", lambda: names)
    assert summary_module.main(["--all", "--image-size", "64"]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert "parameters" in header and "GFLOPs" in header
    assert [row.split()[0] for row in rows] == names
    assert rows[0].split()[1] == "3,695,520" and rows[0].endswith("320x2x2")
    assert rows[2].endswith("384x4x4")
