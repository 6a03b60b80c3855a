"""UperNet + FCN auxiliary head: shapes, gradients, parameter counts, the mmseg checkpoint layout."""

import pytest
import torch

from convnext_pl.errors import UserError
from convnext_pl.models.upernet import create_upernet
from convnext_pl.weights.dense import load_segmentation_checkpoint


def test_tiny_forward_backward_every_parameter_learns():
    model = create_upernet("convnext_tiny", num_classes=5).train()
    x = torch.randn(2, 3, 34, 46)  # sizes no stride divides: the stride-32 map is 1x1, resizes bring it back
    heads = model.forward_heads(x)
    assert heads["decode"].shape == (2, 5, 8, 11) and heads["aux"].shape == (2, 5, 2, 2)
    (heads["decode"].mean() + 0.4 * heads["aux"].mean()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 5, 34, 46)  # the input's size
        assert set(model.forward_heads(x)) == {"decode"}  # no auxiliary head at inference


# Official ADE20K models, 150 classes with the auxiliary head: 60,242,636 for T (docs/paper.md §6); S and B
# are the counts of the same structure (published as 82M / 122M).
@pytest.mark.parametrize(
    "name,expected", [("tiny", 60_242_636), ("small", 81_877_196), ("base", 122_102_956)]
)
def test_parameter_count(name, expected):
    with torch.device("meta"):
        model = create_upernet(f"convnext_{name}", num_classes=150)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_mmseg_names():
    with torch.device("meta"):
        keys = set(create_upernet("convnext_tiny", num_classes=150).state_dict())
    for key in (
        "backbone.downsample_layers.0.0.weight",
        "backbone.stages.2.5.pwconv1.weight",
        "backbone.norm3.weight",
        "decode_head.psp_modules.0.1.conv.weight",
        "decode_head.psp_modules.3.1.bn.running_var",
        "decode_head.bottleneck.conv.weight",
        "decode_head.lateral_convs.0.conv.weight",
        "decode_head.fpn_convs.2.bn.weight",
        "decode_head.fpn_bottleneck.conv.weight",
        "decode_head.conv_seg.bias",
        "auxiliary_head.convs.0.conv.weight",
        "auxiliary_head.conv_seg.weight",
    ):
        assert key in keys, key
    assert not any(k.endswith(".conv.bias") for k in keys)  # ConvModule convs have no bias before the norm


def test_mmseg_checkpoint_layout_loads(tmp_path):
    source = create_upernet("convnext_atto", num_classes=7, channels=32, aux_channels=16)
    path = tmp_path / "upernet_mmseg.pth"
    meta = {"mmseg_version": "0.20.2", "CLASSES": ("wall", "building"), "iter": 160000}
    torch.save({"state_dict": source.state_dict(), "meta": meta}, path)
    target = create_upernet("convnext_atto", num_classes=7, channels=32, aux_channels=16)
    load_segmentation_checkpoint(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_wrong_shape_is_one_sentence_naming_the_key(tmp_path):
    source = create_upernet("convnext_atto", num_classes=7, channels=32, aux_channels=16)
    path = tmp_path / "upernet_7.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    target = create_upernet("convnext_atto", num_classes=9, channels=32, aux_channels=16)
    with pytest.raises(UserError, match=r"'decode_head\.conv_seg\.weight' has shape \(7, 32, 1, 1\)") as info:
        load_segmentation_checkpoint(target, path)
    assert "\n" not in str(info.value)


def test_seg_summary_command_reports_the_published_tiny_row(capsys):
    from convnext_pl.models.seg_summary import main

    assert main(["--backbone", "convnext_tiny"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:3] == ["convnext_tiny", "2048x512", "60,242,636"]
    assert abs(float(row[3]) - 939) < 1  # published 939 GFLOPs (mm-toolbox multiply-adds); ours 938.5
