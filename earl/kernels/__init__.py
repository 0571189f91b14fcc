"""Fused Triton kernels for the generation core.

`earl.kernels.attention`: prefill and flash-decoding attention kernels.
`earl.kernels.hf`: the "earl_triton" attention implementation for transformers models, with an
SDPA fallback wherever the kernels do not apply (no GPU, training, unusual masks).

Importing this package imports neither triton nor transformers; the submodules do.
"""
