"""The numeric options' ranges, drawn by hypothesis rather than listed: any value outside an option's range is one
``error:`` line naming the option (exit code 2, no folder), and any value inside it parses to that value.

Parse-only (the classes are not built), so that an example costs a parse (~0.2 s), not a network; the table in
``test_option_ranges.py`` runs fixed values through instantiation as well.
"""

import contextlib
import io
import math
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from helpers import DIGITS, EXPERIMENTS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convnext_pl.training.cli import ConvNeXtCLI

SEG = str(EXPERIMENTS / "segmentation_synthetic.yaml")
DET = str(EXPERIMENTS / "coco_shapes_mask_rcnn.yaml")
CIFAR = str(EXPERIMENTS / "cifar10_quick.yaml")
M, N, D = "model.init_args", "model.init_args.net.init_args", "data.init_args"
INF = math.inf


# option -> (config, low, low included, high, high included, integer): the range declared on the option's type.
RANGES = {
    f"{M}.lr": (DIGITS, 0, False, INF, False, False),
    f"{M}.weight_decay": (DIGITS, 0, True, INF, False, False),
    f"{M}.warmup_steps": (DIGITS, 0, True, INF, False, True),
    f"{M}.layer_decay": (DIGITS, 0, False, 1, True, False),
    f"{M}.label_smoothing": (DIGITS, 0, True, 1, False, False),
    f"{M}.mixup_alpha": (DIGITS, 0, True, INF, False, False),
    f"{M}.mixup_prob": (DIGITS, 0, True, 1, True, False),
    f"{N}.drop_path_rate": (DIGITS, 0, True, 1, False, False),
    f"{N}.patch_size": (DIGITS, 1, True, INF, False, True),
    f"{D}.val_fraction": (DIGITS, 0, False, 1, False, False),
    f"{D}.batch_size": (CIFAR, 1, True, INF, False, True),
    f"{D}.crop_pct": (CIFAR, 0, False, 1, True, False),
    f"{D}.re_prob": (CIFAR, 0, True, 1, True, False),
    f"{M}.warmup_ratio": (SEG, 0, True, 1, True, False),
    f"{M}.aux_weight": (SEG, 0, True, INF, False, False),
    f"{M}.num_layers": (SEG, 1, True, INF, False, True),
    f"{D}.cat_max_ratio": (SEG, 0, False, 1, True, False),
    f"{M}.lr_gamma": (DET, 0, False, 1, False, False),
    f"{M}.mask_threshold": (DET, 0, False, 1, False, False),
    f"{N}.box_nms_thresh": (DET, 0, False, 1, True, False),
    f"{N}.box_detections_per_img": (DET, 1, True, INF, False, True),
    f"{D}.max_size": (DET, 1, True, INF, False, True),
}
LIMIT = 1e6  # beyond the ranges' finite ends, values up to this far away


def _inside(value: float, low, low_in, high, high_in) -> bool:
    return (value > low or (low_in and value == low)) and (value < high or (high_in and value == high))


@st.composite
def outside_values(draw):
    option = draw(st.sampled_from(sorted(RANGES)))
    _, low, low_in, high, high_in, integer = RANGES[option]
    candidates = [st.floats(-LIMIT, low, allow_nan=False)]
    if high < INF:
        candidates.append(st.floats(high, high + LIMIT, allow_nan=False))
    if integer:
        candidates.append(st.floats(max(low, 0), LIMIT).filter(lambda v: not v.is_integer()))
    value = draw(
        st.one_of(candidates).filter(lambda v: integer or not _inside(v, low, low_in, high, high_in))
    )
    text = str(int(value)) if integer and value.is_integer() else repr(value)
    if integer and value.is_integer() and _inside(int(value), low, low_in, high, high_in):
        text = str(int(low) - 1)  # an integer drawn inside: take the one just below the range
    return option, text


@st.composite
def inside_values(draw):
    option = draw(st.sampled_from(sorted(RANGES)))
    _, low, low_in, high, high_in, integer = RANGES[option]
    if integer:
        value = draw(st.integers(int(low) if low_in else int(low) + 1, 10_000))
        return option, str(value), value
    value = draw(
        st.floats(low, min(high, LIMIT), allow_nan=False).filter(
            lambda v: _inside(v, low, low_in, high, high_in)
        )
    )
    return option, repr(value), value


class _ParseOnly(ConvNeXtCLI):
    """The command line's parse and checks before instantiation, without building the classes."""

    def instantiate_classes(self) -> None:
        pass


def _parse(option: str, text: str):
    """(the parsed config or None, exit code, the ``error:`` lines, whether a folder was created)."""
    root = Path(tempfile.mkdtemp()) / "runs"
    args = ["--config", RANGES[option][0], f"--{option}={text}", f"--trainer.default_root_dir={root}"]
    stderr = io.StringIO()
    config, code = None, None
    with mock.patch.object(sys, "argv", sys.argv[:1]), contextlib.redirect_stderr(stderr):
        try:
            config = _ParseOnly(args=args, run=False).config
        except SystemExit as exit_info:
            code = exit_info.code
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith("error:")]
    return config, code, errors, root.exists()


# No example database: nothing is written into the repository (.hypothesis/), and every run draws afresh.
QUICK = settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@QUICK
@given(outside_values())
def test_any_value_outside_an_options_range_is_one_error_line_naming_it(case):
    option, text = case
    config, code, errors, folder = _parse(option, text)
    assert code == 2 and len(errors) == 1 and option in errors[0], (text, errors)
    assert not folder


@settings(QUICK, max_examples=15)
@given(inside_values())
def test_any_value_inside_an_options_range_parses_to_that_value(case):
    option, text, value = case
    config, code, errors, folder = _parse(option, text)
    assert code is None and not errors, (text, errors)
    parsed = config
    for key in option.split("."):
        parsed = parsed[key]
    assert parsed == pytest.approx(value) and not folder
