"""The fine-tuning experiments name the released weights the paper fine-tunes from."""

import pytest
import yaml
from helpers import EXPERIMENTS

from convnext_pl.weights.catalogue import get_weights


@pytest.mark.parametrize("config", sorted(EXPERIMENTS.glob("*finetune*.yaml")), ids=lambda p: p.stem)
def test_fine_tuning_configs_name_released_weights_of_their_network(config):
    model = yaml.safe_load(config.read_text())["model"]["init_args"]
    entry = get_weights(model["pretrained"])  # forgetting --model.pretrained no longer trains from scratch
    assert entry.arch.kwargs["name"] == model["net"]["init_args"]["name"]
    assert "--model.pretrained" not in config.read_text().splitlines()[0]  # the first comment runs as it is
