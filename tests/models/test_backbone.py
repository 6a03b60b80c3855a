"""The dense-prediction backbone: stage maps with norm0..3, ImageNet weights, the official layer-decay ids."""

import pytest
import torch
import torch.nn as nn

from convnext_pl.errors import UserError
from convnext_pl.models import create_model
from convnext_pl.models.backbone import ConvNeXtBackbone, create_backbone
from convnext_pl.models.layer_ids import dense_layer_ids, layer_id_layer_wise, lr_scale
from convnext_pl.weights.dense import load_backbone_weights


@pytest.mark.parametrize("name", ["convnext_atto", "convnextv2_atto"])
def test_stage_maps_and_official_names(name):
    backbone = create_backbone(name)
    maps = backbone(torch.randn(2, 3, 64, 96))
    assert [m.shape[1] for m in maps] == backbone.out_channels == [40, 80, 160, 320]
    assert [(m.shape[2], m.shape[3]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert backbone.strides == [4, 8, 16, 32]
    keys = set(backbone.state_dict())
    assert {"norm0.weight", "norm3.bias", "downsample_layers.0.0.weight", "stages.2.5.pwconv1.weight"} <= keys
    assert not any(k.startswith(("norm.", "head.")) for k in keys)


def test_out_indices_select_maps():
    backbone = create_backbone("convnext_atto", out_indices=(2,))
    (only,) = backbone(torch.randn(1, 3, 32, 32))
    assert only.shape == (1, 160, 2, 2) and backbone.out_channels == [160]
    assert not hasattr(backbone, "norm0")
    with pytest.raises(UserError, match="out_indices"):
        create_backbone("convnext_atto", out_indices=(4,))


def test_isotropic_is_refused():
    with pytest.raises(UserError, match="hierarchical ConvNeXt"):
        ConvNeXtBackbone(create_model("convnext_iso_small"))


def test_roadmap_step_widths():
    backbone = create_backbone("roadmap_00_resnet50")
    maps = backbone(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == backbone.out_channels


def test_imagenet_weights_load_head_and_norm_ignored(tmp_path):
    source = create_model("convnext_atto", num_classes=21841)  # a 22K head: another class count than 1000
    path = tmp_path / "convnext_atto_22k.pth"
    torch.save({"model": source.state_dict()}, path)
    backbone = load_backbone_weights(create_backbone("convnext_atto"), path)
    assert torch.equal(backbone.stages[3][1].pwconv2.weight, source.stages[3][1].pwconv2.weight)
    assert torch.equal(backbone.downsample_layers[0][0].weight, source.downsample_layers[0][0].weight)
    assert torch.equal(backbone.norm2.weight, torch.ones(160))  # fresh, as in the official code


def test_wrong_variant_weights_are_one_sentence(tmp_path):
    path = tmp_path / "femto.pth"
    torch.save(create_model("convnext_femto").state_dict(), path)
    with pytest.raises(UserError, match="does not fit"):
        load_backbone_weights(create_backbone("convnext_atto"), path)


# The official functions (ConvNeXt object_detection/mmcv_custom/layer_decay_optimizer_constructor.py), as
# written there, with the constructor's calling convention: the oracle for the ids and scales below.
def _official_layer_wise(var_name, num_max_layer=12):
    if var_name.startswith("backbone.downsample_layers"):
        stage_id = int(var_name.split(".")[2])
        return {0: 0, 1: 2, 2: 3, 3: num_max_layer}[stage_id]
    if var_name.startswith("backbone.stages"):
        stage_id, block_id = int(var_name.split(".")[2]), int(var_name.split(".")[3])
        return {0: 1, 1: 2, 2: 3 + block_id // 3, 3: num_max_layer}[stage_id]
    return num_max_layer + 1


def _official_stage_wise(var_name, num_max_layer):
    if var_name.startswith("backbone.downsample_layers"):
        return 0
    if var_name.startswith("backbone.stages"):
        return int(var_name.split(".")[2]) + 1
    return num_max_layer - 1


def _official_scales(model, decay_type, num_layers, decay_rate):
    internal = num_layers + 2  # the constructor's `num_layers = paramwise_cfg["num_layers"] + 2`
    scales = {}
    for name, _ in model.named_parameters():
        if decay_type == "layer_wise":
            layer_id = _official_layer_wise(name, num_layers)
        else:
            layer_id = _official_stage_wise(name, internal)
        scales[name] = decay_rate ** (internal - layer_id - 1)
    return scales


class _DenseModel(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.backbone = create_backbone(name)
        self.decode_head = nn.Conv2d(self.backbone.out_channels[-1], 3, 1)


@pytest.mark.parametrize(
    "name,decay_type,num_layers", [("tiny", "stage_wise", 6), ("base", "layer_wise", 12)]
)
def test_layer_ids_and_scales_equal_official(name, decay_type, num_layers):
    with torch.device("meta"):  # names only: no memory for B's weights
        model = _DenseModel(f"convnext_{name}")
    ids = dense_layer_ids(model, decay_type, num_layers)
    expected = _official_scales(model, decay_type, num_layers, 0.9)
    assert {n: lr_scale(i, num_layers, 0.9) for n, i in ids.items()} == pytest.approx(expected)
    assert ids["decode_head.weight"] == ids["backbone.norm0.weight"] == num_layers + 1  # full lr
    if decay_type == "layer_wise":
        assert ids["backbone.stages.2.26.gamma"] == 11 and ids["backbone.downsample_layers.3.1.weight"] == 12
        assert layer_id_layer_wise("backbone.downsample_layers.1.0.weight", 12) == 2
    else:
        assert ids["backbone.downsample_layers.3.1.weight"] == 0 and ids["backbone.stages.3.0.gamma"] == 4


def test_unknown_decay_type():
    with pytest.raises(UserError, match="decay_type"):
        dense_layer_ids(_DenseModel("convnext_atto"), "block_wise", 6)
