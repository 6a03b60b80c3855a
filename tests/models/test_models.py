"""The ConvNeXt family: every variant runs forward and backward, sizes and costs match the paper, and the
research interface (stochastic depth, layer scale, head init, channels_last, stages, checkpointing,
layer ids) behaves as documented."""

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import DropPath

from convnext_pl.models import ConvNeXt, ConvNeXtIsotropic, create_model, list_models
from convnext_pl.models.convnext import drop_path_rates
from convnext_pl.models.flops import count_macs

CONVNEXT_MODELS = [n for n in list_models() if n.startswith(("convnext_", "convnextv2_"))]
# Built and differentiated for real on the CPU; the rest (50M+ parameters, 3-25 s each to initialise on
# 2 cores) run the same code with other widths and depths, so they are checked on the meta device:
# shapes and gradient flow, without memory or arithmetic.
SMALL_SIZES = ("atto", "femto", "pico", "nano", "tiny", "iso_small")
REAL_MODELS = [n for n in CONVNEXT_MODELS if n.endswith(SMALL_SIZES)]
META_MODELS = [n for n in CONVNEXT_MODELS if n not in REAL_MODELS]

# docs/paper.md §1: exact parameter counts at 224 with 1000 classes (paper Table 1; timm for atto..nano).
PARAMS = {
    "convnext_atto": 3_695_520,
    "convnext_femto": 5_217_784,
    "convnext_pico": 9_045_672,
    "convnext_nano": 15_593_560,
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    "convnext_xlarge": 350_196_968,
}
# Isotropic ConvNeXt, paper Table 2 (rounded to millions there).
ISOTROPIC_PARAMS = {"convnext_iso_small": 22e6, "convnext_iso_base": 87e6, "convnext_iso_large": 306e6}
# Paper Tables 1 and 12 (GFLOPs = multiply-adds / 1e9) at 224 and 384.
GFLOPS = {
    "convnext_tiny": (4.5, 13.1),
    "convnext_small": (8.7, 25.5),
    "convnext_base": (15.4, 45.1),
    "convnext_large": (34.4, 101.0),
    "convnext_xlarge": (60.9, 179.0),
}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def test_model_lists_cover_every_convnext_variant():
    # Guards the filters above: a new variant must land in one of the two forward/backward tests.
    assert len(CONVNEXT_MODELS) == 21  # 9 V1, 9 V2 (atto..huge, no XL), 3 isotropic
    assert set(REAL_MODELS) | set(META_MODELS) == set(CONVNEXT_MODELS)
    assert "convnextv2_huge" in META_MODELS and "convnextv2_atto" in REAL_MODELS


@pytest.mark.parametrize("name", REAL_MODELS)
def test_forward_backward_gives_finite_gradients_to_every_parameter(name):
    model = create_model(name, num_classes=7, drop_path_rate=0.1)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", META_MODELS)
def test_big_model_forward_backward_reaches_every_parameter_on_meta(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=7, drop_path_rate=0.1)
        out = model(torch.randn(2, 3, 32, 32))
        out.square().mean().backward()
    assert out.shape == (2, 7)
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, f"{pname} received no gradient"


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_count_matches_the_paper_exactly(name):
    assert _num_params(_meta_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", [n for n in CONVNEXT_MODELS if n.startswith("convnextv2_")])
def test_v2_parameter_count_matches_timm(name):
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False)
    assert _num_params(_meta_model(name)) == _num_params(reference)


@pytest.mark.parametrize("name", ISOTROPIC_PARAMS)
def test_isotropic_parameter_count_matches_the_paper(name):
    # The paper rounds to millions (22M, 87M, 306M), so the exact count is within half a million.
    assert _num_params(_meta_model(name)) == pytest.approx(ISOTROPIC_PARAMS[name], abs=0.5e6)


@pytest.mark.parametrize("name", GFLOPS)
@pytest.mark.parametrize("resolution", [224, 384])
def test_gflops_match_the_paper_within_2_percent(name, resolution):
    expected = GFLOPS[name][0 if resolution == 224 else 1]
    with torch.device("meta"):
        model = create_model(name)
        gmacs = count_macs(model, resolution) / 1e9
    assert gmacs == pytest.approx(expected, rel=0.02)


def _block_drop_rates(blocks) -> list[float]:
    # Blocks with rate 0 carry an Identity instead of a DropPath.
    return [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0 for b in blocks]


def test_stochastic_depth_grows_linearly_over_all_blocks():
    model = _meta_model("convnext_tiny", drop_path_rate=0.3, num_classes=0)  # the rates are plain floats
    rates = _block_drop_rates(block for stage in model.stages for block in stage)
    assert rates == pytest.approx(torch.linspace(0, 0.3, sum(model.depths)).tolist())
    assert rates[-1] == pytest.approx(0.3)
    iso = _meta_model("convnext_iso_small", drop_path_rate=0.2, num_classes=0)
    assert _block_drop_rates(iso.blocks) == pytest.approx(torch.linspace(0, 0.2, iso.depth).tolist())
    # One helper serves every network: a roadmap step with the same depths gets the same rates, stage by stage.
    roadmap = _meta_model("roadmap_02_stage_ratio", drop_path_rate=0.3, num_classes=0)
    assert _block_drop_rates(block for stage in roadmap.stages for block in stage) == pytest.approx(rates)
    assert [len(stage) for stage in drop_path_rates(0.3, (3, 3, 9, 3))] == [3, 3, 9, 3]


def test_layer_scale_is_initialised_to_the_given_value_and_absent_when_zero():
    default = create_model("convnext_atto", num_classes=0)
    gammas = [block.gamma for stage in default.stages for block in stage]
    assert all(torch.equal(g, torch.full_like(g, 1e-6)) for g in gammas)
    custom = create_model("convnext_atto", num_classes=0, layer_scale_init_value=0.5)
    assert all(torch.equal(b.gamma, torch.full_like(b.gamma, 0.5)) for s in custom.stages for b in s)
    for model in (
        create_model("convnextv2_atto", num_classes=0),
        create_model("convnext_atto", layer_scale_init_value=0),
    ):
        assert not any(
            name.endswith(".gamma") and ".grn." not in name for name, _ in model.named_parameters()
        )


def test_head_init_scale_scales_the_initial_head():
    torch.manual_seed(3)
    unscaled = create_model("convnext_atto", num_classes=100)
    torch.manual_seed(3)
    scaled = create_model("convnext_atto", num_classes=100, head_init_scale=0.001)
    torch.testing.assert_close(scaled.head.weight, unscaled.head.weight * 0.001)
    assert (scaled.head.weight.std() / unscaled.head.weight.std()).item() == pytest.approx(0.001, rel=1e-4)
    # Only the head is scaled.
    torch.testing.assert_close(scaled.stages[3][1].pwconv2.weight, unscaled.stages[3][1].pwconv2.weight)


def test_channels_last_input_gives_the_same_output_without_copies_before_layernorm():
    model = create_model("convnext_atto", num_classes=10, layer_scale_init_value=1.0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        # The (N, H, W, C) permute of a channels_last map is already contiguous: LayerNorm and the Linears
        # need no copy. Checked in the first block and in the last one (after three downsampling convs).
        contiguous = []
        hooks = [
            block.norm.register_forward_hook(lambda m, args, out: contiguous.append(args[0].is_contiguous()))
            for block in (model.stages[0][0], model.stages[3][-1])
        ]
        actual = model(x.contiguous(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert contiguous == [True, True]


@pytest.mark.parametrize("patch_size, final", [(4, 1), (2, 2), (1, 4)])
def test_forward_stages_channels_and_strides(patch_size, final):
    model = create_model("convnext_atto", num_classes=10, patch_size=patch_size)
    maps = model.forward_stages(torch.randn(2, 3, 32, 32))
    assert [m.shape[1] for m in maps] == [40, 80, 160, 320]
    assert [m.shape[-1] for m in maps] == [final * 8, final * 4, final * 2, final]
    assert model.total_stride == 32 // final
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 320, final, final)


def test_isotropic_model_has_one_stage_at_the_patch_stride():
    model = create_model("convnext_iso_small", num_classes=10)
    assert isinstance(model, ConvNeXtIsotropic)
    (features,) = model.forward_stages(torch.randn(1, 3, 64, 64))
    assert features.shape == (1, 384, 4, 4) and model.total_stride == 16


def test_reset_classifier_changes_the_number_of_outputs():
    model = create_model("convnext_atto", num_classes=1000)
    model.reset_classifier(5)
    assert model.num_classes == 5 and model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(1)
    model = create_model("convnext_atto", num_classes=10, layer_scale_init_value=1.0).train()
    x, target = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])

    def loss_and_grads():
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_loss, plain_grads = loss_and_grads()
    model.set_grad_checkpointing(True)
    ckpt_loss, ckpt_grads = loss_and_grads()
    torch.testing.assert_close(ckpt_loss, plain_loss)
    torch.testing.assert_close(ckpt_grads, plain_grads)


def _official_layer_id(name: str) -> int:
    """``get_num_layer_for_convnext`` from the official repo's optim_factory.py (depths 3, 3, 27, 3)."""
    parts = name.split(".")
    if parts[0] == "downsample_layers":
        stage = int(parts[1])
        return {0: 0, 1: 2, 2: 3, 3: 12}[stage]
    if parts[0] == "stages":
        stage, block = int(parts[1]), int(parts[2])
        return {0: 1, 1: 2, 2: 3 + block // 3, 3: 12}[stage]
    return 13  # norm and head


def test_layer_ids_reproduce_the_official_table_for_depths_3_3_27_3():
    # Narrow widths: the ids depend on the depths only.
    model = ConvNeXt(depths=(3, 3, 27, 3), dims=(8, 16, 32, 64), num_classes=10)
    ids = model.layer_ids()
    assert ids.keys() == dict(model.named_parameters()).keys()
    assert ids == {name: _official_layer_id(name) for name in ids}


def test_layer_ids_of_tiny_are_monotone_in_network_order_and_largest_at_the_head():
    ids = _meta_model("convnext_tiny", num_classes=10).layer_ids()
    order = []  # parameter names in the order the forward pass uses them
    for i in range(4):
        order += [n for n in ids if n.startswith((f"downsample_layers.{i}.", f"stages.{i}."))]
    order += [n for n in ids if n.startswith(("norm.", "head."))]
    assert sorted(order) == sorted(ids)
    sequence = [ids[n] for n in order]
    assert sequence == sorted(sequence)
    assert ids["head.weight"] == max(sequence) > ids["stages.3.2.pwconv2.weight"]
