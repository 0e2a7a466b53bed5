"""Dependencies point one way: waves <- executions <- (observability, concurrency)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each app may not import (the apps to its right, and for waves everything but itself).
FORBIDDEN = {
    "waves": {"executions", "observability", "concurrency"},
    "executions": {"observability", "concurrency"},
}


def imported_apps(path: Path) -> set[str]:
    """Top-level packages a module imports, wherever in the module the import is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("app", sorted(FORBIDDEN))
def test_app_imports_nothing_from_the_apps_that_depend_on_it(app):
    offending = {
        str(path.relative_to(ROOT)): sorted(imported_apps(path) & FORBIDDEN[app])
        for path in sorted((ROOT / app).rglob("*.py"))
    }
    assert {path: apps for path, apps in offending.items() if apps} == {}


@pytest.mark.parametrize(
    "app",
    [
        "waves",
        "executions",
    ],
)
def test_app_names_no_model_or_page_of_the_apps_that_depend_on_it(app):
    """No `apps.get_model("observability", ...)`, no "admin:observability_..." URL names."""
    offending = []
    for path in sorted((ROOT / app).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if any(
                    node.value == other
                    or node.value.startswith((f"{other}_", f"{other}.", f"admin:{other}_"))
                    for other in FORBIDDEN[app]
                ):
                    offending.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert offending == []


def test_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from executions.models import WaveTask\n    import observability.admin\n"
    )
    assert imported_apps(module) == {"executions", "observability"}
