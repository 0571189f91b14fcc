"""Speculative Jacobi decoding of an image grid: several codes per forward, the model's distribution kept.

The sequential loop spends one forward per code. Here each forward feeds the code just decided and
guesses for the next `window - 1` codes (row ends `<eol>` in their places, positions and masks those
of the sequential order) and reads the logits at every fed position. The logits after a fed code are
exactly the sequential loop's logits for the next code as long as every code before it stands, so the
guesses are verified in order: greedy, a guess stands when it is the argmax at its position; sampling,
by the speculative-sampling rule (a point-mass guess x stands with probability p(x), else the code is
drawn from p without x), which leaves every code distributed as the model's p given the codes before
it. The first position where a guess falls (or the end of the window) gives one more code, and the
tokens after it are rolled back off the KV cache. Each forward therefore decides at least one code
(never more forwards than sequential), and at temperature 0 the codes are the sequential ones (up to
float rounding of a multi-token forward against a one-token one); sampled codes follow the same
distribution from another random stream. The guesses are the argmaxes of the previous forward
(a Jacobi iteration); codes never predicted yet repeat the last one.

Rows of a batch share one cache length, so a forward keeps the prefix every row accepted; a row whose
guesses stood further keeps its code at that point (a guess that stood is a draw from p too).
"""

from __future__ import annotations

import torch

from earl.errors import EarlError
from earl.generate.decoders import _Decoder
from earl.generate.sampling import Generators, SamplingConfig, process_logits, sample_from

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
    return window


def _processed(logits: torch.Tensor, n: int, code_range: tuple[int, int], cfg: SamplingConfig) -> torch.Tensor:
    """(R, m, V) logits at m fed positions -> (n, m, K) processed image-code logits: the sequential
    sampler's CFG combination and filters, at each position."""
    s0, s1 = code_range
    logits = logits[..., s0:s1]
    if cfg.uses_cfg:
        cond, uncond = logits[:n].float(), logits[n:].float()
        logits = uncond + cfg.guidance_scale * (cond - uncond)
    m, k = logits.shape[1], logits.shape[2]
    return process_logits(logits.reshape(n * m, k), cfg).view(n, m, k)


def _uniform(n: int, m: int, generator: Generators, device) -> torch.Tensor:
    """(n, m) uniforms in [0, 1), row i from its own generator when given one per row."""
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.rand(1, m, generator=g, device=device) for g in generator])
    return torch.rand(n, m, generator=generator, device=device)


def _verify(proc: torch.Tensor, guess: torch.Tensor, cfg: SamplingConfig, generator: Generators):
    """Which guesses stand, and the code after the accepted prefix.

    `proc` (n, m, K): processed logits for the m codes after the decided one; `guess` (n, m-1): the
    guessed codes among them. Greedy: a guess stands when it is the argmax. Sampling: the
    speculative-sampling rule with a point-mass guess: a guess x stands with probability p(x), and
    where it falls the code is drawn from p without x, renormalised, so each code is distributed as p
    given the codes before it. Returns (accepted (n,) leading guesses standing, next codes (n, m),
    their log-probs (n, m)): position j holds the guess where it stood, else the code drawn there.
    """
    n, m, _ = proc.shape
    logp = torch.log_softmax(proc, dim=-1)
    if cfg.temperature == 0:
        tok = proc.argmax(-1)
        stands = tok[:, :-1] == guess
    else:
        p_guess = logp[:, :-1].gather(-1, guess[..., None]).squeeze(-1).exp()
        stands = _uniform(n, m - 1, generator, proc.device) < p_guess
        fell = torch.zeros_like(proc[:, :-1], dtype=torch.bool).scatter_(-1, guess[..., None], True) & ~stands[..., None]
        residual = torch.cat([proc[:, :-1].masked_fill(fell, float("-inf")), proc[:, -1:]], dim=1)  # p without x
        drawn, _ = sample_from(residual.view(n * m, -1), cfg,
                               [g for g in generator for _ in range(m)] if isinstance(generator, (list, tuple))
                               else generator)
        tok = torch.cat([torch.where(stands, guess, drawn.view(n, m)[:, :-1]), drawn.view(n, m)[:, -1:]], dim=1)
    accepted = stands.long().cumprod(1).sum(1)
    return accepted, tok, logp.gather(-1, tok[..., None]).squeeze(-1)


def jacobi_grid(dec: _Decoder, n: int, h: int, w: int, window: int, cfg: SamplingConfig,
                code_range: tuple[int, int], eol: int, generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
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
    tok, lp = sample_from(_processed(dec.logits[:, None], n, code_range, cfg)[:, 0], cfg, generator)
    tok, lp = tok[:, None], lp[:, None]
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
        proc = _processed(logits[:, after], n, code_range, cfg)  # (n, end-k, K): codes k+1 .. end
        accepted, pred, plp = _verify(proc, guess[:, k + 1 : end], cfg, generator)
        a = int(accepted.min())  # guesses every row accepted
        codes[:, k + 1 : k + a + 1], logprobs[:, k + 1 : k + a + 1] = pred[:, :a], plp[:, :a]
        dec.rollback(ids.shape[1] - 1 - after[a])
        dec.logits = logits[:, after[a]]
        guess[:, k + a + 1 : end + 1] = proc[:, a:].argmax(-1)  # the rest: predictions after a wrong guess
        known = max(known, end)
        tok, lp = pred[:, a : a + 1], plp[:, a : a + 1]
        k += a + 1
