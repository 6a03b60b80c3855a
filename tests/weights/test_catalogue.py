"""The released-weights catalogue: every entry builds the network its source's file fits, with the source's figures."""

from functools import cache

import pytest
import timm
import torch

from convnext_pl.errors import UserError
from convnext_pl.weights.catalogue import CATALOGUE, IN22K_CLASSES, get_weights, list_weights
from convnext_pl.weights.loading import to_official_names

# Parameter counts of the isotropic models (official README, "ImageNet-1K trained models (isotropic)"); timm has
# no isotropic ConvNeXt to compare shapes with.
ISOTROPIC_PARAMS_M = {
    "convnext_iso_small.in1k": 22,
    "convnext_iso_base.in1k": 87,
    "convnext_iso_large.in1k": 306,
}


def _network_key(name: str) -> tuple:
    arch = CATALOGUE[name].arch
    return arch.factory, tuple(sorted(arch.kwargs.items()))


@cache
def _shapes_of(key: tuple) -> dict[str, torch.Size]:
    with torch.device("meta"):  # no memory, no init cost
        network = CATALOGUE[next(n for n in CATALOGUE if _network_key(n) == key)].build()
    return {k: v.shape for k, v in network.state_dict().items()}


def _meta_shapes(name: str) -> dict[str, torch.Size]:
    """The state-dict shapes of an entry's network (entries sharing a network are built once)."""
    return _shapes_of(_network_key(name))


def _one_per_network() -> list[str]:
    # Entries that share a network (the 224 and 384 files of one model) are checked once: the suite's time budget.
    seen, names = set(), []
    for name, entry in CATALOGUE.items():
        key = _network_key(name)
        if key not in seen and entry.hf_hub_id and entry.hf_hub_id.startswith("timm/"):
            seen.add(key)
            names.append(name)
    return names


@pytest.mark.parametrize("name", _one_per_network())
def test_entry_builds_the_shapes_of_timms_copy_of_the_file(name):
    entry = CATALOGUE[name]
    timm_name = entry.hf_hub_id.removeprefix("timm/")
    # timm's model for the same pretrained tag, with the file's head size (21841, 1000 or none), renamed to ours.
    with torch.device("meta"):
        reference = timm.create_model(timm_name, pretrained=False, num_classes=entry.num_classes)
    expected = {k: v.shape for k, v in to_official_names(reference.state_dict()).items()}
    assert _meta_shapes(name) == expected


def test_image_sizes_are_timms_pretrained_configs():
    for entry in CATALOGUE.values():
        if entry.hf_hub_id and entry.hf_hub_id.startswith("timm/"):
            config = timm.get_pretrained_cfg(entry.hf_hub_id.removeprefix("timm/"))
            assert config.input_size[-1] == entry.image_size, entry.name
            assert config.crop_pct == entry.crop_pct, entry.name


@pytest.mark.parametrize("name", sorted(ISOTROPIC_PARAMS_M))
def test_isotropic_entries_have_the_readmes_parameter_count(name):
    state = _meta_shapes(name)
    assert round(sum(s.numel() for s in state.values()) / 1e6) == ISOTROPIC_PARAMS_M[name]


def test_22k_entries_have_21841_class_heads_and_1k_entries_1000():
    for entry in list_weights(task="classification"):
        head = _meta_shapes(entry.name).get("head.weight")
        expected = {"imagenet-22k": IN22K_CLASSES, "imagenet-1k": 1000, "none": None}[entry.label_set]
        assert (head[0] if head is not None else None) == expected, entry.name


@pytest.mark.parametrize(
    "name, top1, size",
    [
        # docs/paper.md §1 (paper Table 1 / official README): 1K-trained and 22K-pretrained top-1.
        ("convnext_tiny.in1k", 82.1, 224),
        ("convnext_large.in1k", 84.3, 224),
        ("convnext_base.in22k_ft_in1k", 85.8, 224),
        ("convnext_xlarge.in22k_ft_in1k_384", 87.8, 384),
        ("convnext_atto.d2_in1k", 75.7, 224),
        ("convnextv2_huge.fcmae_ft_in22k_in1k_512", 88.9, 512),
    ],
)
def test_reported_top1_is_the_sources_figure(name, top1, size):
    entry = get_weights(name)
    assert entry.reported["top1"] == top1
    assert entry.image_size == size


def test_official_files_evaluate_with_crop_0875_below_384_and_squash_above():
    for entry in list_weights(task="classification"):
        if entry.image_size >= 384:
            assert (entry.crop_pct, entry.crop_mode) == (1.0, "squash"), entry.name
        elif entry.url and entry.url.startswith("https://dl.fbaipublicfiles.com/"):
            assert (entry.crop_pct, entry.crop_mode) == (0.875, "center"), entry.name


def test_official_files_are_under_the_official_folder():
    v1 = [
        w
        for w in CATALOGUE.values()
        if w.family in ("convnext", "convnext_iso") and "_in1k" not in w.name[-8:]
    ]
    assert all(
        w.url.startswith("https://dl.fbaipublicfiles.com/convnext/")
        for w in v1
        if w.source.startswith("face")
    )
    assert get_weights("convnextv2_tiny.fcmae").url.endswith(
        "/convnextv2/pt_only/convnextv2_tiny_1k_224_fcmae.pt"
    )


def test_unknown_name_suggests_the_models_entries():
    with pytest.raises(UserError, match="convnext_tiny.in1k"):
        get_weights("convnext_tiny.in2k")


def test_list_filters_by_name():
    names = [w.name for w in list_weights("iso")]
    assert names == ["convnext_iso_small.in1k", "convnext_iso_base.in1k", "convnext_iso_large.in1k"]
