"""The contract between pixels and the editing model: integer codes on a grid.

Everything above the tokenizer (layout, model, generation, verifiers) only ever sees
`LongTensor (B, h, w)` codes plus the grid shape; it never looks inside an encoder. Any tokenizer
that satisfies `ImageTokenizer` (our small `VQTokenizer`, later an Emu3 VQ-VAE adapter) can be
swapped in without touching the model. The protocol is `runtime_checkable` so loaders can fail
early with `isinstance` instead of deep inside a training step.

This package never imports `earl`: a tokenizer is trained, saved and loaded on its own, and its
codes are cached offline.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image


@runtime_checkable
class ImageTokenizer(Protocol):
    """Pixels in [0, 1] <-> integer codes on a (H/downsample, W/downsample) grid."""

    codebook_size: int  # codes are in [0, codebook_size)
    downsample: int  # one code per (downsample x downsample) pixel patch

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1], H and W divisible by `downsample` -> (B, H/d, W/d) int64 codes."""
        ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 codes -> (B, 3, h*d, w*d) float in [0, 1]."""
        ...


def pil_to_tensor(images: Image.Image | list[Image.Image]) -> torch.Tensor:
    """One PIL image or a list of same-sized ones -> (B, 3, H, W) float32 in [0, 1].

    Images are converted to RGB first (no alpha handling here; `earl.io.load_image` composites
    alpha onto white before images reach the tokenizer).
    """
    if isinstance(images, Image.Image):
        images = [images]
    if not images:
        raise ValueError("pil_to_tensor: expected at least one image, got an empty list")
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise ValueError(f"pil_to_tensor: all images must share one size to form a batch, got sizes {sorted(sizes)}")
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])  # (B, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) or (3, H, W) float in [0, 1] -> list of RGB PIL images (values are clamped and rounded)."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"tensor_to_pil: expected shape (B, 3, H, W), got {tuple(images.shape)}")
    arr = (images.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)  # (B, 3, H, W)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return [Image.fromarray(a) for a in arr]
