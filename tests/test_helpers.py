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
