"""earl: autoregressive image editing trained with SFT, chain-of-thought SFT and RL on verifier rewards.

Layering: every module belongs to one layer of `LAYERS` below, and imports only from its own layer or
lower ones, function-level imports included; no two modules import each other, directly or round a
circle. tests/test_layering.py holds both lines and fails on a module the table does not cover.
Bottom first:
    foundation    errors, io, config, stats, seeds, kernels (Triton, optional), tokenizer/ (own package)
    files         hub, cards, checkpoint, averaging, records, shards, viz: what goes to disk and the Hub
    data          text, layout (codes + text <-> one sequence), shapes (ShapesEdit + oracle), data
    verify        verifiers: the oracle, chat VLM judges, VIEScore
    model         model (UnifiedEditor), emu3 and emu3_original (loaders), lean (fast forward)
    generate      the sampler and the text-decoding loop
    rl            GRPO and GCPO math, log-probs
    editing       pipeline (EditPipeline), evaluate (ShapesEdit eval), generation_bench
    reward_model  rrm: the reasoning reward model, its data, readouts, serving engine and benches
    agents        decomposers, plan execution, step checks, AgentPipeline
    train         every trainer, its recipe sections and the stage registry
    apps          benchmarks (GEdit, ImgEdit runners), serve, study, demo, app
    cli           `earl`, one module per verb
"""

__version__ = "0.1.0"

# Layer name -> module prefixes (a prefix covers its submodules), bottom first.
LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": ("earl.errors", "earl.io", "earl.config", "earl.stats", "earl.seeds", "earl.kernels", "tokenizer"),
    "files": ("earl.hub", "earl.cards", "earl.checkpoint", "earl.averaging", "earl.records", "earl.shards", "earl.viz"),
    "data": ("earl.text", "earl.layout", "earl.shapes", "earl.data"),
    "verify": ("earl.verify",),
    "model": ("earl.model", "earl.emu3", "earl.emu3_original", "earl.lean"),
    "generate": ("earl.generate",),
    "rl": ("earl.rl",),
    "editing": ("earl.pipeline", "earl.evaluate", "earl.generation_bench"),
    "reward_model": ("earl.rrm",),
    "agents": ("earl.agents",),
    "train": ("earl.train",),
    "apps": ("earl.benchmarks", "earl.serve", "earl.study", "earl.demo", "earl.app"),
    "cli": ("earl.cli",),
}

# The user-facing entry points, importable as `from earl import EditPipeline` the way transformers and
# diffusers expose theirs. Loaded on first use, so `import earl` stays light (no torch until needed).
_PUBLIC = {
    "EditPipeline": "earl.pipeline",
    "AgentPipeline": "earl.agents.pipeline",
    "UnifiedEditor": "earl.model",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'earl' has no attribute {name!r}")
