"""The layering the README promises: each layer imports only the ones below it, and nothing
that analyses a trained run imports the trainer."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "camscope"

BASE = {"errors", "utils", "progress", "figures", "geometry", "folders", "scores", "__version__"}
LAYERS = [
    {"data"},
    {"models"},
    {"runs", "train"},
    {"evaluate", "explain"},
    {"probes", "predict"},
    {"labels"},  # screens a dataset with a backbone through the probes' feature extraction
    {"report", "serve"},
    {"study"},
    {"api", "cli"},
    {"camscope"},  # the package itself: camscope.load_run
]
LEVEL = {u: i for i, units in enumerate(LAYERS) for u in units}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "camscope"


def imports() -> dict[str, set[str]]:
    """Unit -> the camscope units it imports anywhere (top-level or inside functions)."""
    out: dict[str, set[str]] = {}
    for p in SRC.rglob("*.py"):
        rel = p.relative_to(SRC.parent).with_suffix("")
        unit = unit_of(".".join(rel.parts).removesuffix(".__init__"))
        got = out.setdefault(unit, set())
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("camscope"):
                names = [a.name for a in node.names] if node.module == "camscope" else [unit_of(node.module)]
                got.update(names)
            elif isinstance(node, ast.Import):
                got.update(unit_of(a.name) for a in node.names if a.name.startswith("camscope."))
        got.discard(unit)
    return out


def test_every_unit_has_a_layer():
    assert set(imports()) <= BASE | set(LEVEL), "a new module needs a place in LAYERS (and the README)"


def test_layers_import_only_what_lies_below():
    wrong = [
        f"{u} imports {v}"
        for u, vs in imports().items()
        for v in vs
        if v not in BASE and u not in BASE and LEVEL[v] >= LEVEL[u]
    ]
    assert not wrong, wrong


def test_base_modules_import_no_layer():
    wrong = [f"{u} imports {v}" for u, vs in imports().items() if u in BASE for v in vs if v not in BASE]
    assert not wrong, wrong


def test_analyses_never_import_the_trainer():
    g = imports()
    for u in ("evaluate", "explain", "probes", "serve", "predict", "runs", "report"):
        assert "train" not in g.get(u, set()), f"{u} imports train/"
