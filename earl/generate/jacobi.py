"""Speculative Jacobi decoding of an image grid: several codes per forward, the greedy output unchanged.

The sequential loop spends one forward per code. Here each forward feeds the code just decided and
guesses for the next `window - 1` codes (row ends `<eol>` in their places, positions and masks those
of the sequential order) and reads the logits at every fed position. The logits after a fed code are
exactly the sequential loop's logits for the next code as long as every code before it is right, so
the longest prefix of guesses that equal the argmax at their position is accepted, the first logits
after it give one more code for free, and the rejected tokens are rolled back off the KV cache. Each
forward therefore decides at least one code (never more forwards than sequential), and at temperature
0 the codes are the sequential ones (up to float rounding of a multi-token forward against a one-token
one). The guesses are the previous forward's predictions (a Jacobi iteration), codes never predicted
yet repeat the last one.

Rows of a batch share one cache length, so a forward accepts the prefix every row accepted.
"""

from __future__ import annotations

import torch

from earl.errors import EarlError
from earl.generate.decoders import _Decoder
from earl.generate.sampling import SamplingConfig, process_logits, sample_from

SCHEDULES = ("sequential", "jacobi")


def check_schedule(schedule: str, window: int | None, cfg: SamplingConfig, h: int, w: int) -> int:
    """The window a schedule runs with, or an error naming the option that cannot run."""
    if schedule not in SCHEDULES:
        raise EarlError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if schedule == "sequential":
        if window not in (None, 1):
            raise EarlError(f"window={window} is for schedule 'jacobi'; schedule 'sequential' decodes one code per forward")
        return 1
    if window is None:
        raise EarlError("schedule 'jacobi' needs window=N: the codes fed (and verified) per forward, N >= 1")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise EarlError(f"window={window!r}: expected an integer >= 1 (the codes fed per forward)")
    if window > h * w:
        raise EarlError(f"window={window} is beyond the grid: an {h}x{w} image has {h * w} codes")
    if cfg.temperature != 0:
        raise EarlError(f"schedule 'jacobi' runs greedy decoding only (temperature=0); got temperature="
                        f"{cfg.temperature}: use schedule 'sequential' to sample")
    return window


def _greedy(logits: torch.Tensor, n: int, code_range: tuple[int, int], cfg: SamplingConfig):
    """(R, m, V) logits at m fed positions -> (codes (n, m), log-probs (n, m)): the CFG combination,
    filters and argmax of the sequential sampler, at each position."""
    s0, s1 = code_range
    logits = logits[..., s0:s1]
    if cfg.uses_cfg:
        cond, uncond = logits[:n].float(), logits[n:].float()
        logits = uncond + cfg.guidance_scale * (cond - uncond)
    m, k = logits.shape[1], logits.shape[2]
    tok, lp = sample_from(process_logits(logits.reshape(n * m, k), cfg), cfg, None)
    return tok.view(n, m), lp.view(n, m)


def jacobi_grid(dec: _Decoder, n: int, h: int, w: int, window: int, cfg: SamplingConfig,
                code_range: tuple[int, int], eol: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an (h, w) grid on `dec`, whose `.logits` predict the first code; (codes (n, h*w) in the
    image slice, their log-probs). `dec` must hold `rollback`."""
    if not hasattr(dec, "rollback"):
        raise EarlError(f"schedule 'jacobi' needs a decoder that can roll its KV cache back; "
                        f"{type(dec).__name__} cannot: use decoder 'hf', 'static' or 'lean'")
    L, device = h * w, dec.logits.device
    R = dec.logits.shape[0]
    codes = torch.zeros((n, L), dtype=torch.long, device=device)
    logprobs = torch.zeros((n, L), device=device)
    guess = torch.zeros((n, L), dtype=torch.long, device=device)  # next forward's guesses
    known = -1  # guesses exist for codes <= known
    tok, lp = _greedy(dec.logits[:, None], n, code_range, cfg)
    k = 0  # codes < k are decided; tok/lp hold code k
    while True:
        codes[:, k], logprobs[:, k] = tok[:, 0], lp[:, 0]
        if k == L - 1:
            return codes, logprobs
        end = min(k + window, L - 1)  # feed codes k .. end-1 (the last code is never fed)
        guess[:, k] = codes[:, k]
        if known < end - 1:
            start = max(known, k)
            guess[:, start + 1 : end] = guess[:, start : start + 1]
            known = end - 1
        fed, after = [], []  # fed ids (n, .) pieces; index of the last fed token of each code
        for j in range(k, end):
            fed.append(guess[:, j : j + 1] + code_range[0])
            if (j + 1) % w == 0:  # a row end: its <eol> goes in right after the code
                fed.append(torch.full((n, 1), eol, dtype=torch.long, device=device))
            after.append(sum(p.shape[1] for p in fed) - 1)
        ids = torch.cat(fed, dim=1)
        logits = dec.feed(ids.repeat(R // n, 1), all_logits=True)  # (R, T, V)
        pred, plp = _greedy(logits[:, after], n, code_range, cfg)  # predictions for codes k+1 .. end
        match = (pred[:, :-1] == guess[:, k + 1 : end]).long().cumprod(1)  # (n, end-k-1)
        a = int(match.sum(1).min()) if match.shape[1] else 0  # guesses every row accepted
        codes[:, k + 1 : k + a + 1], logprobs[:, k + 1 : k + a + 1] = pred[:, :a], plp[:, :a]
        dec.rollback(ids.shape[1] - 1 - after[a])
        dec.logits = logits[:, after[a]]
        guess[:, k + a + 1 : end + 1] = pred[:, a:]  # the rest: predictions after a wrong guess
        known = max(known, end)
        tok, lp = pred[:, a : a + 1], plp[:, a : a + 1]
        k += a + 1
