"""Weight layouts of other code bases: every key map renames both ways without losing or changing a tensor."""

import torch
import torchvision

from convnext_pl.models import create_model
from convnext_pl.weights.conversions import (
    convnext_to_roadmap,
    roadmap_to_convnext,
    roadmap_to_torchvision_resnet,
    torchvision_resnet_to_roadmap,
)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_torchvision_resnet_and_roadmap_step_0_convert_both_ways():
    theirs = torchvision.models.resnet50(weights=None).state_dict()  # random init; never downloads
    ours = create_model("roadmap_00_resnet50").state_dict()
    converted = torchvision_resnet_to_roadmap(theirs)
    assert converted.keys() == ours.keys()  # every key lands on a parameter or buffer of step 0
    assert "stages.0.0.shortcut.1.running_var" in converted and "downsample_layers.0.1.weight" in converted
    assert _same(roadmap_to_torchvision_resnet(converted), theirs)
    back = roadmap_to_torchvision_resnet(ours)
    assert back.keys() == theirs.keys() and _same(torchvision_resnet_to_roadmap(back), ours)


def test_convnext_and_roadmap_step_13_convert_both_ways():
    theirs = create_model("convnext_tiny").state_dict()  # the official layout
    ours = create_model("roadmap_13_convnext_tiny").state_dict()
    converted = convnext_to_roadmap(theirs)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.items()}
    assert converted["stages.0.0.conv2.weight"].shape == (384, 96, 1, 1)  # Linear (out, in) as a 1x1 conv
    assert _same(roadmap_to_convnext(converted), theirs)
    assert _same(convnext_to_roadmap(roadmap_to_convnext(ours)), ours)
