"""The prepared GPU measurement runs every step in its CPU dry run and prints its one table; the dry run's forked
steps report status, output and time-outs as subprocesses do."""

import importlib.util
import json
import os
import sys

import pytest
from helpers.paths import ROOT
from helpers.processes import run_python


def _gpu_suite():
    found = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


# The dry run: the gpu tests' collection, two training benchmarks and the input pipeline, each forked from the suite.
@pytest.mark.slow
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


def test_the_gpu_step_names_the_files_that_mark_a_test_gpu_in_every_part_of_the_suite():
    # Without a file pytest collects all of tests/: the dry run imported every test module (42 -> 35 s with them named).
    files = _gpu_suite().gpu_test_files()
    assert "tests/training/test_strategies.py" in files and "tests/tasks/test_segmentation.py" in files
    assert "tests/tasks/test_detection.py" not in files  # no gpu test there


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="the dry run forks only where os.fork exists")


@needs_fork
def test_a_forked_step_gets_its_arguments_environment_and_folder_and_reports_like_a_subprocess(tmp_path):
    suite = _gpu_suite()
    script = tmp_path / "step.py"
    script.write_text(
        "import os, pathlib, sys\n"
        "print('out', sys.argv[1:], os.environ['STEP_VALUE'], pathlib.Path.cwd())\n"
        "print('err', file=sys.stderr)\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    command = [sys.executable, str(script), "3"]
    forked = suite._in_fork(command, timeout=60, env={"STEP_VALUE": "v"})
    assert forked == suite._in_subprocess(command, timeout=60, env={"STEP_VALUE": "v"})
    assert forked == (3, f"out ['3'] v {ROOT}\nerr\n")
    assert suite._in_fork([sys.executable, "-m", "json.tool", str(script)], 60, None)[0] == 1  # -m, not JSON


@needs_fork
def test_a_forked_step_past_its_time_limit_is_stopped_and_reported(tmp_path):
    suite = _gpu_suite()
    script = tmp_path / "slow.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    status, output = suite._in_fork([sys.executable, str(script)], timeout=0.5, env=None)
    assert status == "timeout" and output == "started\n"
