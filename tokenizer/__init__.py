"""Image tokenizers: pixels <-> integer codes on a grid.

The codes and the grid shape are the only contract with the rest of earl; this package never
imports `earl`, so a tokenizer can be trained, shipped and used on its own.

    from tokenizer import VQTokenizer, pil_to_tensor
    tok = VQTokenizer.from_pretrained("runs/tokenizer/tokenizer")
    codes = tok.encode(pil_to_tensor(image))   # (1, 8, 8) int64 for a 64x64 image
    recon = tok.decode(codes)                  # (1, 3, 64, 64) float in [0, 1]
"""

from tokenizer.protocol import ImageTokenizer, pil_to_tensor, tensor_to_pil
from tokenizer.vq import QUANTIZERS, TokenizerLoadError, VQConfig, VQTokenizer

__all__ = [
    "QUANTIZERS",
    "ImageTokenizer",
    "TokenizerLoadError",
    "VQConfig",
    "VQTokenizer",
    "pil_to_tensor",
    "tensor_to_pil",
]
