"""Sampling settings and the logits steps every decoding loop shares: temperature, top-k, top-p,
the draw (one generator for the batch, or one per row), and the image-code draw of an edit (the
fused GPU kernel where it applies, else these PyTorch steps)."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingConfig:
    guidance_scale: float = 1.0  # CFG scale s; 1.0 = plain conditional sampling (no unconditional rows)
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely codes; 0 = off
    top_p: float = 1.0  # nucleus sampling mass; 1.0 = off
    max_think_tokens: int = 96  # budget for the reasoning text of chain-of-thought models
    # on a GPU with Triton, draw image codes with one fused kernel (CFG, temperature, top-k, draw and
    # log-prob: `earl.kernels.sampling`); same distribution, Triton's random stream. Not with top_p < 1.
    fused_step: bool = True

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale != 1.0



# ---- token filtering ------------------------------------------------------------------------
def process_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k and top-p applied to (N, V) logits; filtered entries become -inf.

    The result is the distribution sampled from (log_softmax of it gives the returned log-probs).
    At temperature 0 the temperature step is skipped (greedy picks the argmax of these logits).
    """
    logits = logits.float()
    if cfg.temperature > 0:
        logits = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= cfg.top_p  # keep the smallest prefix reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


Generators = torch.Generator | list[torch.Generator] | None  # one for the batch, or one per row


def sample_from(logits: torch.Tensor, cfg: SamplingConfig, generator: Generators):
    """Sample one token per row from processed logits. Returns (tokens (N,), logprobs (N,)).

    `generator` may be a list with one generator per row: row i is then drawn from `generator[i]`
    alone, so its tokens depend on its own seed and logits, not on the other rows of the batch."""
    logp = torch.log_softmax(logits, dim=-1)
    if cfg.temperature == 0:
        tok = logits.argmax(-1)
    elif isinstance(generator, (list, tuple)):
        probs = logp.exp()
        tok = torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g)
                         for i, g in enumerate(generator)]).squeeze(-1)
    else:
        tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


_fused_reported: set[str] = set()


def _use_fused_step(device: torch.device, cfg: SamplingConfig) -> bool:
    """Whether image codes are drawn by `earl.kernels.sampling.cfg_sample`: on CUDA with Triton, when
    asked and without top-p. Says once why not when it was asked on a GPU."""
    if not cfg.fused_step or device.type != "cuda":
        return False
    why = "top_p < 1 needs a sort" if cfg.top_p < 1.0 else None
    if why is None:
        try:
            import triton  # noqa: F401
        except ImportError:
            why = "triton is not installed"
    if why is not None and why not in _fused_reported:
        _fused_reported.add(why)
        log.info("fused sampling step off (%s): PyTorch sampling", why)
    return why is None


def _image_code_sampler(device, cfg: SamplingConfig, n: int, code_range: tuple[int, int], generator):
    """A function (R, V) full-vocabulary logits -> (codes (n,), log-probs (n,)) for the image codes,
    CFG rows included: the fused kernel where `_use_fused_step`, else the PyTorch steps."""
    img_start, img_stop = code_range
    per_row = isinstance(generator, (list, tuple))  # the kernel's random stream is one seed for all rows
    if (not per_row or cfg.temperature == 0) and _use_fused_step(device, cfg):
        from earl.kernels.sampling import cfg_sample  # here: it imports triton, an optional GPU package

        if per_row:  # greedy: nothing is drawn, the seed is unused
            generator = None
        base = int(torch.randint(0, 2**31 - 1, (1,), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))
        calls = itertools.count()  # a distinct seed per step

        def fused(logits):
            return cfg_sample(logits, n, img_start, img_stop, cfg.guidance_scale, cfg.temperature, cfg.top_k,
                              seed=(base + next(calls) * 7919) % (2**31 - 1))
        return fused

    def unfused(logits):
        logits = logits[:, img_start:img_stop]  # (R, K) image slice only
        if cfg.uses_cfg:
            cond, uncond = logits[:n].float(), logits[n:].float()
            logits = uncond + cfg.guidance_scale * (cond - uncond)
        return sample_from(process_logits(logits, cfg), cfg, generator)
    return unfused

