"""The tests' layout stays as the README says: every test module in a kind's folder, shared
helpers in tests/support/ (importable, written once), and conftest.py files for fixtures.

A test module that imports another one runs that module's fixtures and helpers wherever it
is imported (and pytest may collect its tests twice); a test_*.py left directly in tests/
has no kind. Both checks read the files as text, so they cost nothing to run.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import ROOT

TESTS = ROOT / "tests"
KINDS = ("unit", "component", "e2e")


def modules() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def is_test_module(name: str) -> bool:
    """``tests.unit.test_state``, ``tests.conftest``: modules no other module may import."""
    last = name.rsplit(".", 1)[-1]
    return name.startswith("tests.") and (last.startswith("test_") or last == "conftest")


def imported(tree: ast.Module) -> list[str]:
    """Every module a file imports, ``from package import module`` included."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_no_test_module_sits_directly_in_tests() -> None:
    loose = sorted(p.name for p in TESTS.glob("test_*.py"))
    assert loose == [], f"move these into tests/{{{','.join(KINDS)}}}/: {loose}"


def test_every_test_module_is_in_a_kinds_folder() -> None:
    outside = [
        str(p.relative_to(TESTS))
        for p in TESTS.rglob("test_*.py")
        if p.relative_to(TESTS).parts[0] not in KINDS
    ]
    assert outside == []


def test_no_module_imports_a_test_module() -> None:
    wrong = {
        str(path.relative_to(TESTS)): found
        for path in modules()
        if (
            found := sorted({n for n in imported(ast.parse(path.read_text())) if is_test_module(n)})
        )
    }
    assert wrong == {}, f"put what these use from test modules in tests/support/: {wrong}"


def test_conftest_files_hold_fixtures_only() -> None:
    helpers = []
    for conftest in TESTS.rglob("conftest.py"):
        for node in ast.parse(conftest.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                decorators = [ast.unparse(d) for d in node.decorator_list]
                if not any(d.startswith("pytest.fixture") for d in decorators):
                    helpers.append(f"{conftest.relative_to(TESTS)}: {node.name}")
            elif isinstance(node, ast.ClassDef):
                helpers.append(f"{conftest.relative_to(TESTS)}: class {node.name}")
    assert helpers == [], "helpers belong in tests/support/"


def test_the_checks_see_a_test_module_imported() -> None:
    """The import check is not vacuous: it catches both spellings of such an import."""
    tree = ast.parse(
        "from tests.unit.test_state import x\nfrom tests.e2e import test_top\nimport tests.conftest"
    )
    assert [n for n in imported(tree) if is_test_module(n)] == [
        "tests.unit.test_state",
        "tests.e2e.test_top",
        "tests.conftest",
    ]
