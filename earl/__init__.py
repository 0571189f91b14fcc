"""earl: autoregressive image editing trained with SFT, chain-of-thought SFT and RL on verifier rewards.

Layering (imports point one way; tests/test_layering.py holds the line):
    tokenizer/ (own package), earl.errors, earl.io, earl.config, earl.stats   -- bottom
    earl.shapes (ShapesEdit domain + oracle), earl.text, earl.layout            -- data, vocabulary
    earl.verify (verifiers), earl.model (UnifiedEditor)                         -- judges, the model
    earl.generate (sampler), earl.rl (GRPO math), earl.data, earl.evaluate      -- sampling, evaluation
    earl.train (recipes), earl.pipeline, earl.agents, earl.generation_bench, earl.serve, earl.demo -- entry points
    earl.cli                                                                    -- top
"""

__version__ = "0.1.0"

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
