"""Running ``main.py`` (or ``python -m ...``) as a user does: a fresh interpreter from the repository root."""

import os
import subprocess
import sys

from .paths import ROOT, TESTS

_LAUNCH_VARIABLES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
)


# tests/ (the helpers) and each part's folder (tests/training ...), so a child finds a callback defined in a test
# module by its module name (``test_strategies.RankReport``), as pytest's own imports do.
_TEST_FOLDERS = [
    str(TESTS),
    *(str(p) for p in sorted(TESTS.iterdir()) if p.is_dir() and any(p.glob("test_*.py"))),
]


def run_python(args: list[str], *, timeout: float = 300, check: bool = True, env: dict | None = None):
    """``python ARGS`` from the repository root; returns the ``CompletedProcess`` (text output captured).

    The child runs single-threaded (``OMP_NUM_THREADS=1``: on a shared 2-core machine OpenMP threads of parallel
    tests spin-wait on each other) and finds ``tests/`` and its parts on ``PYTHONPATH``, so test callbacks can be named by class
    path (``helpers.callbacks.SignalAtStep``). ``env`` adds or overrides variables. With ``check`` a non-zero exit
    fails the test with the output's tail; a run past ``timeout`` seconds fails it with what it printed so far.
    """
    child_env = {
        # A Trainer built in this test process for several devices leaves Lightning's MASTER_PORT (and friends)
        # in os.environ; a child that inherited them would listen on that port while it may still be taken, and
        # the DDP launch fails with EADDRINUSE. Each child picks its own free port instead.
        **{key: value for key, value in os.environ.items() if key not in _LAUNCH_VARIABLES},
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [*_TEST_FOLDERS, os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    command = [sys.executable, *args]
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=child_env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as timeout_error:
        raise AssertionError(
            f"python {' '.join(args)} ran past {timeout} s:\n{_text(timeout_error.stdout)[-3000:]}"
            f"{_text(timeout_error.stderr)[-5000:]}"
        ) from None
    if check:
        assert result.returncode == 0, (
            f"python {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-5000:]}"
        )
    return result


def run_main(args: list[str], **kwargs):
    """``python main.py ARGS``; keyword arguments as for :func:`run_python`."""
    return run_python(["main.py", *args], **kwargs)


def _text(output: bytes | str | None) -> str:
    # TimeoutExpired carries bytes even when the run asked for text.
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
