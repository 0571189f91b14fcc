"""Imports point one way. The module graph (earl/ and tokenizer/, function-level imports included) has
no circle; every earl module sits in a layer of `earl.LAYERS` and imports only from its own layer or
lower ones; and a few rules inside a layer: tokenizer/ never imports earl, ShapesEdit never imports
torch, the Emu3 loaders and the lean forward never import the editor they feed, and training never
imports the reward-model benchmarks."""

import ast
from pathlib import Path

from earl import LAYERS

ROOT = Path(__file__).resolve().parents[1]

# module -> what it must not import (prefix match), where the layer table says nothing
FORBIDDEN = {
    "tokenizer": ["earl"],
    "earl.shapes": ["torch"],
    "earl.lean": ["earl.model"],
    "earl.emu3": ["earl.model"],  # the loader returns parts; UnifiedEditor assembles them
    "earl.emu3_original": ["earl.model"],  # the same for BAAI's original format
    "earl.train": ["earl.rrm.rewardbench", "earl.rrm.editreward_bench"],  # training never imports a benchmark
}


def find_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of earl/ and tokenizer/ (a package by its own name)."""
    mods = {}
    for f in sorted((ROOT / "earl").rglob("*.py")) + sorted((ROOT / "tokenizer").rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


MODULES = find_modules()


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name `module` imports anywhere in its file, relative imports resolved.
    `from pkg import a, b` names pkg.a and pkg.b when both are modules (the package itself is then
    not needed), else pkg too."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names}
            names |= subs if subs <= MODULES.keys() else subs | {base}
    return names


def owning_module(name: str) -> str | None:
    """The module of earl/ or tokenizer/ that `name` lies in (itself, or the nearest package above)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for mod, path in MODULES.items():
        deps = {owning_module(n) for n in imported_names(mod, path)}
        graph[mod] = {d for d in deps if d and d != mod}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds a circle."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on_stack.discard(comp[-1])
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> int | None:
    """Index of the layer whose longest prefix covers `module` (0 = bottom), None if no layer does."""
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS.values()):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


# `earl` itself imports nothing: it loads its entry points by name on first use (`earl.__getattr__`).
LAYERED = [m for m in MODULES if m != "earl"]


def test_the_graph_sees_function_level_and_submodule_imports():
    graph = import_graph()
    assert "earl.kernels.attention" in graph["earl.kernels.hf"]  # imported inside a function only
    assert "earl.text" in graph["earl.layout"] and "earl" not in graph["earl.layout"]  # `from earl import text`


def test_relative_imports_resolve(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from . import sampling\n    from ..layout import EditLayout\n")
    assert imported_names("earl.generate.x", f) == {"earl.generate.sampling", "earl.layout", "earl.layout.EditLayout"}


def shortest_circle(start: str, graph: dict[str, set[str]]) -> list[str]:
    """The shortest path of imports from `start` back to itself (breadth first), for the message."""
    came_from, frontier = {}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    return []


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert shortest_circle("a", graph) == ["a", "b", "c", "a"]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph = import_graph()
    found = [f"{len(c)} modules, e.g. " + " -> ".join(shortest_circle(c[0], graph)) for c in circles(graph)]
    assert not found, "import circles:\n" + "\n".join(found)


def test_every_module_has_a_layer():
    missing = [m for m in LAYERED if layer_of(m) is None]
    assert not missing, f"modules in no layer: {missing}; add each to the right layer of LAYERS in earl/__init__.py"


def test_every_layer_entry_names_modules_that_exist():
    stale = [p for prefixes in LAYERS.values() for p in prefixes if not any(m == p or m.startswith(p + ".") for m in MODULES)]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_the_docstring_names_every_layer():
    import earl

    assert all(f"    {name} " in earl.__doc__ for name in LAYERS), "earl/__init__.py's docstring and LAYERS differ"


def test_imports_point_down_the_layers():
    names = list(LAYERS)
    graph = import_graph()
    upward = [f"{m} ({names[layer_of(m)]}) imports {d} ({names[layer_of(d)]})"
              for m in LAYERED for d in sorted(graph[m])
              if d != "earl" and layer_of(d) is not None and layer_of(m) is not None and layer_of(d) > layer_of(m)]
    assert not upward, "imports pointing up the layers of earl.LAYERS:\n" + "\n".join(upward)


def test_rules_inside_the_layers_hold():
    problems = []
    for mod, path in MODULES.items():
        for owner, banned in FORBIDDEN.items():
            if mod == owner or mod.startswith(owner + "."):
                for imp in sorted(imported_names(mod, path)):
                    if any(imp == b or imp.startswith(b + ".") for b in banned):
                        problems.append(f"{mod} imports {imp}")
    assert not problems, problems


GPU_MACHINE_LACKS = ["trl", "deepspeed", "datasets", "vector_quantize_pytorch"]


def test_generation_and_benchmarks_import_without_training_only_packages():
    """The lent GPU machine has torch, transformers and triton but not these; the sampler, the lean
    forward, the kernels and `earl bench` must import there, and building a VQ tokenizer says what is
    missing. Run in a subprocess where each of them fails to import."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        f"for m in {GPU_MACHINE_LACKS!r}: sys.modules[m] = None\n"
        "import earl.cli, earl.generation_bench, earl.generate, earl.lean, earl.kernels.timing, earl.kernels.hf, tokenizer\n"
        "from tokenizer import VQConfig, VQTokenizer\n"
        "try:\n"
        "    VQTokenizer(VQConfig())\n"
        "except ImportError as e:\n"
        "    assert 'vector-quantize-pytorch' in str(e), e\n"
        "    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused"


def test_the_entry_points_import_from_the_top_level_package_without_loading_torch():
    import subprocess
    import sys

    code = ("import sys, earl\n"
            "assert 'torch' not in sys.modules, 'import earl loaded torch'\n"
            "from earl import AgentPipeline, EditPipeline, UnifiedEditor\n"
            "import earl.agents.pipeline, earl.model, earl.pipeline\n"
            "assert EditPipeline is earl.pipeline.EditPipeline and AgentPipeline is earl.agents.pipeline.AgentPipeline\n"
            "assert UnifiedEditor is earl.model.UnifiedEditor\n"
            "try:\n    earl.NoSuchThing\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit('no AttributeError')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
