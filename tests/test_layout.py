"""The import rules of the design: leaves stay leaves, arrows point one way."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edge_runtime"
LEAVES = {"messages", "errors", "config"}
# Subpackage or module → the edge_runtime parts it may import.
ALLOWED = {
    "messages": set(),
    "errors": {"messages"},
    "config": {"errors", "messages"},
    "model": LEAVES | {"model"},
    "device": LEAVES | {"device"},
    "filters": LEAVES | {"filters"},
    "codec": LEAVES,
    "state": LEAVES,
    "systemd": set(),
    "health": set(),
    "logs": set(),
    "metrics": LEAVES,
    "storage": set(),
    "devices": {"storage"},
    "orchestrator": LEAVES | {"model", "state", "storage"},
    "pipeline": LEAVES
    | {"codec", "devices", "filters", "logs", "metrics", "model", "orchestrator"},
    "transports": LEAVES | {"codec", "devices", "transports", "state"},
    "ask": LEAVES,
    "doctor": LEAVES | {"device", "model"},
    "bench": LEAVES
    | {"device", "model", "bench", "filters", "orchestrator", "pipeline", "transports"},
}
EXPORT_ONLY = ("torch", "transformers", "optimum")
# Modules that run in the daemon must never need the export extra.
DAEMON_SIDE = ("model/runtime.py", "model/generate.py", "model/sampling.py", "model/tokenizer.py")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def part(module: str) -> str:
    return module.split(".")[1]


def test_parts_import_only_what_the_design_allows() -> None:
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if name not in ALLOWED:
            continue
        used = {part(m) for m in imports(path) if m.startswith("edge_runtime.")}
        assert used <= ALLOWED[name] | {name}, f"{path}: imports {used - ALLOWED[name]}"


def test_daemon_side_needs_no_torch() -> None:
    for relative in DAEMON_SIDE:
        used = imports(PACKAGE / relative)
        assert not {m for m in used if m.split(".")[0] in EXPORT_ONLY}, relative


def test_every_module_has_a_docstring() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text())), path
