"""README.md's "Package layout" section names every sub-package of ``convnext_pl`` and every module of the
packages it lists file by file, so the tree a reader is shown is the tree that is there."""

import re

from helpers import ROOT

PACKAGE = ROOT / "convnext_pl"
LISTED_BY_FILE = ("models", "weights", "tasks", "training")  # the others are described a folder at a time


def _layout_section() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Package layout", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```\n(.*?)```", section, re.S).group(1)


def test_the_readme_layout_names_every_sub_package_and_module():
    layout = _layout_section()
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    missing = [f"{name}/" for name in packages if f"{name}/" not in layout]
    for name in LISTED_BY_FILE:
        modules = sorted(p.name for p in (PACKAGE / name).glob("*.py") if not p.name.startswith("__"))
        missing += [f"{name}/{m}" for m in modules if not re.search(rf"\b{re.escape(m)}\b", layout)]
    assert not missing, f"README.md's package layout does not name {missing}"
