"""Refusals through ``python main.py`` in a fresh interpreter, as a user meets them: exactly one ``error:`` line on
stderr (no traceback, no usage text, none of Lightning's start-up lines), exit code 2, and no folder.

The same refusals through ``cli_main`` (what ``main.py`` calls), each option and case on its own, are in
``tests/training/test_runs.py`` (evaluating without weights, the opt-in, a run name that is a path) and
``tests/training/test_option_ranges.py`` (every out-of-range option); a fresh interpreter costs ~10 s of imports,
so only what needs one is here: the entry point's own exit path, and the start-up lines a new process prints."""

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
