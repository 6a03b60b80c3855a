"""The user notebooks (02 quickstart, 03 inside ConvNeXt) and the analysis helpers they are built from."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import NOTEBOOKS
from helpers.notebooks import code_cells, execute_notebook, png_count
from matplotlib.figure import Figure

from convnext_pl.analysis import (
    effective_receptive_field,
    high_contribution_area_ratio,
    layer_scale_gammas,
    plot_confusion_matrix,
    read_metrics,
    sample_photo_crops,
    stage_feature_maps,
)
from convnext_pl.analysis.__main__ import main as analysis_main
from convnext_pl.errors import UserError
from convnext_pl.models import create_model

QUICKSTART = NOTEBOOKS / "02_quickstart.ipynb"
INSIDE = NOTEBOOKS / "03_inside_convnext.ipynb"


# ------------------------------------------------------------------------------------------ analysis helpers
def test_read_metrics_collects_each_metric_with_its_step_and_epoch(tmp_path):
    # The shape of Lightning's CSVLogger output: one row per logging call, empty cells for the rest.
    rows = [
        "epoch,lr-AdamW/pg1,step,train/loss,val/acc1",
        ",0.001,9,,",
        "0,,9,1.5,",
        "0,,21,,0.75",
        "1,,43,,0.9",
    ]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    metrics = read_metrics(tmp_path)
    assert sorted(metrics) == ["lr-AdamW/pg1", "train/loss", "val/acc1"]
    assert metrics["val/acc1"].steps.tolist() == [21, 43]
    assert metrics["val/acc1"].epochs.tolist() == [0, 1]
    assert metrics["val/acc1"].values.tolist() == [0.75, 0.9]
    assert metrics["lr-AdamW/pg1"].epochs.tolist() == [-1]  # learning-rate rows carry no epoch


def test_read_metrics_without_a_csv_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="No metrics.csv"):
        read_metrics(tmp_path)


def test_curves_command_draws_a_run_to_png_and_refuses_a_missing_run_in_one_line(tmp_path, capsys):
    rows = ["epoch,step,train/loss,val/loss,val/acc1", "0,9,2.0,,", "0,21,,1.0,0.5", "1,43,,0.5,0.8"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "figures" / "curves.png"
    analysis_main(["curves", str(tmp_path / "metrics.csv"), "--out", str(out)])
    assert out.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit) as exit_info:
        analysis_main(["curves", str(tmp_path / "no_run"), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: No metrics.csv") and err.count("\n") == 1


class _OneConv(nn.Module):
    """A single 5x5 convolution exposing ``forward_stages``: its receptive field is exactly 5x5."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5, padding=2)

    def forward_stages(self, x):
        return [self.conv(x)]


def test_effective_receptive_field_of_one_conv_is_its_kernel_footprint():
    erf = effective_receptive_field(_OneConv(), torch.randn(3, 3, 15, 15), batch_size=2)
    assert erf.shape == (15, 15)
    nonzero = erf.nonzero()
    assert nonzero.min(0).values.tolist() == [5, 5] and nonzero.max(0).values.tolist() == [9, 9]


def test_convnext_at_init_sees_one_stem_patch_because_layer_scale_silences_the_blocks():
    images = torch.randn(2, 3, 96, 96)  # atto: stride 32, a 3x3 map whose centre pixel covers pixels 32..63
    erf = effective_receptive_field(create_model("convnext_atto"), images)
    assert erf[32:64, 32:64].sum() / erf.sum() > 0.999  # layer scale 1e-6: the 7x7 branches add ~nothing
    opened = effective_receptive_field(create_model("convnext_atto", layer_scale_init_value=1.0), images)
    # Branches open (layer scale 1): the field reaches well beyond the patch.
    assert opened[32:64, 32:64].sum() / opened.sum() < 0.9


def test_high_contribution_area_ratio_of_a_point_and_of_a_uniform_map():
    point = torch.zeros(9, 9)
    point[4, 4] = 1.0
    assert high_contribution_area_ratio(point, 0.99) == pytest.approx(1 / 81)
    assert high_contribution_area_ratio(torch.ones(9, 9), 0.5) == pytest.approx(49 / 81)  # 7x7 holds >= half


def test_sample_photo_crops_are_normalised_natural_images():
    crops = sample_photo_crops(3, 64, seed=1)
    assert crops.shape == (3, 3, 64, 64)
    assert torch.equal(crops, sample_photo_crops(3, 64, seed=1))
    assert -0.5 < crops.mean() < 0.5 and crops.std() > 0.3  # ImageNet-normalised photographs, not blank


def test_stage_maps_and_layer_scale_of_the_digits_network():
    net = create_model("convnext_atto", num_classes=10, patch_size=2)
    maps = stage_feature_maps(net, torch.randn(3, 16, 16))
    assert [tuple(m.shape) for m in maps] == [(40, 8, 8), (80, 4, 4), (160, 2, 2), (320, 1, 1)]
    gammas = layer_scale_gammas(net)
    assert len(gammas) == sum(net.depths) and list(gammas)[:3] == ["0.0", "0.1", "1.0"]
    assert all(torch.allclose(g, torch.full_like(g, 1e-6)) for g in gammas.values())


def test_confusion_matrix_plot_counts_every_prediction():
    targets, preds = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])
    fig = plot_confusion_matrix(targets, preds, ["a", "b", "c"])
    assert isinstance(fig, Figure)
    cells = [text.get_text() for text in fig.axes[0].texts]
    assert cells == ["1", "0", "0", "0", "1", "1", "0", "0", "1"]


# ------------------------------------------------------------------------------------------ the notebooks
@pytest.mark.parametrize("path", [QUICKSTART, INSIDE], ids=lambda p: p.stem)
def test_user_notebook_is_committed_without_outputs(path):
    code = code_cells(path)
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_quickstart_notebook_trains_plots_and_agrees_with_its_log(tmp_path):
    epochs = 2  # of the notebook's 4: about 90% top-1 already, in half the training time
    outputs, summary = execute_notebook(
        QUICKSTART,
        tmp_path,
        "dict(accuracy=accuracy, logged=float(metrics['val/acc1'].values[-1]), n=len(targets), "
        "epochs=len(metrics['val/acc1'].values), log_dir=str(log_dir.resolve()))",
        parameters=dict(EPOCHS=epochs),
    )
    assert summary["n"] == 360 and summary["epochs"] == epochs  # every validation digit, one value per epoch
    # The notebook's own pass over the validation set reproduces the logged accuracy of the same weights.
    assert summary["accuracy"] == pytest.approx(summary["logged"], abs=1e-6)
    assert summary["accuracy"] > 0.5  # trained: chance is 0.1
    assert Path(summary["log_dir"]).is_relative_to(tmp_path)  # runs land beside the notebook, not in the repo
    assert png_count(outputs) == 3  # curves, prediction grid, confusion matrix


@pytest.mark.slow
def test_inside_convnext_notebook_measures_erf_stages_and_layer_scale(tmp_path):
    # ERF maps of 4 crops at 96 px (the notebook's 16 at 224 spend about 50 s): the last stage's map is
    # 3x3, so its centre pixel still sits over the image's centre and the three fields keep their order.
    image_size = 96
    outputs, summary = execute_notebook(
        INSIDE,
        tmp_path,
        "dict(area=erf_area, shapes=[list(m.shape) for m in maps], gammas=gamma_means, steps=steps)",
        parameters=dict(IMAGE_SIZE=image_size, PHOTOS=4, EPOCHS=1),
    )
    resnet, closed, opened = summary["area"].values()  # insertion order: ResNet-50, ConvNeXt-T at init, LS 1
    patch_share = (33 / image_size) ** 2  # one 32-pixel stem patch (the centred square is 2r+1 wide)
    assert closed <= patch_share < resnet < opened
    assert summary["shapes"] == [[40, 8, 8], [80, 4, 4], [160, 2, 2], [320, 1, 1]]
    assert summary["steps"] > 0 and all(value > 100 * 1e-6 for value in summary["gammas"].values())
    assert png_count(outputs) == 3  # ERF maps, stage maps, layer scale
