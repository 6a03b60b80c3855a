"""The one check every refusal test makes: exit code 2, exactly one ``error:`` line (the last one on stderr),
and no run folder left behind."""

from pathlib import Path

import pytest

from convnext_pl.training.cli import cli_main


def run_folders(root: str | Path) -> list[Path]:
    """Every ``version_N`` folder under ``root`` (a run's ``--trainer.default_root_dir``)."""
    return sorted(Path(root).rglob("version_*"))


def refused(args: list[str], capsys, root: str | Path) -> str:
    """Run ``cli_main(args)`` and assert it refused the way every mistake is refused: ``SystemExit(2)``, one
    ``error:`` line, ending stderr, and no new ``version_N`` folder under ``root``. Returns the line."""
    before = run_folders(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines, "nothing on stderr"
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], lines
    assert run_folders(root) == before, f"a refused run left {set(run_folders(root)) - set(before)}"
    return lines[-1]
