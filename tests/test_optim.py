"""The optimisation recipe: no decay on 1-D parameters, layer-wise lr decay really applied, warm-up + cosine."""

import math

import pytest
import torch

from convnext_pl.models import create_model
from convnext_pl.optim import WarmupCosine, is_no_decay, param_groups


def test_no_weight_decay_on_biases_norms_and_gammas():
    model = create_model("convnext_atto", num_classes=10)
    groups = param_groups(model, weight_decay=0.05)
    for group in groups:
        for name, param in zip(group["param_names"], group["params"], strict=True):
            expected = 0.0 if (param.ndim <= 1 or name.endswith((".bias", ".gamma"))) else 0.05
            assert group["weight_decay"] == expected, name
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
    assert "stages.0.0.dwconv.weight" in decayed and "head.weight" in decayed
    assert "stages.0.0.gamma" not in decayed and "norm.weight" not in decayed


def test_grn_parameters_are_not_decayed():
    model = create_model("convnextv2_atto", num_classes=10)
    grn = dict(model.named_parameters())["stages.0.0.grn.gamma"]
    assert grn.ndim == 4  # official (1, 1, 1, C) layout: the name rule, not ndim, must catch it
    assert is_no_decay("stages.0.0.grn.gamma", grn)


def test_every_parameter_is_in_exactly_one_group():
    model = create_model("convnext_tiny", num_classes=10)
    groups = param_groups(model, 0.05, layer_decay=0.8)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(list(model.parameters()))


def test_layer_decay_scales_match_the_official_table_for_depths_3_3_27_3():
    model = create_model("convnext_small", num_classes=10)
    groups = param_groups(model, 0.05, layer_decay=0.8)
    scale_of = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    # Official get_num_layer_for_convnext: 14 ids, scale = decay ** (13 - id).
    assert scale_of["downsample_layers.0.0.weight"] == pytest.approx(0.8**13)
    assert scale_of["stages.0.2.pwconv1.weight"] == pytest.approx(0.8**12)
    assert scale_of["downsample_layers.1.1.weight"] == pytest.approx(0.8**11)
    assert scale_of["downsample_layers.2.1.weight"] == pytest.approx(0.8**10)
    assert scale_of["stages.2.26.pwconv1.weight"] == pytest.approx(0.8**2)  # id 3 + 26 // 3 = 11
    assert scale_of["downsample_layers.3.1.weight"] == pytest.approx(0.8**1)
    assert scale_of["head.weight"] == scale_of["norm.weight"] == 1.0
    assert len({g["lr_scale"] for g in groups}) == 14


def test_warmup_cosine_shape():
    schedule = WarmupCosine(warmup_steps=10, total_steps=110, min_ratio=0.01)
    assert schedule(0) == 0.0
    assert schedule(5) == pytest.approx(0.5)
    assert schedule(10) == pytest.approx(1.0)  # end of warm-up: the peak
    assert schedule(60) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(110) == pytest.approx(0.01)  # the end: min_lr
    values = [schedule(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_lambda_lr_keeps_each_groups_layer_scale():
    model = create_model("convnext_atto", num_classes=10)
    groups = param_groups(model, 0.05, layer_decay=0.7)
    for g in groups:
        g["lr"] = 1e-3 * g["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(4, 20))
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    for g in optimizer.param_groups:  # end of warm-up: every group at peak x its own scale
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
