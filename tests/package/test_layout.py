"""The house in rooms: imports between dmlight's folders point one way, and no module imports itself in a circle
(function-level imports included: a lazy import is still an arrow)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dmlight"
MAX_LINES = 420  # "about 400"


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The dmlight modules `path` imports, anywhere in it (`from dmlight.x import y` counts dmlight.x.y when that
    is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dmlight"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs or ({node.module} & known)
    return out


def room(module: str) -> str:
    """A module's folder (dmlight.perturbation.probe -> perturbation), or the top-level module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "dmlight"


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_module_imports_itself_in_a_circle():
    mods = modules()
    graph = {m: imports(p, set(mods)) - {m} for m, p in mods.items()}
    graph = {m: {t for t in ts if not m.startswith(t + ".") and t != "dmlight"} for m, ts in graph.items()}
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_the_folders_arrows_point_one_way():
    mods = modules()
    arrows: dict[str, set[str]] = {}
    for m, p in mods.items():
        for t in imports(p, set(mods)):
            if t != "dmlight" and room(t) != room(m):
                arrows.setdefault(room(m), set()).add(room(t))
    assert cycle(arrows) is None, " -> ".join(cycle(arrows))
    assert "report" not in arrows.get("tracking", set()) and "perturbation" not in arrows.get("training", set())


@pytest.mark.parametrize("module", sorted(modules()))
def test_modules_stay_readable(module):
    assert len(modules()[module].read_text().splitlines()) <= MAX_LINES


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
