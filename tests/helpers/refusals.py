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
    ``error:`` line, ending stderr, no new ``version_N`` folder under ``root``, and no ``root`` if there was none
    (a refused run removes the empty folders it made). Returns the line."""
    before, root_existed = run_folders(root), Path(root).exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines, "nothing on stderr"
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], lines
    assert run_folders(root) == before, f"a refused run left {set(run_folders(root)) - set(before)}"
    assert root_existed or not Path(root).exists(), f"a refused run left the folder {root} it made"
    return lines[-1]
