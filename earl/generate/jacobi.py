"""Speculative Jacobi decoding of an image grid: several codes per forward, the model's distribution kept.

The sequential loop spends one forward per code. Here each forward feeds the code just decided and
guesses for the next `window - 1` codes (row ends `<eol>` in their places, positions and masks those
of the sequential order) and reads the logits at every fed position. The logits after a fed code are
exactly the sequential loop's logits for the next code as long as every code before it stands, so the
guesses are verified in order: greedy, a guess stands when it is the argmax at its position; sampling,
by the speculative-sampling rule (a point-mass guess x stands with probability p(x), else the code is
drawn from p without x), which leaves every code distributed as the model's p given the codes before
it. The first position where a guess falls (or the end of the window) gives one more code, and the
tokens after it are forgotten (masked for that row, and dropped off the KV cache where no row keeps
them). Each forward therefore decides at least one code (never more forwards than sequential), and
at temperature 0 the codes are the sequential ones (up to
float rounding of a multi-token forward against a one-token one); sampled codes follow the same
distribution from another random stream. The guesses are the argmaxes of the previous forward
(a Jacobi iteration); codes never predicted yet repeat the last one.

Each row of a batch advances by its own accepted count: rows share one forward (and one cache
length), but a row's rejected tokens become masked slots of its own, positions stay its own, and the
KV cache is compacted (each row's live slots moved together) when masked slots would outgrow it. A row
therefore takes the forwards it would take alone, and the batch the most any of its rows takes.
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


def _verify(proc: torch.Tensor, guess: torch.Tensor, valid: torch.Tensor, cfg: SamplingConfig,
            generator: Generators):
    """Which guesses stand, and the code after the accepted prefix.

    `proc` (n, m, K): processed logits for the m codes after the decided one; `guess` (n, m-1): the
    guessed codes among them, `valid` (n, m-1) where a row fed one (rows feed different counts). Greedy:
    a guess stands when it is the argmax. Sampling: the speculative-sampling rule with a point-mass
    guess: a guess x stands with probability p(x), and where it falls the code is drawn from p without
    x, renormalised, so each code is distributed as p given the codes before it. Returns (accepted (n,)
    leading guesses standing, next codes (n, m), their log-probs (n, m)): position j holds the guess
    where it stood, else the code drawn there.
    """
    n, m, _ = proc.shape
    logp = torch.log_softmax(proc, dim=-1)
    if cfg.temperature == 0:
        tok = proc.argmax(-1)
        stands = (tok[:, :-1] == guess) & valid
    else:
        p_guess = logp[:, :-1].gather(-1, guess[..., None]).squeeze(-1).exp()
        stands = (_uniform(n, m - 1, generator, proc.device) < p_guess) & valid
        fell = torch.zeros_like(proc[:, :-1], dtype=torch.bool).scatter_(-1, guess[..., None], True)
        fell &= (valid & ~stands)[..., None]
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
    image slice, their log-probs). `dec` must hold `settle` (per-row rollback) and `compact`.

    Each row keeps its own place `k` (codes before it decided) and its own guesses; a forward feeds
    every unfinished row's window (right-padded with masked slots to the longest), and each row keeps
    what it accepted. Columns index L of `codes`, `logprobs` and `guess` are a sink for the writes of
    rows with nothing to write, so that no step needs the host to look at the data."""
    if not (hasattr(dec, "settle") and hasattr(dec, "compact")):
        raise EarlError(f"schedule 'jacobi' needs a decoder that can roll its KV cache back; "
                        f"{type(dec).__name__} cannot: use decoder 'hf', 'static' or 'lean'")
    L, device = h * w, dec.logits.device
    R = dec.logits.shape[0]
    rep = R // n
    codes = torch.zeros((n, L + 1), dtype=torch.long, device=device)
    logprobs = torch.zeros((n, L + 1), device=device)
    guess = torch.zeros((n, L + 1), dtype=torch.long, device=device)  # next forward's guesses
    known = torch.full((n,), -1, dtype=torch.long, device=device)  # a row has guesses for codes <= known
    tok, lp = sample_from(_processed(dec.logits[:, None], n, code_range, cfg)[:, 0], cfg, generator)
    k = torch.zeros(n, dtype=torch.long, device=device)  # codes < k are decided; tok/lp hold code k
    fresh = torch.ones(n, dtype=torch.bool, device=device)  # rows whose tok is a code not stored yet
    offs = torch.arange(window, device=device)[None]  # (1, W)
    sink = torch.full_like(k, L)
    while True:
        at = torch.where(fresh, k, sink)[:, None]
        codes.scatter_(1, at, tok[:, None])
        logprobs.scatter_(1, at, lp[:, None])
        act = k < L - 1  # rows with codes still to decide
        if not bool(act.any()):
            return codes[:, :L], logprobs[:, :L]
        end = torch.clamp(k + window, max=L - 1)  # a row feeds codes k .. end-1 (the last code is never fed)
        m = torch.where(act, end - k, 0)
        j = k[:, None] + offs  # (n, W): the code of each window place
        valid = offs < m[:, None]
        jc = j.clamp(max=L)
        guess.scatter_(1, torch.where(act, k, sink)[:, None], codes.gather(1, k[:, None]))  # the decided code
        fill = guess.gather(1, torch.maximum(known, k)[:, None])  # codes never predicted repeat the last guess
        g = torch.where(jc > known[:, None], fill, guess.gather(1, jc))
        guess.scatter_(1, torch.where(valid, jc, L), g)
        known = torch.where(act, torch.maximum(known, end - 1), known)
        # slots: code j, then its <eol> where a row of the image ends
        row_end = ((j + 1) % w == 0).long()
        slot = offs + j // w - (k // w)[:, None]
        after = slot + row_end  # (n, W): the slot whose logits predict code j + 1
        width = int((after.gather(1, (m - 1).clamp(min=0)[:, None]) + 1).masked_fill(~act[:, None], 0).max())
        ids = torch.full((n, width + 1), eol, dtype=torch.long, device=device)
        keep = torch.zeros((n, width + 1), dtype=torch.long, device=device)
        ids.scatter_(1, torch.where(valid, slot, width), g + code_range[0])
        keep.scatter_(1, torch.where(valid, slot, width), 1)
        keep.scatter_(1, torch.where(valid & (row_end == 1), slot + 1, width), 1)
        ids, keep = ids[:, :width], keep[:, :width]
        if dec.capacity is not None and dec.slots + width > dec.capacity:
            dec.compact()  # masked slots of rejected guesses make room
        logits = dec.feed(ids.repeat(rep, 1), keep.repeat(rep, 1), all_logits=True)  # (R, width, V)
        read = after.clamp(max=width - 1).repeat(rep, 1)
        picked = logits.gather(1, read[..., None].expand(-1, -1, logits.shape[-1]))
        proc = _processed(picked, n, code_range, cfg)  # (n, W, K): codes k+1 .. k+W
        accepted, pred, plp = _verify(proc, g[:, 1:], offs[:, :-1] < (m - 1)[:, None], cfg, generator)
        a = torch.where(act, accepted, 0)
        nxt = (j + 1).clamp(max=L)
        took = act[:, None] & (offs < a[:, None])  # the guesses that stood are codes now
        codes.scatter_(1, torch.where(took, nxt, L), pred)
        logprobs.scatter_(1, torch.where(took, nxt, L), plp)
        last = after.gather(1, a[:, None]).squeeze(1)  # the slot after the last code kept
        dec.settle(torch.where(act, last + 1, 0).repeat(rep))
        dec.logits = logits[torch.arange(R, device=device), last.clamp(max=width - 1).repeat(rep)]
        rest = act[:, None] & (offs >= a[:, None]) & valid  # predictions after a wrong guess: next guesses
        guess.scatter_(1, torch.where(rest, nxt, L), proc.argmax(-1))
        known = torch.where(act, torch.maximum(known, end), known)
        tok, lp = pred.gather(1, a[:, None]).squeeze(1), plp.gather(1, a[:, None]).squeeze(1)
        fresh = act
        k = torch.where(act, k + a + 1, k)
