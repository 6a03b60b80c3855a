"""Every range-checked option of the three tasks (classification, segmentation, detection: model, network, data,
EMA and NaN-guard options), just outside its range and of a wrong type, through the CLI's parse and instantiate
stage: exit code 2, exactly one ``error:`` line naming the option, no folder. Relations between options are refused
by hand."""

import pytest
from helpers import DIGITS, EXPERIMENTS, SHORT

from convnext_pl.training.cli import cli_main

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
EMA = ["--trainer.callbacks+=convnext_pl.training.callbacks.EMA"]
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
    ("nonfinite_loss.action", ()): ["halt"],  # "stop" or "skip"
    ("nonfinite_loss.max_consecutive_skips", ()): ["-1", "1.5", "abc"],  # non-negative int
    ("nonfinite_loss.check_gradients", ()): ["maybe"],  # bool
}
OTHER_CASES = [
    (option, extra, value) for (option, extra), values in OTHER_OPTIONS.items() for value in values
]


def _error_line(config: str, args: list[str], root, capsys) -> str:
    """Exit 2, exactly one ``error:`` line (returned), and no folder made."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--config", config, *args, f"--trainer.default_root_dir={root}"], run=False)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert not root.exists()
    return errors[0]


def _one_error_line(args, root, capsys) -> str:
    return _error_line(DIGITS, args, root, capsys)


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
    from convnext_pl.errors import UserError
    from convnext_pl.training.callbacks import EMA

    for kwargs in [{"decay": 1.0}, {"decay": 0.0}, {"update_every_n_steps": 0}]:
        with pytest.raises(UserError, match="EMA decay must be in"):
            EMA(**kwargs)


SEG = str(EXPERIMENTS / "segmentation_synthetic.yaml")
ADE20K = str(EXPERIMENTS / "ade20k_upernet_convnext_tiny.yaml")
DET = str(EXPERIMENTS / "coco_shapes_mask_rcnn.yaml")
COCO = str(EXPERIMENTS / "coco_mask_rcnn_convnext_tiny_3x.yaml")
CIFAR = str(EXPERIMENTS / "cifar10_quick.yaml")
IMAGENET = str(EXPERIMENTS / "imagenet1k_convnext_tiny.yaml")
M, N, D = "model.init_args", "model.init_args.net.init_args", "data.init_args"
# config -> {option as the error line names it (and as the flag sets it): values just outside its range, and a
# value of a wrong type}. The ranges are declared on the options' types; the comments repeat them.
TASK_OPTIONS = {
    SEG: {
        f"{M}.lr": ["0", "abc"],  # (0, inf)
        f"{M}.lr_reference_batch": ["0", "1.5"],  # positive int
        f"{M}.weight_decay": ["-0.05", "abc"],  # [0, inf)
        f"{M}.warmup_steps": ["-1", "2.5"],  # non-negative int
        f"{M}.warmup_ratio": ["-1e-6", "1.5"],  # [0, 1]
        f"{M}.poly_power": ["-1", "abc"],  # [0, inf)
        f"{M}.min_lr": ["-1e-9", "abc"],  # [0, lr]
        f"{M}.layer_decay": ["0", "abc"],  # (0, 1]
        f"{M}.num_layers": ["0", "2.5"],  # positive int
        f"{M}.aux_weight": ["-0.4", "abc"],  # [0, inf)
        f"{M}.inference": ["sliding"],  # whole or slide
        f"{M}.slide_crop": ["[0,512]", "[512,a]"],  # two positive ints
        f"{M}.slide_stride": ["[-1,341]", "[341]"],  # two positive ints, at most the crop
        f"{M}.test_scales": ["[0.0]", "[1.0,-0.5]", "abc"],  # positive floats, at least one
        f"{M}.flip": ["maybe"],  # bool
        f"{N}.drop_path_rate": ["-0.1", "abc"],  # [0, 1)
        f"{N}.channels": ["0", "abc"],  # positive int
        f"{N}.aux_channels": ["-1"],  # positive int
        f"{N}.pool_scales": ["[1,0]", "[1.5]"],  # positive ints
        f"{N}.dropout_ratio": ["-0.1", "1"],  # [0, 1)
        f"{D}.batch_size": ["0", "1.5"],  # positive int
        f"{D}.num_workers": ["-1", "abc"],  # non-negative int
        f"{D}.scale": ["[0,96]", "[128]"],  # two positive ints
        f"{D}.ratio_range": ["[0,2.0]", "[0.5,-2]"],  # two positive floats
        f"{D}.crop_size": ["[0,64]", "[64,6.5]"],  # two positive ints
        f"{D}.cat_max_ratio": ["0", "abc"],  # (0, 1]; 1 turns the check off
        f"{D}.train_images": ["0"],  # positive int
        f"{D}.val_images": ["0"],  # positive int
        f"{D}.image_size": ["0", "abc"],  # positive int
    },
    ADE20K: {f"{D}.batch_size": ["0"], f"{D}.crop_size": ["[512,0]"], f"{D}.cat_max_ratio": ["-0.75"]},
    DET: {
        f"{M}.lr": ["0", "abc"],  # (0, inf)
        f"{M}.lr_reference_batch": ["-16"],  # positive int
        f"{M}.weight_decay": ["-0.05"],  # [0, inf)
        f"{M}.layer_decay": ["0", "1.05"],  # (0, 1]
        f"{M}.num_layers": ["0"],  # positive int
        f"{M}.warmup_steps": ["-1", "abc"],  # non-negative int
        f"{M}.warmup_ratio": ["-0.001", "2"],  # [0, 1]
        f"{M}.lr_steps": ["[0]", "[4.5]"],  # positive ints (epochs)
        f"{M}.lr_gamma": ["0", "abc"],  # (0, 1)
        f"{M}.mask_threshold": ["0", "abc"],  # (0, 1)
        f"{M}.draw_images": ["-1", "1.5"],  # non-negative int
        f"{M}.draw_score_threshold": ["-0.1", "1.5"],  # [0, 1]
        f"{N}.drop_path_rate": ["1.5", "-0.1"],  # [0, 1)
        f"{N}.min_size": ["0", "abc"],  # positive int, at most max_size
        f"{N}.max_size": ["-1"],  # positive int
        f"{N}.fpn_channels": ["0"],  # positive int
        f"{N}.representation_size": ["0"],  # positive int
        f"{N}.rpn_post_nms_top_n_train": ["0"],  # positive int
        f"{N}.rpn_post_nms_top_n_test": ["-100"],  # positive int
        f"{N}.box_batch_size_per_image": ["0"],  # positive int
        f"{N}.box_detections_per_img": ["0", "2.5"],  # positive int
        f"{N}.box_score_thresh": ["-0.05", "1.5"],  # [0, 1]
        f"{N}.box_nms_thresh": ["0", "abc"],  # (0, 1]
        f"{D}.batch_size": ["0", "abc"],  # positive int
        f"{D}.num_workers": ["-1"],  # non-negative int
        f"{D}.train_scales": ["[72,0]", "[7.5]"],  # positive ints, at least one
        f"{D}.crop_scales": ["[-64]"],  # positive ints, at least one
        f"{D}.crop_size": ["[0,80]", "[48]"],  # (min, max), positive ints
        f"{D}.max_size": ["0"],  # positive int
        f"{D}.train_images": ["0"],  # positive int
        f"{D}.val_images": ["-16"],  # positive int
        f"{D}.image_size": ["0"],  # positive int
    },
    COCO: {f"{D}.batch_size": ["0"], f"{D}.max_size": ["-1333"]},
    DIGITS: {
        f"{D}.batch_size": ["0", "1.5"],  # positive int
        f"{D}.num_workers": ["-1"],  # non-negative int
        f"{D}.val_fraction": ["0", "abc"],  # (0, 1)
    },
    CIFAR: {
        f"{D}.batch_size": ["0"],  # positive int
        f"{D}.num_workers": ["-1"],  # non-negative int
        f"{D}.image_size": ["0", "abc"],  # positive int
        f"{D}.re_prob": ["-0.25", "1.5"],  # [0, 1]
        f"{D}.crop_pct": ["0", "abc"],  # (0, 1]
        f"{D}.variant": ["cifar1000"],  # cifar10 or cifar100
    },
    IMAGENET: {
        f"{D}.batch_size": ["0"],  # positive int
        f"{D}.num_workers": ["-8"],  # non-negative int
        f"{D}.image_size": ["0"],  # positive int
        f"{D}.num_classes": ["0", "abc"],  # positive int
        f"{D}.re_prob": ["1.25"],  # [0, 1]
        f"{D}.crop_pct": ["-0.875"],  # (0, 1]
        f"{D}.layout": ["zip"],  # auto, folder or devkit
    },
}
TASK_CASES = [
    (config, option, value)
    for config, options in TASK_OPTIONS.items()
    for option, values in options.items()
    for value in values
]


@pytest.mark.parametrize(
    ("config", "option", "value"),
    TASK_CASES,
    ids=[
        f"{config.rsplit('/', 1)[1][:-5]}-{option.rsplit('.', 1)[1]}={value}"
        for config, option, value in TASK_CASES
    ],
)
def test_every_tasks_values_outside_their_range_are_one_error_line_naming_the_option(
    config, option, value, tmp_path, capsys
):
    error = _error_line(config, [f"--{option}={value}"], tmp_path / "runs", capsys)
    assert option in error, error


# Relations between options, which types cannot say: refused by hand where the options meet, in one line.
RELATIONS = [
    (SEG, [f"--{M}.min_lr=0.01"], f"error: {M}.min_lr 0.01 is above {M}.lr 0.002"),
    (
        SEG,
        [f"--{M}.slide_crop=[64,64]", f"--{M}.slide_stride=[65,32]"],
        f"error: {M}.slide_stride (65, 32) is larger",
    ),
    (SEG, [f"--{M}.test_scales=[]"], f"error: {M}.test_scales is empty"),
    (SEG, [f"--{M}.decay_type=blockwise"], f"error: {M}.decay_type 'blockwise' is unknown"),
    (DET, [f"--{M}.decay_type=blockwise"], f"error: {M}.decay_type 'blockwise' is unknown"),
    (DET, [f"--{N}.min_size=200"], f"error: {N}.min_size 200 is above max_size 160"),
    (DET, [f"--{D}.crop_size=[80,48]"], f"error: {D}.crop_size (80, 48) is (min, max)"),
    (DET, [f"--{D}.train_scales=[]"], f"error: {D}.train_scales is empty"),
]


@pytest.mark.parametrize(
    ("config", "args", "start"), RELATIONS, ids=[r[1][-1].split("=")[0][2:] for r in RELATIONS]
)
def test_relations_between_options_are_one_error_line_naming_them(config, args, start, tmp_path, capsys):
    assert _error_line(config, args, tmp_path / "runs", capsys).startswith(start)


def test_the_task_configs_values_inside_their_ranges_are_accepted(tmp_path):
    segmenter = cli_main(
        ["--config", SEG, f"--{D}.cat_max_ratio=1", f"--trainer.default_root_dir={tmp_path}"], run=False
    )
    assert segmenter.datamodule.hparams.cat_max_ratio == 1.0
    detector = cli_main(
        ["--config", DET, f"--{N}.box_nms_thresh=1", f"--trainer.default_root_dir={tmp_path}"], run=False
    )
    assert (
        detector.model.net.roi_heads.nms_thresh == 1.0 and detector.model.net.roi_heads.score_thresh == 0.05
    )


def test_the_parsers_words_read_as_english_and_the_value_is_kept_as_given(tmp_path, capsys):
    error = _error_line(DIGITS, [f"--{D}.seed=abc"], tmp_path / "runs", capsys)  # seed: a plain int
    assert error.startswith(f"error: {D}.seed: expected an int. Got value: abc"), error
    error = _error_line(SEG, [f"--{M}.inference=a e"], tmp_path / "runs", capsys)
    assert error.startswith(f"error: {M}.inference: expected one of 'whole', 'slide'. Got value: a e"), error


def test_short_runs_two_validation_batches_because_the_cli_reads_1_as_all_of_them(tmp_path):
    # Trainer declares limit_*_batches `float | int`: jsonargparse tries float first, and Lightning reads 1.0 as
    # 100% of the batches, 2.0 as two batches (tests/helpers/cli_args.py SHORT depends on it).
    short = cli_main(
        ["--config", DIGITS, *SHORT, f"--trainer.default_root_dir={tmp_path}"], run=False
    ).trainer
    assert (short.limit_train_batches, short.limit_val_batches) == (2, 2)
    assert isinstance(short.limit_val_batches, int)
    one = cli_main(
        ["--config", DIGITS, "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )
    assert one.trainer.limit_val_batches == 1.0 and isinstance(one.trainer.limit_val_batches, float)
