"""No test names a path outside the repository, so that a clone with nothing beside it passes.

Every file under tests/ is read for the ways a path leaves the checkout: a `..` component, a path built
from `__file__` that climbs above the repository root (`parents[N]`, a `.parent` chain, `os.path.dirname`,
through a variable too), an absolute path under a work, home or temporary directory, and the user's home
(a tilde path or the home lookup). A test that needs files writes them under pytest's `tmp_path`; data the repository
ships (recipes/, checkpoints/) is reached from the root, never above it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE_DIRS = ("work", "root", "home", "tmp", "mnt", "Users", "scratch", "var/tmp")
ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:" + "|".join(OUTSIDE_DIRS) + r")(?=[/\"'\s`)]|$)")
UP = re.compile(r"(?<![.\w])\.\.(?=[/\\])|(?<=[/\\])\.\.(?![.\w])")
HOME = re.compile(r"(?<![\w.])~(?=[/\\])|Path\.home\(|expanduser\(")
PARENT_STEP = "." * 2  # spelled so that this file does not name the step it looks for


def _up_levels(node: ast.AST, names: dict[str, int]) -> int | None:
    """How many directories above the file itself `node` points, when it is built from `__file__`
    (None when it is not): `Path(__file__)` is 0, each `.parent` or `os.path.dirname` one more,
    `.parents[k]` k + 1 more; joining a name goes one down (a name not spelled out counts as one), a
    parent step one up."""
    if isinstance(node, ast.Name):
        return 0 if node.id == "__file__" else names.get(node.id)
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        inner = _up_levels(node.value, names)
        return None if inner is None else inner + 1
    if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents"
            and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int)):
        inner = _up_levels(node.value.value, names)
        return None if inner is None else inner + node.slice.value + 1
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        inner = _up_levels(node.left, names)
        if inner is None:
            return None
        if not (isinstance(node.right, ast.Constant) and isinstance(node.right.value, str)):
            return inner - 1
        steps = [c for c in re.split(r"[/\\]", node.right.value) if c not in ("", ".")]
        return inner + sum(1 if c == PARENT_STEP else -1 for c in steps)
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("resolve", "absolute"):
            return _up_levels(func.value, names)
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("Path", "abspath", "realpath") and node.args:
            return _up_levels(node.args[0], names)
        if name == "dirname" and node.args:
            inner = _up_levels(node.args[0], names)
            return None if inner is None else inner + 1
    return None


def _scope_nodes(scope: ast.AST):
    """The nodes of one scope, not descending into the functions and classes defined in it."""
    for child in ast.iter_child_nodes(scope):
        yield child
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            yield from _scope_nodes(child)


def _climbs_above_root(scope: ast.AST, depth: int, outer: dict[str, int]) -> list[str]:
    """Paths built from `__file__` that reach above the root (`depth` levels above the file), in
    `scope` and the scopes inside it; `outer` holds the enclosing scopes' names built from `__file__`."""
    names = dict(outer)
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        for arg in ast.walk(scope.args):
            if isinstance(arg, ast.arg):
                names.pop(arg.arg, None)
    nodes = list(_scope_nodes(scope))
    for node in nodes:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            level = _up_levels(node.value, names)
            if level is None:
                names.pop(node.targets[0].id, None)
            else:
                names[node.targets[0].id] = level
    found = []
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            found += _climbs_above_root(node, depth, names)
        level = _up_levels(node, names) if isinstance(node, ast.expr) else None
        if level is not None and level > depth:
            found.append(f"line {node.lineno}: {ast.unparse(node)} is {level - depth} level(s) above the repository")
    return found


def path_escapes(relpath: str, text: str) -> list[str]:
    """Each way `text` (the file at `relpath` under the root) names a path outside the repository."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        for pattern, what in ((UP, "a '..' path component"), (ABSOLUTE, "an absolute path outside the checkout"),
                              (HOME, "the user's home directory")):
            if pattern.search(line):
                found.append(f"line {n}: {what}: {line.strip()}")
    if relpath.endswith(".py"):
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and PARENT_STEP in re.split(
                    r"[/\\]", node.value):
                found.append(f"line {node.lineno}: a '..' path component: {node.value!r}")
        found += _climbs_above_root(tree, len(Path(relpath).parts), {})
    return found


def test_no_file_under_tests_names_a_path_outside_the_repository():
    files = [p for p in sorted((ROOT / "tests").rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    assert len(files) > 50  # the scan saw the suite
    problems = {}
    for p in files:
        rel = p.relative_to(ROOT).as_posix()
        found = path_escapes(rel, p.read_text(encoding="utf-8", errors="replace"))
        if found:
            problems[rel] = found
    assert not problems, "tests must not read outside the repository (write fixtures under tmp_path):\n" + "\n".join(
        f"{rel}: {msg}" for rel, msgs in problems.items() for msg in msgs)


def test_the_scan_finds_each_kind_of_escape_and_passes_paths_inside():
    up = "." * 2
    escapes = [
        'SHARED = Path(__file__).resolve().parents[3] / "sha" "red" / "benchmarks"',
        'ROOT = Path(__file__).resolve().parents[2]\nDATA = ROOT.parent / "data"',
        'HERE = Path(__file__).parent\nDATA = HERE.parent.parent.parent / "data"',
        'DATA = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))',
        f'DATA = Path(__file__).resolve().parents[2] / "{up}" / "shared"',
        f'prompts = load("{up}/shared/benchmarks/gedit")',
        f'DATA = os.path.join(HERE, "{up}")',
        'images = Path("/' + 'work/shared/images")',
        'cache = "/' + 'root/.cache/earl"',
        'run(["earl", "eval", "--out", "/' + 'tmp/out"])',
        'home = Path' + '.home() / "data"',
        'data = "~' + '/datasets/gedit"',
        'ROOT = Path(__file__).resolve().parents[2]\ndef test_x():\n    data = ROOT.parent / "data"',
    ]
    for code in escapes:
        assert path_escapes("tests/benchmarks/test_x.py", code), code
    inside = [
        'ROOT = Path(__file__).resolve().parents[2]\nBUNDLE = ROOT / "checkpoints" / "shapes-editor"',
        'RECIPES = Path(__file__).parent.parent.parent / "recipes"',
        'out = tmp_path / "out"\nsub = out.parent / "other"',
        'url = "http://127.0.0.1:8000/home/index"',
        '"""Two runs both called .../model are an error."""',
        'ROOT = Path(__file__).resolve().parents[2]\ndef write(ROOT):\n    (ROOT / "a" / "b").parent.mkdir()',
        'def f():\n    root = Path(__file__).resolve().parents[2]\ndef g(root):\n    return root.parent',
    ]
    for code in inside:
        assert not path_escapes("tests/benchmarks/test_x.py", code), code
