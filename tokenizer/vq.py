"""A small convolutional VQ tokenizer: images <-> a grid of integer codes.

Architecture (VQGAN-style, without attention, which buys nothing at 64 px):

    x (B,3,H,W) in [0,1] -> [-1,1] -> Encoder -> z (B,D,H/d,W/d) -> quantiser -> codes (B,H/d,W/d)
    codes -> quantiser lookup -> zq (B,D,H/d,W/d) -> Decoder -> recon (B,3,H,W)

`d = patch_size * 2 ** (len(channel_mult) - 1)`: an optional space-to-depth stem folds each
`patch_size` x `patch_size` block of pixels into channels (PixelUnshuffle; the decoder ends with the
inverse PixelShuffle), then every level but the last halves the resolution. With `patch_size=1`
this is the plain VQGAN layout; a patch stem moves all convolutions to low resolution, which on a
CPU is many times cheaper per step and, for flat-colour images whose objects align with the code
grid, learns faster (see docs/TOKENIZER.md for the measurements). The quantiser
is one of three from `vector_quantize_pytorch`, picked by name through `QUANTIZERS`:

- "fsq": finite scalar quantisation. No codebook to learn, no auxiliary loss, no dead codes;
  the codebook size is the product of `fsq_levels`.
- "vq": a learned codebook (EMA updates, optional cosine similarity, dead-code expiry) with a
  commitment loss.
- "lfq": lookup-free (binary) quantisation with an entropy loss that spreads code usage.

`save_pretrained` / `from_pretrained` store `config.json` + `model.safetensors` (no pickle), and
loading fails with a `TokenizerLoadError` (a `ValueError`) that says what is missing or mismatched.
This module never imports `earl`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "earl-vq-tokenizer"  # written into config.json so a wrong directory is recognised as such
FORMAT_VERSION = 1


class TokenizerLoadError(ValueError):
    """A tokenizer directory that is missing, incomplete, or does not match its config."""


@dataclass
class VQConfig:
    """Architecture and quantiser of a `VQTokenizer` (saved as `config.json`)."""

    in_channels: int = dataclasses.field(default=3, metadata={"help": "image channels (RGB)"})
    channels: int = dataclasses.field(default=32, metadata={"help": "width of the full-resolution level"})
    patch_size: int = dataclasses.field(
        default=1, metadata={"help": "space-to-depth stem: fold p x p pixel blocks into channels first (1 = off)"}
    )
    channel_mult: tuple[int, ...] = dataclasses.field(
        default=(1, 2, 2, 4),
        metadata={"help": "width multiplier per level; every level but the last halves the resolution"},
    )
    num_res_blocks: int = dataclasses.field(default=1, metadata={"help": "residual blocks per level"})
    encoder_kernel: int = dataclasses.field(
        default=3,
        metadata={
            "help": "kernel of the encoder's residual and output convs; 1 = each code sees only its own patch, "
            "so identical patches always get the same code (needs patch_size = downsample)"
        },
    )
    latent_dim: int = dataclasses.field(default=16, metadata={"help": "channels entering the quantiser"})
    norm_groups: int = dataclasses.field(default=8, metadata={"help": "GroupNorm groups; must divide every width"})
    quantizer: Literal["fsq", "vq", "lfq"] = dataclasses.field(default="fsq", metadata={"help": "quantiser kind"})
    # FSQ: (8,5,5,5) = 1000 codes is the FSQ paper's recommendation for a ~2**10 codebook.
    fsq_levels: tuple[int, ...] = dataclasses.field(
        default=(8, 5, 5, 5), metadata={"help": "FSQ levels per dimension (each >= 3); codebook = product"}
    )
    fsq_code_embedding: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "fsq: add a learned vector per code to the decoder's input, so that two neighbouring codes can "
            "decode to sharply different patches (the decoder alone is a smooth function of the FSQ grid point)"
        },
    )
    codebook_size: int = dataclasses.field(default=1024, metadata={"help": "codebook size for vq / lfq (lfq: power of 2)"})
    vq_codebook_dim: int | None = dataclasses.field(
        default=None, metadata={"help": "vq: look codes up in this smaller dimension (None = latent_dim)"}
    )
    vq_cosine: bool = dataclasses.field(default=True, metadata={"help": "vq: cosine-similarity codebook (better usage)"})
    vq_ema_decay: float = dataclasses.field(default=0.99, metadata={"help": "vq: EMA decay of codebook updates"})
    vq_commitment_weight: float = dataclasses.field(default=0.25, metadata={"help": "vq: commitment loss weight"})
    vq_dead_code_threshold: int = dataclasses.field(
        default=2, metadata={"help": "vq: re-seed codes whose EMA usage falls below this (0 = never)"}
    )
    lfq_entropy_weight: float = dataclasses.field(default=0.1, metadata={"help": "lfq: entropy loss weight"})
    lfq_commitment_weight: float = dataclasses.field(default=0.25, metadata={"help": "lfq: commitment loss weight"})
    downsample: int | None = dataclasses.field(
        default=None,
        metadata={"help": "pixels per code side; None = patch_size * 2 ** (len(channel_mult) - 1), else must match"},
    )

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        self.fsq_levels = tuple(self.fsq_levels)
        for name in (
            "in_channels", "patch_size", "channels", "num_res_blocks", "latent_dim", "norm_groups", "codebook_size",
            "encoder_kernel",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of positive integers, got {list(self.channel_mult)}")
        bad = [self.channels * m for m in self.channel_mult if (self.channels * m) % self.norm_groups]
        if bad:
            raise ValueError(f"norm_groups={self.norm_groups} must divide every level width, but not {bad}")
        if self.encoder_kernel % 2 == 0:
            raise ValueError(f"encoder_kernel must be odd (1, 3, ...), got {self.encoder_kernel}")
        if self.encoder_kernel == 1 and len(self.channel_mult) > 1:
            raise ValueError(
                "encoder_kernel=1 (patch-local codes) needs a single level, channel_mult of length 1, because the "
                f"stride-2 convs between levels mix neighbouring patches; got channel_mult={list(self.channel_mult)}"
            )
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {sorted(QUANTIZERS)}, got {self.quantizer!r}")
        if self.quantizer == "fsq" and (not self.fsq_levels or any(level < 3 for level in self.fsq_levels)):
            raise ValueError(f"fsq_levels must be a non-empty list of integers >= 3, got {list(self.fsq_levels)}")
        if self.quantizer == "lfq" and not math.log2(self.codebook_size).is_integer():
            raise ValueError(f"lfq needs a power-of-2 codebook_size, got {self.codebook_size}")
        derived = self.patch_size * 2 ** (len(self.channel_mult) - 1)
        if self.downsample is None:
            self.downsample = derived
        elif self.downsample != derived:
            levels = math.log2(self.downsample / self.patch_size) + 1
            raise ValueError(
                f"downsample={self.downsample} needs {levels:g} entries in channel_mult with patch_size={self.patch_size}, "
                f"but channel_mult={list(self.channel_mult)} gives downsample {derived}"
            )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["fsq_levels"] = list(self.fsq_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VQConfig:
        """Strict: unknown keys and bad values raise `ValueError` naming the field."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a mapping of VQConfig fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown VQConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# Building blocks


class ChannelNorm(nn.Module):
    """LayerNorm over channels at each position of a (B, C, H, W) map: no mixing across positions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, H, W)


def _norm(channels: int, groups: int, local: bool) -> nn.Module:
    return ChannelNorm(channels) if local else nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """Norm -> SiLU -> conv (k x k), twice, plus a (1x1 if widths differ) skip.

    GroupNorm normalises over the whole image, so with k = 1 a patch's features would still depend on
    the other patches; k = 1 therefore also swaps it for a per-position LayerNorm over channels
    (`ChannelNorm`), which keeps every position independent.
    """

    def __init__(self, c_in: int, c_out: int, groups: int, kernel: int = 3):
        super().__init__()
        self.norm1 = _norm(c_in, groups, local=kernel == 1)
        self.conv1 = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.norm2 = _norm(c_out, groups, local=kernel == 1)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel, padding=kernel // 2)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, c_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, c_out, H, W)
        return self.skip(x) + h


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        p = cfg.patch_size
        self.stem = nn.PixelUnshuffle(p) if p > 1 else nn.Identity()  # (B,3,H,W) -> (B,3p^2,H/p,W/p)
        # A patch already holds its neighbourhood; the res blocks mix across patches (unless encoder_kernel = 1).
        k = 1 if p > 1 or cfg.encoder_kernel == 1 else 3
        self.conv_in = nn.Conv2d(cfg.in_channels * p * p, widths[0], k, padding=k // 2)
        layers: list[nn.Module] = []
        c = widths[0]
        ek = cfg.encoder_kernel
        for i, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, w, cfg.norm_groups, ek))
                c = w
            if i < len(widths) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # halve H, W
        layers.append(ResBlock(c, c, cfg.norm_groups, ek))  # "mid" block at the latent resolution
        self.body = nn.Sequential(*layers)
        self.norm_out = _norm(c, cfg.norm_groups, local=ek == 1)
        self.conv_out = nn.Conv2d(c, cfg.latent_dim, ek, padding=ek // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(self.stem(x)))  # (B, C_last, H/d, W/d)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, D, H/d, W/d)


class Decoder(nn.Module):
    """Mirror of the encoder; upsampling is nearest x2 + conv (no checkerboard artefacts)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        c = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_dim, c, 3, padding=1)
        layers: list[nn.Module] = [ResBlock(c, c, cfg.norm_groups)]
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, w, cfg.norm_groups))
                c = w
            if i > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]  # double H, W
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, c)
        p = cfg.patch_size
        k = 1 if p > 1 else 3
        self.conv_out = nn.Conv2d(c, cfg.in_channels * p * p, k, padding=k // 2)
        self.unstem = nn.PixelShuffle(p) if p > 1 else nn.Identity()  # (B,3p^2,H/p,W/p) -> (B,3,H,W)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(z))  # (B, C_first, H/p, W/p)
        return self.unstem(self.conv_out(F.silu(self.norm_out(h))))  # (B, 3, H, W), roughly in [-1, 1]


# ---------------------------------------------------------------------------------------------
# Quantisers: one adapter per kind with the same two methods, chosen by name in QUANTIZERS.
#   forward(z (B,D,h,w)) -> (zq (B,D,h,w), codes (B,h,w) int64, aux_loss scalar)
#   lookup(codes (B,h,w)) -> zq (B,D,h,w)


def _vqp(name: str):
    """A class from `vector_quantize_pytorch`, imported when a quantiser is built.

    Why not at module level: code that only reads token grids (the layout, the sampler, the GPU
    benchmarks of an Emu3-shaped backbone) imports this package without building a tokenizer, and
    a machine without vector-quantize-pytorch should still run it."""
    try:
        import vector_quantize_pytorch
    except ImportError as e:
        raise ImportError(f"building a VQ tokenizer needs the vector-quantize-pytorch package "
                          f"(pip install vector-quantize-pytorch): {e}") from e
    return getattr(vector_quantize_pytorch, name)


class FSQQuantizer(nn.Module):
    """FSQ (Mentzer et al. 2023) from vector-quantize-pytorch, plus an optional learned vector per code.

    FSQ bounds each latent value with tanh to (L-1)/2 levels and rounds it (straight-through
    gradient). The decoder then sees grid points, and a conv decoder is a smooth function of them:
    two neighbouring codes (a small circle's quarter and a small square's, three pixels apart)
    decode to nearly the same blur. `fsq_code_embedding` adds a free vector per code to the
    decoder's input, so neighbouring codes can decode to sharply different patches. Codes and their
    grid points are the library's either way.
    """

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.q = _vqp("FSQ")(levels=list(cfg.fsq_levels), dim=cfg.latent_dim)
        self.codebook_size = int(math.prod(cfg.fsq_levels))
        self.code_embedding = None
        if cfg.fsq_code_embedding:
            self.code_embedding = nn.Embedding(self.codebook_size, cfg.latent_dim)
            nn.init.zeros_(self.code_embedding.weight)  # start as plain FSQ

    def forward(self, z):
        zq, codes = self.q(z)  # (B, D, h, w), (B, h, w) int32
        codes = codes.long()
        return self._embed(zq, codes), codes, z.new_zeros(())  # FSQ has no auxiliary loss

    def lookup(self, codes):
        return self._embed(self.q.indices_to_codes(codes), codes)  # (B, D, h, w)

    def bin_coordinates(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D, h, w) -> (B, h*w, d): each latent in bin units, before rounding (rounding gives the
        code's level per FSQ dimension). Two latents share a code iff every dimension rounds alike."""
        B, D, h, w = z.shape
        levels = self.q._levels.to(z.dtype)  # (d,)
        u = self.q.project_in(z.permute(0, 2, 3, 1).reshape(B, h * w, D))  # (B, n, d)
        # The library's bound: even level counts are offset by half a bin so that 0 is on the grid.
        half_l = (levels - 1) * (1 + 1e-3) / 2
        offset = (levels % 2 == 0).to(z.dtype) * 0.5
        return torch.tanh(u + torch.atanh(offset / half_l)) * half_l - offset

    def _embed(self, zq: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if self.code_embedding is None:
            return zq
        return zq + self.code_embedding(codes).permute(0, 3, 1, 2)  # (B, D, h, w)


class VQQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.q = _vqp("VectorQuantize")(
            dim=cfg.latent_dim,
            codebook_size=cfg.codebook_size,
            codebook_dim=cfg.vq_codebook_dim,
            use_cosine_sim=cfg.vq_cosine,
            decay=cfg.vq_ema_decay,
            commitment_weight=cfg.vq_commitment_weight,
            threshold_ema_dead_code=cfg.vq_dead_code_threshold,
            accept_image_fmap=True,
        )
        self.codebook_size = cfg.codebook_size

    def forward(self, z):
        zq, codes, loss = self.q(z)  # (B, D, h, w), (B, h, w), scalar
        return zq, codes.long(), loss.reshape(())

    def lookup(self, codes):
        # Not `get_output_from_indices`: for image feature maps it applies project_out to the wrong axis.
        zq = self.q.project_out(self.q.codebook[codes])  # (B, h, w, codebook_dim) -> (B, h, w, D)
        return zq.permute(0, 3, 1, 2)  # (B, D, h, w)


class LFQQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.q = _vqp("LFQ")(
            dim=cfg.latent_dim,
            codebook_size=cfg.codebook_size,
            entropy_loss_weight=cfg.lfq_entropy_weight,
            commitment_loss_weight=cfg.lfq_commitment_weight,
        )
        self.codebook_size = cfg.codebook_size

    def forward(self, z):
        zq, codes, loss = self.q(z)  # (B, D, h, w), (B, h, w), scalar
        return zq, codes.long(), loss.reshape(())

    def lookup(self, codes):
        return self.q.indices_to_codes(codes)  # (B, D, h, w)


QUANTIZERS: dict[str, type[nn.Module]] = {"fsq": FSQQuantizer, "vq": VQQuantizer, "lfq": LFQQuantizer}


# ---------------------------------------------------------------------------------------------
# The tokenizer


class VQTokenizer(nn.Module):
    """Encoder + quantiser + decoder; implements `tokenizer.ImageTokenizer`.

    `forward` is for training (returns the unclamped reconstruction and the quantiser's auxiliary
    loss); `encode` / `decode` are for inference: they run without gradients and in eval mode
    (so a learned codebook is never updated by encoding), whatever mode the module is in.
    """

    def __init__(self, config: VQConfig | None = None):
        super().__init__()
        self.config = config or VQConfig()
        self.encoder = Encoder(self.config)
        self.quantizer = QUANTIZERS[self.config.quantizer](self.config)
        self.decoder = Decoder(self.config)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B,3,H,W) in [0,1] -> (recon (B,3,H,W) unclamped, codes (B,H/d,W/d), aux_loss scalar)."""
        self._check_images(x)
        z = self.encoder(x * 2 - 1)  # (B, D, h, w)
        zq, codes, aux = self.quantizer(z)  # (B, D, h, w), (B, h, w), ()
        recon = (self.decoder(zq) + 1) / 2  # (B, 3, H, W)
        return recon, codes, aux

    def decode_for_training(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> unclamped (B, 3, H, W) images, with gradients to the decoder (and code embedding).

        For decoder-only fine-tuning: with the encoder frozen every patch keeps one code, and the
        decoder can learn sharp differences between codes that were still trading places before.
        """
        return (self.decoder(self.quantizer.lookup(codes)) + 1) / 2  # (B, 3, H, W)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, H/d, W/d) int64 codes."""
        self._check_images(images)
        with self._inference():
            _, codes, _ = self.quantizer(self.encoder(images * 2 - 1))  # (B, h, w)
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 codes -> (B, 3, h*d, w*d) float in [0, 1]."""
        if not isinstance(codes, torch.Tensor) or codes.ndim != 3 or codes.dtype not in (torch.int64, torch.int32):
            got = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"decode expects integer codes of shape (B, h, w), got {got}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got range [{int(codes.min())}, {int(codes.max())}]"
            )
        with self._inference():
            zq = self.quantizer.lookup(codes.long())  # (B, D, h, w)
            images = (self.decoder(zq) + 1) / 2  # (B, 3, H, W)
        return images.clamp(0, 1)

    @contextlib.contextmanager
    def _inference(self):
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def _check_images(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected a float tensor of shape (B, {self.config.in_channels}, H, W) in [0, 1], got {got}")
        _, c, h, w = x.shape
        d = self.downsample
        if c != self.config.in_channels:
            raise ValueError(f"expected {self.config.in_channels} channels (B, C, H, W), got shape {tuple(x.shape)}")
        if h % d or w % d:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the tokenizer's downsample factor {d}; "
                f"resize or pad to a multiple of {d} (e.g. {(h // d + 1) * d}x{(w // d + 1) * d})"
            )

    # -- persistence -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write `config.json` + `model.safetensors` into `directory` (each file atomically).

        The weights are written first and the config last, so a directory with a config always
        has complete weights next to it.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with _atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", "earl_format": FORMAT})
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": self.config.to_dict()}
        with _atomic_path(directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> VQTokenizer:
        """Load a tokenizer written by `save_pretrained`, in eval mode. Raises `TokenizerLoadError`."""
        directory = Path(directory)
        hint = f"(expected a folder written by VQTokenizer.save_pretrained with {CONFIG_NAME} and {WEIGHTS_NAME})"
        if not directory.is_dir():
            raise TokenizerLoadError(f"{directory}: tokenizer directory not found {hint}")
        config = _read_config(directory / CONFIG_NAME, hint)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise TokenizerLoadError(f"{weights}: weights file not found {hint}")
        try:
            state = load_file(str(weights), device=str(device))
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise TokenizerLoadError(f"{weights}: not a readable safetensors file ({type(e).__name__}: {e})") from None
        model = cls(config).to(device)
        _check_state_matches(model, state, weights)
        model.load_state_dict(state, strict=True)
        return model.eval()


def _read_config(path: Path, hint: str) -> VQConfig:
    if not path.is_file():
        raise TokenizerLoadError(f"{path}: config file not found {hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerLoadError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise TokenizerLoadError(f'{path}: not a tokenizer config (expected {{"format": "{FORMAT}", "config": {{...}}}})')
    if meta.get("format_version") != FORMAT_VERSION:
        raise TokenizerLoadError(
            f"{path}: format_version {meta.get('format_version')!r} is not supported (this code reads {FORMAT_VERSION})"
        )
    try:
        return VQConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise TokenizerLoadError(f"{path}: invalid config: {e}") from None


def _check_state_matches(model: nn.Module, state: dict[str, torch.Tensor], weights: Path) -> None:
    """Name the first mismatching tensors instead of letting `load_state_dict` dump them all."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:3]}")
    if problems:
        raise TokenizerLoadError(
            f"{weights} does not match {CONFIG_NAME} in the same folder: {'; '.join(problems)}. "
            "Was config.json edited, or were the files copied from different runs?"
        )


@contextlib.contextmanager
def _atomic_path(path: Path):
    """A temporary file next to `path`, renamed over it on success (same idea as `earl.io.atomic_path`).
    Created with mode 0666 & ~umask, as `open` would, not mkstemp's private 0600 that the rename keeps."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield Path(tmp)
        mask = os.umask(0o022)  # read the umask: safetensors recreates the file with mode 0600
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

