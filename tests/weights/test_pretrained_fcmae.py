"""ConvNeXt V2 FCMAE pre-training files: the sparse encoder layout maps onto the dense model both ways and loads."""

import pytest
import torch

from convnext_pl.models import create_model, load_pretrained
from convnext_pl.weights.conversions import convnextv2_to_fcmae, fcmae_to_convnextv2, is_fcmae


def _dense_v2_atto() -> dict[str, torch.Tensor]:
    net = create_model("convnextv2_atto", num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))  # every tensor distinct, so a transposed kernel cannot pass unseen
    return net.state_dict()


def test_dense_to_fcmae_has_the_sparse_layout_and_maps_back_exactly():
    dense = _dense_v2_atto()
    sparse = convnextv2_to_fcmae(dense)
    assert is_fcmae(sparse) and not is_fcmae(dense)
    # MinkowskiEngine's shapes: (kernel volume, C) depthwise, (volume, in, out) convolutions, (1, C) biases and GRN.
    assert sparse["encoder.stages.0.0.dwconv.kernel"].shape == (49, 40)
    assert sparse["encoder.stages.0.0.dwconv.bias"].shape == (1, 40)
    assert sparse["encoder.downsample_layers.1.1.kernel"].shape == (4, 40, 80)
    assert sparse["encoder.downsample_layers.1.0.ln.weight"].shape == (40,)
    assert sparse["encoder.stages.1.0.pwconv1.linear.weight"].shape == (320, 80)
    assert sparse["encoder.stages.1.0.grn.gamma"].shape == (1, 320)
    assert sparse["encoder.downsample_layers.0.0.weight"].shape == (40, 3, 4, 4)  # the stem stays dense
    assert not any(k.startswith(("encoder.norm.", "encoder.head.")) for k in sparse)
    back = fcmae_to_convnextv2(
        {**sparse, "mask_token": torch.zeros(1, 512, 1, 1), "pred.weight": torch.zeros(48, 512, 1, 1)}
    )
    expected = {k: v for k, v in dense.items() if not k.startswith(("norm.", "head."))}
    assert back.keys() == expected.keys()
    assert all(torch.equal(back[k], v) for k, v in expected.items())
    assert all(torch.equal(convnextv2_to_fcmae(back)[k], v) for k, v in sparse.items())


def test_depthwise_kernel_position_follows_the_official_remap():
    # The official remap reads a depthwise kernel (volume, C) as (C, 1, side, side) with its last two axes swapped:
    # volume index 1 is row 1, column 0 of the dense kernel.
    kernel = torch.zeros(49, 40)
    kernel[1, 3] = 1.0
    dense = fcmae_to_convnextv2({"encoder.stages.0.0.dwconv.kernel": kernel})["stages.0.0.dwconv.weight"]
    assert dense.shape == (40, 1, 7, 7) and dense[3, 0, 1, 0] == 1.0 and dense.sum() == 1.0


def test_an_official_fcmae_file_loads_with_a_fresh_norm_and_head(tmp_path):
    dense = _dense_v2_atto()
    decoder = {"proj.weight": torch.zeros(512, 320, 1, 1), "decoder.0.dwconv.weight": torch.zeros(512, 1, 7, 7),
               "mask_token": torch.zeros(1, 512, 1, 1), "pred.weight": torch.zeros(48, 512, 1, 1)}  # fmt: skip
    torch.save(
        {"model": {**convnextv2_to_fcmae(dense), **decoder}}, tmp_path / "convnextv2_atto_1k_224_fcmae.pt"
    )
    model = create_model("convnextv2_atto", num_classes=10)
    fresh_norm = model.norm.weight.clone()
    with pytest.warns(UserWarning, match="head was re-initialised"):
        load_pretrained(model, tmp_path / "convnextv2_atto_1k_224_fcmae.pt", replace_head=True)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in dense.items() if not k.startswith(("norm.", "head.")))
    assert torch.equal(model.norm.weight, fresh_norm)  # the encoder has no final norm: it starts fresh
