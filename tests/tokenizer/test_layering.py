"""`tokenizer/` is its own package: codes are the contract, so it must never import `earl`."""

import ast
from pathlib import Path

TOKENIZER = Path(__file__).resolve().parents[2] / "tokenizer"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_tokenizer_never_imports_earl():
    files = sorted(TOKENIZER.rglob("*.py"))
    assert files, f"no Python files under {TOKENIZER}"
    for path in files:
        bad = sorted(m for m in imported_modules(path) if m == "earl" or m.startswith("earl."))
        assert not bad, f"{path.relative_to(TOKENIZER.parent)} imports {bad}; tokenizer/ must stay independent of earl"
