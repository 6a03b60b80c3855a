"""Issue 14's three failures, through ``python main.py`` as a user runs it: evaluating without trained weights,
a setting that would train silently wrong, and a mistake in the command line itself. Each refusal is exactly one
``error:`` line (no traceback, no usage text), exit code 2, and no folder."""

import pytest
from helpers import DIGITS, QUIET, run_main


def _refused(args: list[str], root) -> str:
    result = run_main([*args, *QUIET, "--trainer.default_root_dir", str(root)], check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr and "usage:" not in result.stderr, (
        result.stderr
    )
    assert not root.exists()
    return errors[0]


def test_validate_without_weights_is_refused_in_one_sentence_saying_how_to_give_them(tmp_path):
    error = _refused(["validate", "--config", DIGITS], tmp_path / "runs")
    assert error.startswith("error: validate needs trained weights: give --ckpt_path"), error
    assert "--model.pretrained" in error and "--allow_untrained" in error


@pytest.mark.slow  # a real validation run; tests/training/test_runs.py drives the same opt-in through cli_main
def test_the_explicit_opt_in_evaluates_and_says_the_network_is_untrained(tmp_path):
    result = run_main(
        ["validate", "--config", DIGITS, "--allow_untrained=true", "--trainer.limit_val_batches=2", *QUIET]
        + ["--trainer.default_root_dir", str(tmp_path / "smoke")]
    )
    assert "validate on an untrained, randomly initialised network (--allow_untrained)" in result.stderr


def test_a_layer_decay_that_would_train_silently_wrong_is_refused_before_a_folder_exists(tmp_path):
    error = _refused(["fit", "--config", DIGITS, "--model.init_args.layer_decay", "-1"], tmp_path / "runs")
    assert error.startswith("error: model.init_args.layer_decay: not of type LeftOpenUnitInterval:"), error
    assert "v>0 and v<=1" in error and error.endswith("--help lists the options")


def test_a_run_name_that_is_a_path_is_one_line_and_nothing_is_written(tmp_path):
    error = _refused(["fit", "--config", DIGITS, "--run_name", "../elsewhere"], tmp_path / "runs")
    assert error.startswith("error: --run_name '../elsewhere' is not a plain name"), error
    assert not (tmp_path / "elsewhere").exists()


def test_a_mistake_found_after_the_trainer_is_built_prints_its_error_line_alone(tmp_path):
    """Before: Lightning's "Seed set to 0", "GPU available ..." and "TPU available ..." came first. Here the mistake
    (segmentation batches of one image) is found in set-up, after the Trainer exists; those lines are held until a
    run starts and dropped when it is refused."""
    from helpers import tiny_segmentation

    args = [
        "fit",
        *tiny_segmentation(tmp_path / "scenes", tmp_path / "runs"),
        "--data.init_args.batch_size=1",
    ]
    result = run_main(args, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout.strip() == ""
    assert result.stderr.strip().splitlines() == [
        "error: data.init_args.batch_size 1 cannot train UperNet: the BatchNorm after its pyramid pooling sees "
        "one value per channel on a 1x1 map; use batch_size 2 or more (or several GPUs with "
        "trainer.sync_batchnorm true)"
    ]
    started = run_main(["fit", *tiny_segmentation(tmp_path / "scenes", tmp_path / "runs")])
    assert "GPU available" in started.stdout + started.stderr  # a run that starts still shows them
