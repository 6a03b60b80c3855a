"""Every range-checked option of the classification task, just outside its range and of a wrong type, through the
CLI's parse and instantiate stage: exit code 2, exactly one ``error:`` line naming the option, no folder."""

import pytest
from helpers import DIGITS

from convnext_pl.cli import cli_main

# option -> values just outside its valid range (and a wrong type); the range is declared on the option's type.
OUT_OF_RANGE = {
    "lr": ["0", "-1e-3", "abc"],  # (0, inf)
    "lr_reference_batch": ["0", "-8", "1.5"],  # positive int
    "min_lr": ["-1e-9", "abc"],  # [0, lr]
    "weight_decay": ["-0.01", "abc"],  # [0, inf)
    "eps": ["0", "abc"],  # (0, inf)
    "warmup_epochs": ["-0.5", "abc"],  # [0, inf)
    "warmup_steps": ["-1", "2.5"],  # non-negative int
    "layer_decay": ["0", "-1", "1.5", "abc"],  # (0, 1]
    "label_smoothing": ["-0.1", "1", "abc"],  # [0, 1)
    "mixup_alpha": ["-0.1", "abc"],  # [0, inf)
    "cutmix_alpha": ["-0.1", "abc"],  # [0, inf)
    "mixup_prob": ["-0.1", "1.01", "abc"],  # [0, 1]
    "mixup_switch_prob": ["-0.1", "1.01", "abc"],  # [0, 1]
}
CASES = [(option, value) for option, values in OUT_OF_RANGE.items() for value in values]


@pytest.mark.parametrize(("option", "value"), CASES, ids=[f"{o}={v}" for o, v in CASES])
def test_a_value_outside_the_options_range_is_one_error_line_naming_it(option, value, tmp_path, capsys):
    root = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["--config", DIGITS, f"--model.{option}={value}", f"--trainer.default_root_dir={root}"], run=False
        )
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"model.init_args.{option}" in errors[0], errors
    assert not root.exists()


def test_min_lr_above_lr_is_refused_as_a_relation(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(
            ["--config", DIGITS, "--model.min_lr=0.1", f"--trainer.default_root_dir={tmp_path}/runs"],
            run=False,
        )
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: model.init_args.min_lr 0.1 is above")
