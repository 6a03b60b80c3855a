"""The throughput benchmarks' lightning path is the trainer ``python main.py fit`` builds: its callbacks (NaN
guard, step seeding, checkpoint policy, lr monitor) run in the timed window, and the ratio to the bare loop is
reported, per window (``train_throughput.py``) and step by step (``lightning_overhead.py``)."""

import sys

import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import train_throughput  # noqa: E402


@pytest.mark.slow  # two CLI builds and fits, three networks: 6 s on a quiet machine, a minute under load
def test_the_lightning_path_runs_main_py_fits_callbacks_and_the_ratio_is_reported(tmp_path):
    result = train_throughput.main(
        ["--model", "convnext_atto", "--image-size", "32", "--batch-size", "2", "--num-classes", "10"]
        + ["--steps", "2", "--warmup", "1", "--repeats", "1", "--log-every-n-steps", "1", "--hook-costs"]
        + ["--json", str(tmp_path / "bench.json")]
    )
    assert result["lightning_over_bare"] > 0 and result["ours_over_timm"] > 0
    hooks = result["lightning_hooks_ms_per_step"]
    for hook in (
        "NonFiniteLossGuard.on_before_optimizer_step",
        "StepSeeding.on_train_batch_start",
        "ResumableCheckpoint.on_train_batch_end",
        "LearningRateMonitor.on_train_batch_start",
        "ImageClassifier.log",
    ):
        assert hooks[hook] > 0, hook
    assert (tmp_path / "bench.json").is_file()


def test_the_step_by_step_overhead_alternates_the_two_paths_and_reports_milliseconds(tmp_path):
    import lightning_overhead

    result = lightning_overhead.main(
        ["--model", "convnext_atto", "--image-size", "32", "--batch-size", "2", "--num-classes", "10"]
        + ["--block", "2", "--rounds", "2", "--json", str(tmp_path / "overhead.json")]
    )
    assert result["steps"] == {
        "lightning": 3,
        "bare": 4,
    }  # the last Lightning step has no next start to end it
    assert result["paired_lightning_over_bare"] > 0 and len(result["bare_ms_per_step"]) == 4
    for summary in (result["median"], result["p10"]):
        assert summary["lightning_ms"] > 0 and summary["bare_ms"] > 0
        assert summary["overhead_ms"] == pytest.approx(summary["lightning_ms"] - summary["bare_ms"], abs=0.02)
    assert (tmp_path / "overhead.json").is_file()

    pooled = lightning_overhead.main(
        ["--pool", str(tmp_path / "overhead.json"), str(tmp_path / "overhead.json")]
    )
    assert pooled["runs"] == 2 and pooled["pooled"]["steps"] == {"lightning": 6, "bare": 8}
    assert pooled["median_over_runs"] == result["median"]["lightning_over_bare"]
