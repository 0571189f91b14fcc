"""earl: autoregressive image editing trained with SFT, chain-of-thought SFT and RL on verifier rewards.

Layering (imports point one way, a test holds the line):
    tokenizer/ (own package), earl.errors, earl.io, earl.config   -- bottom
    earl.shapes (ShapesEdit domain + oracle)                      -- data and exact judge
    earl.train (recipes: tokenizer, ...)                          -- training entry points
    earl.cli                                                      -- top
"""

__version__ = "0.1.0"
