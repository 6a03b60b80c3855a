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


NET = "model.init_args.net.init_args"
EMA = ["--trainer.callbacks+=convnext_pl.callbacks.EMA"]
# (extra flags, option as the error line names it, value): the network's, the data's and the EMA callback's ranges.
OTHER_OPTIONS = {
    (f"{NET}.drop_path_rate", ()): ["-0.1", "1", "1.5", "abc"],  # [0, 1)
    (f"{NET}.kernel_size", ()): ["0", "-3", "4", "7.5", "abc"],  # odd, positive
    (f"{NET}.patch_size", ()): ["0", "-2", "1.5", "abc"],  # positive int
    (f"{NET}.layer_scale_init_value", ()): ["-1e-6", "abc"],  # [0, inf)
    (f"{NET}.head_init_scale", ()): ["-0.001", "abc"],  # [0, inf)
    ("data.init_args.image_size", ()): ["0", "-32", "abc"],  # positive int
    ("trainer.callbacks.init_args.decay", tuple(EMA)): ["0", "1", "-0.5", "abc"],  # (0, 1)
    ("trainer.callbacks.init_args.update_every_n_steps", tuple(EMA)): [
        "0",
        "-1",
        "1.5",
        "abc",
    ],  # positive int
}
OTHER_CASES = [
    (option, extra, value) for (option, extra), values in OTHER_OPTIONS.items() for value in values
]


def _one_error_line(args, root, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--config", DIGITS, *args, f"--trainer.default_root_dir={root}"], run=False)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert not root.exists()
    return errors[0]


@pytest.mark.parametrize(
    ("option", "extra", "value"), OTHER_CASES, ids=[f"{o.rsplit('.', 1)[1]}={v}" for o, _, v in OTHER_CASES]
)
def test_network_data_and_ema_values_outside_their_range_are_one_error_line(
    option, extra, value, tmp_path, capsys
):
    flag = option.replace("init_args.", "") if option.startswith("trainer.callbacks") else option
    error = _one_error_line([*extra, f"--{flag}={value}"], tmp_path / "runs", capsys)
    assert option in error, error


def test_an_image_size_below_the_networks_total_stride_names_the_smallest_valid_size(tmp_path, capsys):
    # digits: convnext_atto with patch_size 2, total stride 2 * 2**3 = 16.
    error = _one_error_line(["--data.init_args.image_size=15"], tmp_path / "runs", capsys)
    assert (
        error.startswith("error: data.init_args.image_size 15") and "smallest valid image size is 16" in error
    )


def test_a_patch_size_the_image_size_does_not_allow_is_refused(tmp_path, capsys):
    error = _one_error_line([f"--{NET}.patch_size=4"], tmp_path / "runs", capsys)  # stride 32 > 16-px digits
    assert "smallest valid image size is 32" in error and f"{NET}.patch_size" in error


def test_an_image_size_at_the_total_stride_is_accepted(tmp_path):
    cli = cli_main(
        ["--config", DIGITS, "--data.init_args.image_size=16", f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )
    assert cli.model.net.total_stride == 16 and cli.datamodule.image_size == 16


def test_create_model_checks_the_ranges_when_called_from_python():
    from convnext_pl.errors import UserError
    from convnext_pl.models import create_model

    for option, value in [
        ("drop_path_rate", 1.0),
        ("kernel_size", 4),
        ("patch_size", 0),
        ("head_init_scale", -1),
    ]:
        with pytest.raises(UserError, match=f"^{option} must be "):
            create_model("convnext_atto", **{option: value})
    assert create_model("convnext_atto", kernel_size=5).stages[0][0].dwconv.kernel_size == (5, 5)


def test_ema_checks_its_ranges_when_built_from_python():
    from convnext_pl.callbacks import EMA
    from convnext_pl.errors import UserError

    for kwargs in [{"decay": 1.0}, {"decay": 0.0}, {"update_every_n_steps": 0}]:
        with pytest.raises(UserError, match="EMA decay must be in"):
            EMA(**kwargs)
