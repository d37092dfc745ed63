"""Package layering: which sub-packages of edit_runner may import which (read with ``ast``, no imports run).

* ``editing/`` never imports ``edit_runner.evaluation`` (both use the shared scorer in ``models/``);
* ``data/`` never imports ``edit_runner.models`` (cache paths live in ``edit_runner.paths``);
* ``evaluation/`` never imports ``edit_runner.reporting`` (reporting reads evaluation's rows).

Every import statement counts, including those inside functions and relative ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "edit_runner"

RULES = (
    ("editing", "edit_runner.evaluation"),
    ("data", "edit_runner.models"),
    ("evaluation", "edit_runner.reporting"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module ``source`` (the text of ``module``) imports, at any depth.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule); relative imports
    are resolved against ``module``'s package.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            anchor = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _violates(name: str, forbidden: str) -> bool:
    return name == forbidden or name.startswith(forbidden + ".")


def test_import_collector_sees_local_relative_and_from_imports():
    source = (
        "import os\n"
        "from edit_runner import evaluation\n"
        "from . import keys\n"
        "from ..models.scoring import score_targets\n"
        "def f():\n"
        "    import edit_runner.reporting.plots as plots\n"
        "    class C:\n"
        "        def g(self):\n"
        "            from edit_runner.data.record import EditRecord\n"
    )
    found = imported_modules(source, "edit_runner.editing.neighbors")
    assert found == {
        "os",
        "edit_runner",
        "edit_runner.evaluation",
        "edit_runner.editing",
        "edit_runner.editing.keys",
        "edit_runner.models.scoring",
        "edit_runner.models.scoring.score_targets",
        "edit_runner.reporting.plots",
        "edit_runner.data.record",
        "edit_runner.data.record.EditRecord",
    }
    assert imported_modules("from .tasks import get_task\n", "edit_runner.evaluation.downstream", True) == {
        "edit_runner.evaluation.downstream.tasks",
        "edit_runner.evaluation.downstream.tasks.get_task",
    }
    assert _violates("edit_runner.evaluation", "edit_runner.evaluation")
    assert _violates("edit_runner.evaluation.scoring", "edit_runner.evaluation")
    assert not _violates("edit_runner.evaluation_extra", "edit_runner.evaluation")


@pytest.mark.parametrize(("subpackage", "forbidden"), RULES)
def test_layering(subpackage: str, forbidden: str):
    files = sorted((PACKAGE_ROOT / subpackage).rglob("*.py"))
    assert len(files) >= 3, f"expected the modules of {PACKAGE_ROOT / subpackage}"
    offenders = []
    for path in files:
        module = _module_name(path)
        names = imported_modules(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
        offenders += [f"{path.relative_to(PACKAGE_ROOT)} imports {n}" for n in sorted(names) if _violates(n, forbidden)]
    assert not offenders, "\n".join(offenders)
