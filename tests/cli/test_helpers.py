"""The test scaffolding's subprocess runner: what a failing or hanging ``python`` child tells the test."""

import os

import pytest
from helpers import TESTS, run_python


def test_a_child_past_its_timeout_fails_the_test_with_what_it_printed():
    with pytest.raises(AssertionError, match=r"(?s)ran past 3 s:.*started"):
        run_python(["-c", "import time; print('started', flush=True); time.sleep(60)"], timeout=3)


def test_a_failing_child_fails_the_test_with_its_exit_code_and_stderr_unless_check_is_off():
    with pytest.raises(AssertionError, match=r"(?s)exited 3:.*broken"):
        run_python(["-c", "import sys; print('broken', file=sys.stderr); sys.exit(3)"])
    assert run_python(["-c", "raise SystemExit(2)"], check=False).returncode == 2


def test_the_child_runs_single_threaded_and_finds_the_test_helpers():
    code = "import os, sys; print(os.environ['OMP_NUM_THREADS'], os.environ['EXTRA'], sys.path[1])"
    result = run_python(["-c", code], env={"EXTRA": "kept"})
    assert result.stdout.split() == ["1", "kept", str(TESTS)]  # sys.path[0] is '' for -c
    assert "EXTRA" not in os.environ  # the extra variable went to the child only


def test_tests_sharing_a_session_fixture_run_on_one_xdist_worker(tmp_path):
    """`make test`'s --dist loadgroup puts the users of a shared run on one worker (``xdist_groups.py``), so the
    run is made once. A pytest or pytest-xdist upgrade that drops the group (pytest 9.2 did: pytest-xdist#1386)
    would train the digits demo twice; this fails instead of the suite slowing down silently."""
    suite = tmp_path / "tests"
    suite.mkdir()
    (suite / "conftest.py").write_text(
        "import pytest\n"
        "from pathlib import Path\n"
        "from xdist_groups import add_shared_run_groups\n\n"
        "@pytest.hookimpl(tryfirst=True)\n"
        "def pytest_collection_modifyitems(config, items):\n"
        "    add_shared_run_groups(items, Path(__file__).parent)\n\n"
        "@pytest.fixture(scope='session')\n"
        "def shared_run():\n"
        "    return object()\n"
    )
    for name in "abcd":  # four modules: --dist loadgroup would otherwise spread them over both workers
        (suite / f"test_{name}.py").write_text(
            f"import os\n\ndef test_{name}(shared_run):\n    print('WORKER', os.environ['PYTEST_XDIST_WORKER'])\n"
        )
    command = ["-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-rA", "-q"]
    result = run_python([*command, "--rootdir", str(suite), str(suite)], timeout=120)
    workers = {line.split()[-1] for line in result.stdout.splitlines() if line.startswith("WORKER")}
    assert len(workers) == 1, result.stdout[-2000:]
