"""The optimizer assembly: no decay on 1-D parameters, layer-wise lr decay really applied, the lr-to-batch rule,
and the warm-up schedules of the three tasks (cosine, poly, multi-step)."""

import math

import pytest
import torch

from convnext_pl.errors import UserError
from convnext_pl.models import create_model
from convnext_pl.training.optim import (
    WarmupCosine,
    build_optimizer,
    is_no_decay,
    param_groups,
    per_step,
    scaled_lr,
    warmup_cosine,
    warmup_multistep,
    warmup_poly,
)


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


def _official_single_layer_id(name: str, depths: list[int]) -> int:
    # ConvNeXt-V2 optim_factory.get_num_layer_for_convnext_single, transcribed.
    if name.startswith("downsample_layers"):
        return sum(depths[: int(name.split(".")[1])]) + 1
    if name.startswith("stages"):
        stage, block = int(name.split(".")[1]), int(name.split(".")[2])
        return sum(depths[:stage]) + block + 1
    return sum(depths) + 1


def test_single_layer_decay_matches_convnext_v2s_official_rule():
    # V2's A/T fine-tuning (TRAINING.md --layer_decay_type single): scale = decay ** (sum(depths) + 1 - id).
    model = create_model("convnextv2_atto", num_classes=10)
    depths = list(model.depths)
    groups = param_groups(model, 0.05, layer_decay=0.9, layer_ids=model.layer_ids("single"))
    scale_of = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    for name, _ in model.named_parameters():
        expected = 0.9 ** (sum(depths) + 1 - _official_single_layer_id(name, depths))
        assert scale_of[name] == pytest.approx(expected), name
    assert (
        len({g["lr_scale"] for g in groups}) == sum(depths) + 1
    )  # the stem shares id 1 with stage 0's block 0
    assert model.layer_ids("group") != model.layer_ids("single")


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


def test_build_optimizer_sets_every_groups_lr_to_the_peak_times_its_scale():
    model = create_model("convnext_atto", num_classes=10)
    optimizer = build_optimizer(model, 2e-3, 0.05, layer_decay=0.7, betas=(0.9, 0.95), eps=1e-6)
    assert len(optimizer.param_groups) > 3
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(2e-3 * group["lr_scale"])
        assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-6
    with pytest.raises(UserError, match=r"Invalid learning rate: -0.1; set model.init_args.lr"):
        build_optimizer(model, -0.1, 0.05, config_prefix="model.init_args")


def test_dense_prediction_ids_give_the_heads_the_full_lr():
    # Official mmcv_custom rule: backbone ids 0..N, everything else N + 1, scale decay ** (N + 1 - id).
    model = torch.nn.ModuleDict({"backbone": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 2)})
    ids = {"backbone.weight": 0, "backbone.bias": 6}
    groups = param_groups(model, 0.05, layer_decay=0.9, layer_ids=ids, default_id=7)
    scale_of = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    assert scale_of["backbone.weight"] == pytest.approx(0.9**7)
    assert scale_of["backbone.bias"] == pytest.approx(0.9)
    assert scale_of["head.weight"] == scale_of["head.bias"] == 1.0


def test_lr_follows_the_effective_batch():
    assert scaled_lr(4e-3, 1024, 4096) == pytest.approx(1e-3)
    assert scaled_lr(4e-3, 1024, None) == 4e-3  # no reference batch: the lr as given


def test_warmup_poly_is_mmcvs_linear_warmup_times_poly():
    schedule = warmup_poly(warmup_steps=10, total_steps=100, power=1.0, warmup_ratio=1e-6)
    assert schedule(0) == pytest.approx(1e-6)
    # mmcv: regular lr (poly, from step 0) x (1 - (1 - step / warmup) * (1 - ratio))
    assert schedule(5) == pytest.approx(0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert schedule(10) == pytest.approx(0.9) and schedule(55) == pytest.approx(0.45)
    assert schedule(100) == 0.0 and schedule(150) == 0.0


def test_warmup_multistep_drops_at_each_milestone():
    schedule = warmup_multistep(warmup_steps=4, milestones=[30, 20], gamma=0.1, warmup_ratio=0.001)
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(4) == schedule(19) == 1.0
    assert schedule(20) == pytest.approx(0.1) and schedule(29) == pytest.approx(0.1)
    assert schedule(30) == pytest.approx(0.01)


def test_schedules_survive_a_checkpoint():
    # LambdaLR saves a callable object's fields (not a closure's): a resumed run continues the same schedule.
    model = torch.nn.Linear(2, 2)
    for schedule in (warmup_cosine(3, 10, 0.1), warmup_poly(3, 10), warmup_multistep(3, [5, 8])):
        optimizer = build_optimizer(model, 1e-3, 0.0)
        scheduler = per_step(optimizer, schedule)["scheduler"]
        for _ in range(6):
            optimizer.step()
            scheduler.step()
        state = scheduler.state_dict()
        assert state["lr_lambdas"][0] == vars(schedule)
        fresh = build_optimizer(model, 1e-3, 0.0)
        resumed = per_step(
            fresh, type(schedule)(**{k: 0 if k != "milestones" else () for k in vars(schedule)})
        )
        resumed["scheduler"].load_state_dict(state)
        assert resumed["scheduler"].lr_lambdas[0] == schedule
