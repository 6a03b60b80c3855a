"""xdist groups from the fixtures a test uses: the users of one shared run go to one worker of `make test`.

Kept apart from ``conftest.py`` (and free of torch) so ``tests/cli/test_helpers.py`` can run it in a small suite of its
own, which proves the grouping still reaches pytest-xdist after an upgrade of either.
"""

import inspect
from pathlib import Path

import pytest


def _shared_run_group(item, tests_dir: Path) -> str | None:
    """The xdist group of a test that uses a shared run: a session- or module-scoped fixture of this suite that
    returns a value (a generator fixture such as ``one_torch_thread`` only sets something up). Its users go to one
    worker of `make test` (``--dist loadgroup``), so the run is made once; a fixture built on another
    (``digits_onnx`` on ``digits_ckpt``) groups with the one it builds on."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    shared = {}
    for name in item.fixturenames:
        definitions = info.name2fixturedefs.get(name)
        if not definitions:
            continue
        fixture = definitions[-1]
        if (
            fixture.scope in ("session", "module")
            and not inspect.isgeneratorfunction(fixture.func)
            and str(getattr(fixture.func, "__code__", None) and fixture.func.__code__.co_filename).startswith(
                str(tests_dir)
            )
        ):
            shared[name] = fixture
    if not shared:
        return None
    used_by_others = {arg for fixture in shared.values() for arg in fixture.argnames}
    name = sorted(shared, key=lambda n: (n not in used_by_others, n))[0]
    return name if shared[name].scope == "session" else f"{item.module.__name__}::{name}"


def add_shared_run_groups(items: list, tests_dir: Path) -> None:
    """Mark each test that uses a shared run (see :func:`_shared_run_group`) with its ``xdist_group``, unless it
    has one. Call it from a ``tryfirst`` ``pytest_collection_modifyitems``: xdist's worker reads the marks there."""
    for item in items:
        group = _shared_run_group(item, tests_dir)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
