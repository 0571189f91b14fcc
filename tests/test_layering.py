"""Imports point one way: tokenizer/ never imports earl; the library never imports the CLI or recipes;
the reward model never imports training, training never imports the benchmark runner, and the Emu3
loader never imports the editor it feeds. Function-level imports count (`ast.walk`)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> modules it must not import (prefix match)
FORBIDDEN = {
    "tokenizer": ["earl"],
    "earl.layout": ["earl.model", "earl.generate", "earl.train", "earl.cli"],
    "earl.shapes": ["earl.model", "earl.generate", "earl.train", "earl.cli", "earl.agents", "torch"],
    "earl.agents": ["earl.train", "earl.cli"],
    "earl.generate": ["earl.train", "earl.cli", "earl.rrm"],
    "earl.lean": ["earl.model", "earl.generate", "earl.train", "earl.cli"],
    "earl.model": ["earl.train", "earl.cli", "earl.generate"],
    "earl.train": ["earl.cli", "earl.rrm.rewardbench"],  # training never imports the benchmark runner
    "earl.verify": ["earl.model", "earl.generate", "earl.train", "earl.cli", "earl.serve"],
    "earl.rl": ["earl.train", "earl.cli"],
    "earl.rrm": ["earl.train", "earl.cli"],
    "earl.emu3": ["earl.model", "earl.train", "earl.cli"],  # the loader returns parts; UnifiedEditor assembles them
    "earl.emu3_original": ["earl.model", "earl.train", "earl.cli"],  # the same for BAAI's original format
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_imports_point_one_way():
    problems = []
    for f in list((ROOT / "earl").rglob("*.py")) + list((ROOT / "tokenizer").rglob("*.py")):
        mod = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        for owner, banned in FORBIDDEN.items():
            if mod == owner or mod.startswith(owner + "."):
                for imp in imports_of(f):
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
