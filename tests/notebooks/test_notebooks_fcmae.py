"""notebooks/04_fcmae_reconstruction.ipynb, run top to bottom on an FCMAE file the test writes in the released
layout (the notebook's own default is the released name, which this machine cannot download)."""

import math

import torch
from helpers import NOTEBOOKS
from helpers.notebooks import execute_notebook, png_count

from convnext_pl.models import create_fcmae
from convnext_pl.weights.fcmae import released_layout

NOTEBOOK = NOTEBOOKS / "04_fcmae_reconstruction.ipynb"


def test_the_fcmae_notebook_loads_a_released_layout_file_masks_and_draws_the_reconstruction(tmp_path):
    torch.manual_seed(1)
    net = create_fcmae("convnextv2_atto")
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.01 * torch.randn_like(param))  # GRN's gamma/beta and the biases are no longer zeros
    path = tmp_path / "convnextv2_atto_1k_224_fcmae.pt"
    torch.save({"model": released_layout(net.state_dict())}, path)

    # 96 px: a 3x3 grid of 32-px patches, 3 of them visible.
    parameters = {"WEIGHTS": str(path), "IMAGE_SIZE": 96, "IMAGES": 2}
    summary = "{'visible': visible, 'patches': mask[0].numel(), 'loss': loss.item(), 'token': net.mask_token.sum().item()}"
    outputs, result = execute_notebook(NOTEBOOK, tmp_path, summary=summary, parameters=parameters)
    assert result["patches"] == 9 and result["visible"] == int(9 * (1 - 0.6)) == 3
    assert math.isfinite(result["loss"]) and result["loss"] > 0
    assert (
        result["token"] == torch.tensor(net.mask_token.sum().item()).item()
    )  # the decoder came from the file
    assert png_count(outputs) == 1
