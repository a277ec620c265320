"""The public surface and the package's shape: ``__all__``, a light ``import nanscope``, one-way imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nanscope

SRC = Path(nanscope.__file__).parent
#: lower layers first; a module may import from its own layer and the ones before it (docs/how-it-works.md)
LAYERS = [
    ("report", "curves"),
    ("localize",),
    ("detect",),
    ("recover",),
    ("watching",),
    ("cli", "demo", "integrations", "preflight"),
]
SHARED = {"errors", "_atomic", "_rank", "_tree"}  # leaf helpers every layer may use


def test_public_api_is_exactly_all():
    import nanscope.cli.run  # noqa: F401  (importing every layer must not shadow the public names)
    import nanscope.watching.probes as probes  # a dotted import through the package works

    assert probes.__name__ == "nanscope.watching.probes"

    packages = {
        "cli",
        "curves",
        "demo",
        "detect",
        "errors",
        "integrations",
        "localize",
        "preflight",
        "recover",
        "report",
        "watching",
    }
    public = {n for n in dir(nanscope) if not n.startswith("_")} - packages
    assert sorted(nanscope.__all__) == nanscope.__all__
    assert public | {"__version__"} == set(nanscope.__all__)
    assert callable(nanscope.watch) and nanscope.watch.__module__ == "nanscope.watching.watcher"


def test_import_nanscope_loads_no_optional_extra():
    code = (
        "import sys, nanscope, nanscope.cli\n"
        "extras = ['rich', 'matplotlib', 'tensorboard', 'numpy', 'lightning', 'transformers', 'accelerate']\n"
        "print(','.join(m for m in extras if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.strip().split(",")) - {""}
    # torch itself imports numpy when it is installed; nanscope adds none of the others
    assert loaded <= {"numpy"}, loaded


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if module.startswith("nanscope.") and module.count(".") >= 1 else None
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    return None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [m for m in found if m.startswith("nanscope.")]


def test_imports_go_one_way_between_layers():
    wrong = []
    for path in SRC.rglob("*.py"):
        here = "nanscope." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        mine = _layer(here)
        if mine is None:
            continue
        for target in _imports(path):
            theirs = _layer(target)
            if target.split(".")[1] in SHARED or theirs is None:
                continue
            if theirs > mine:
                wrong.append(f"{here} imports {target}")
    assert not wrong, "\n".join(wrong)
