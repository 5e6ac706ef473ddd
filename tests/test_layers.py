"""The import graph reads top-down: no module imports a layer above its own (recstream/__init__.py lists them).

Parsed from the source (every ``import``, also inside functions), so a lazy import that points up fails too.
Two packages of one layer never import each other: streams and serving meet only in Redis, the event log
and the store are independent clients.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"recstream": REPO / "recstream", "recstream.models": REPO / "models"}
FOLDERS |= {f"recstream.{name}": REPO / name for name in ("streams", "serving")}
LAYERS = {
    "contracts": 0,
    "runtime": 0,
    "models": 1,
    "eventlog": 2,
    "store": 2,
    "client": 2,
    "streams": 3,
    "serving": 3,
    "jobs": 4,
    "sim": 5,
    "shell": 6,
}


def modules() -> dict[str, Path]:
    """Every module of the package under its import name (folders mapped as pyproject.toml maps them)."""
    found: dict[str, Path] = {}
    for root_name, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((root_name, *parts)).removesuffix(".__init__")
            found.setdefault(name, path)
    return found


def imported(path: Path) -> set[str]:
    """Absolute names this file imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer(name: str) -> str | None:
    """``recstream.jobs.training`` → ``jobs``; None for the root package and anything not ours."""
    parts = name.split(".")
    return parts[1] if parts[0] == "recstream" and len(parts) > 1 and parts[1] in LAYERS else None


MODULES = modules()


def test_every_module_belongs_to_a_layer():
    assert {layer(name) for name in MODULES if name != "recstream"} == set(LAYERS)
    assert [name for name in MODULES if name != "recstream" and layer(name) is None] == []


def violations(name: str, path: Path) -> list[str]:
    """What module ``name`` (source at ``path``) imports from a layer above its own or beside it."""
    own = layer(name)
    if own is None:
        return []
    return [
        target
        for target in sorted(imported(path))
        if (other := layer(target)) is not None and other != own and LAYERS[other] >= LAYERS[own]
    ]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_points_up_or_sideways(name):
    assert violations(name, MODULES[name]) == [], f"{name} imports from its own layer's neighbour or above"


def test_no_generic_top_level_import_names_remain():
    """``models``, ``streams`` and ``serving`` exist only as ``recstream.*``; a bare import would load a second copy."""
    bare = {
        f"{name}: {target}"
        for name, path in MODULES.items()
        for target in imported(path)
        if target.split(".")[0] in {"models", "streams", "serving"}
    }
    assert bare == set()


def test_bench_is_a_package_that_neither_edits_sys_path_nor_imports_tests():
    bench = REPO / "bench"
    assert (bench / "__init__.py").is_file()
    for path in bench.glob("*.py"):
        assert "sys.path" not in path.read_text(), path.name
        assert not any(t.split(".")[0] == "tests" for t in imported(path)), path.name


def test_the_checker_reports_an_upward_a_sideways_and_a_lazy_import(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text(
        "from recstream.models import als\n"
        "import recstream.serving.app\n"
        "def later():\n"
        "    from recstream.shell import infra\n"
    )
    assert violations("recstream.streams.bad", source) == [
        "recstream.serving.app",
        "recstream.shell",
        "recstream.shell.infra",
    ]
    assert violations("recstream.shell.bad", source) == []
