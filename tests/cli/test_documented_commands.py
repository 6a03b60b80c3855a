"""Every ``main.py`` command written in README.md, docs/, the Makefile, the configs' comments and the notebooks
resolves with ``--print_config``: a renamed option or a moved config file breaks this test, not a reader's run.

Resolving only parses (no network, no data, no GPU), so commands naming ImageNet folders or GPU pieces are checked
too. Placeholders a reader replaces (``$RESUME``, ``...``) are dropped.
"""

import json
import re
import shlex
from pathlib import Path

import pytest
from helpers import CONFIGS, NOTEBOOKS, ROOT

from convnext_pl.training.cli import cli_main

SOURCES = [
    ROOT / "README.md",
    ROOT / "Makefile",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted(CONFIGS.rglob("*.yaml")),
    *sorted(NOTEBOOKS.glob("*.ipynb")),
]
# `main.py <subcommand> <args>`, ending where the shell command or the prose around it ends.
COMMAND = re.compile(r"main\.py ((?:fit|validate|test|predict)\b[^\n`|;&()\"#]*)")


def _text(path: Path) -> str:
    text = path.read_text()
    if path.suffix == ".ipynb":
        text = "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
    return text.replace("\\\n", " ")  # shell line continuations


def documented_commands() -> list[tuple[str, list[str]]]:
    found = {}
    for path in SOURCES:
        for match in COMMAND.finditer(_text(path)):
            args = [arg for arg in shlex.split(match.group(1)) if not arg.startswith("$") and arg != "..."]
            args = [arg for arg in args if arg not in ("--print_config", "--help")]
            if "--config" in args:  # not a bare "main.py fit" in prose
                found.setdefault(" ".join(args), (str(path.relative_to(ROOT)), args))
    return sorted(found.values())


COMMANDS = documented_commands()


def test_the_documents_hold_the_commands_this_test_checks():
    sources = {source for source, _ in COMMANDS}
    assert {"README.md", "Makefile", "docs/scaling.md", "notebooks/02_quickstart.ipynb"} <= sources
    assert len(COMMANDS) > 40


@pytest.mark.parametrize(("source", "args"), COMMANDS, ids=[" ".join(args) for _, args in COMMANDS])
def test_every_documented_command_resolves(source, args, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # documented commands run from the repository root
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, f"{source}: main.py {' '.join(args)}\n{captured.err}"
    assert "\nmodel:\n  class_path: convnext_pl." in captured.out  # the task's LightningModule, by name
