"""Every dense-task config of ``configs/experiment/`` carries the official optimizer settings: read against the
table of ``docs/paper.md`` §6, whose rows cite the official files and lines they come from."""

import itertools
import re

import pytest
import torch
import yaml
from helpers import EXPERIMENTS, ROOT

from convnext_pl.models.layer_ids import dense_layer_ids, lr_scale
from convnext_pl.models.upernet import create_upernet

DENSE_TASKS = ("convnext_pl.SemanticSegmenter", "convnext_pl.MaskRCNNDetector")
# Demos on generated data: their settings are shrunk to train in seconds, not an official recipe.
DEMOS = {"segmentation_synthetic", "coco_shapes_mask_rcnn"}
# Table column -> (where the value lives in the config's model.init_args, how the table's text reads).
COLUMNS = {
    "lr": (("lr",), float),
    "weight decay": (("weight_decay",), float),
    "layer decay": (("layer_decay",), float),
    "decay type": (("decay_type",), str),
    "num_layers": (("num_layers",), int),
    "warm-up iters": (("warmup_steps",), int),
    "warm-up ratio": (("warmup_ratio",), float),
    "drop path": (("net", "init_args", "drop_path_rate"), float),
}


def _official_table() -> dict[str, dict[str, str]]:
    text = (ROOT / "docs" / "paper.md").read_text()
    start = text.index("**Dense-task optimizer settings, config by config**")
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[first:]))  # this table only
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    table = {}
    for line in rows[2:]:  # after the header and its |---| line
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        table[cells["config"]] = cells
    return table


def _dense_configs() -> list[str]:
    names = []
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        if config.get("model", {}).get("class_path") in DENSE_TASKS and path.stem not in DEMOS:
            names.append(path.stem)
    return names


TABLE = _official_table()


def test_the_table_covers_every_dense_config_and_cites_a_source_for_each_row():
    assert set(_dense_configs()) == set(TABLE)
    for name, row in TABLE.items():
        assert re.search(r"L\d+", row["source"]), f"{name}: no official line cited"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_dense_config_optimizer_settings_are_the_official_ones(name):
    model = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())["model"]["init_args"]
    for column, (keys, read) in COLUMNS.items():
        value = model
        for key in keys:
            value = value[key]
        assert value == read(TABLE[name][column]), (
            f"{name}: {'.'.join(keys)} is {value}, officially {TABLE[name][column]}"
        )


def test_convnext_small_ade20k_scales_stage_2_by_the_official_stage_wise_factor():
    """The issue's example: ``backbone.stages.2.20.dwconv.weight`` of UperNet + ConvNeXt-S trains at 0.9 ** 10 =
    0.3487 of the peak lr (official stage_wise, num_layers 12), not the layer-wise 0.6561."""
    model = yaml.safe_load((EXPERIMENTS / "ade20k_upernet_convnext_small.yaml").read_text())["model"][
        "init_args"
    ]
    with torch.device("meta"):  # names and shapes only
        net = create_upernet("convnext_small", 150)
    ids = dense_layer_ids(net, model["decay_type"], model["num_layers"])
    scale = lr_scale(ids["backbone.stages.2.20.dwconv.weight"], model["num_layers"], model["layer_decay"])
    assert scale == pytest.approx(0.9**10) == pytest.approx(0.3487, abs=1e-4)
    assert lr_scale(ids["decode_head.conv_seg.weight"], model["num_layers"], model["layer_decay"]) == 1.0
