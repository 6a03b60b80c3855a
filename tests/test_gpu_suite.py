"""The prepared GPU measurement runs every step in its CPU dry run and prints its one table."""

import json

import pytest
from helpers.paths import ROOT
from helpers.processes import run_python


@pytest.mark.slow  # four subprocesses: the gpu tests' collection, two training benchmarks, the input pipeline
def test_gpu_suite_dry_run_runs_every_step_and_prints_the_table(tmp_path):
    out = tmp_path / "suite.json"
    done = run_python(
        [str(ROOT / "benchmarks" / "gpu_suite.py"), "--dry-run", "--json", str(out)], timeout=300
    )
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert steps["tests"]["status"] == 0 and "collected" in steps["tests"]["summary"]
    for mode in ("eager", "compiled"):
        result = steps["training"][mode]["result"]
        assert all(result[f"{path}_img_s"] > 0 for path in ("lightning", "bare", "timm"))
        assert result["lightning_over_bare"] > 0
    data = steps["data"]["result"]
    assert {(r["data"], r["workers"]) for r in data["results"]} == {
        (name, w) for name in ("jpeg-folder-224", "jpeg-folder-224-fast") for w in (0, 1)
    }
    assert data["stages"]["ratio"] > 0
    table = "\n".join(report["table"])
    assert "DRY RUN" in done.stdout and table in done.stdout
    for row in (
        "train img/s, lightning, compiled",
        "train lightning / bare, eager",
        "peak memory MiB, timm, eager",
        "cores per GPU at",
        "per core",
    ):
        assert row in table
