"""earl: autoregressive image editing trained with SFT, chain-of-thought SFT and RL on verifier rewards.

Layering (imports point one way; tests/test_layering.py holds the line):
    tokenizer/ (own package), earl.errors, earl.io, earl.config, earl.stats   -- bottom
    earl.shapes (ShapesEdit domain + oracle), earl.text, earl.layout            -- data, vocabulary
    earl.verify (verifiers), earl.model (UnifiedEditor)                         -- judges, the model
    earl.generate (sampler), earl.rl (GRPO math), earl.data, earl.evaluate      -- sampling, evaluation
    earl.train (recipes), earl.pipeline, earl.bench, earl.serve, earl.demo      -- entry points
    earl.cli                                                                    -- top
"""

__version__ = "0.1.0"
