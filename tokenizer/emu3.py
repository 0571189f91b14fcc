"""Emu3's VQ-VAE behind the `ImageTokenizer` protocol (pixels in [0, 1] <-> codes).

Emu3 (BAAI) tokenises an image with a frozen VQ-VAE: 32,768 codes, 8x spatial downsampling, and
images normalised by the checkpoint's processor (`image_mean`, `image_std` in its
preprocessor_config.json). This wrapper applies that normalisation on the way in, undoes it on
the way out, and saves/loads the VQ-VAE in transformers' format (safetensors) next to a small
JSON with the normalisation, so an earl editor directory carries everything it needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

NORM_FILE = "earl_emu3_normalisation.json"


class Emu3VQTokenizer(nn.Module):
    """`transformers.Emu3VQVAE` as an earl image tokenizer."""

    def __init__(self, vqvae, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)):
        super().__init__()
        self.vqvae = vqvae.eval()
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.codebook_size = int(vqvae.config.codebook_size)
        self.downsample = int(vqvae.vision_spatial_factor)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], H and W multiples of `downsample` -> (B, H/d, W/d) int64 codes."""
        b, _, h, w = images.shape
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"image size {h}x{w} is not a multiple of the downsample factor {self.downsample}")
        x = (images.to(self.mean.device, torch.float32) - self.mean) / self.std
        sizes = torch.tensor([[h, w]] * b)
        tokens = self.vqvae.encode(x, sizes, return_dict=True).image_tokens
        return torch.stack([t.long() for t in tokens])

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, 3, h*d, w*d) in [0, 1]."""
        x = self.vqvae.decode(codes.long().to(self.mean.device)).float()
        return (x * self.std + self.mean).clamp(0.0, 1.0)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.vqvae.save_pretrained(path, safe_serialization=True)
        (path / NORM_FILE).write_text(json.dumps({"image_mean": self.mean.flatten().tolist(),
                                                  "image_std": self.std.flatten().tolist()}) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None) -> Emu3VQTokenizer:
        from transformers import Emu3VQVAE

        path = Path(path)
        norm = json.loads((path / NORM_FILE).read_text()) if (path / NORM_FILE).is_file() else {}
        vq = Emu3VQVAE.from_pretrained(path, use_safetensors=True, dtype=dtype or "auto")
        return cls(vq, norm.get("image_mean", (0.5, 0.5, 0.5)), norm.get("image_std", (0.5, 0.5, 0.5)))
