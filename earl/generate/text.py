"""The one text-decoding loop: a left-padded batch of prompts continued token by token on a
cache-carrying decoder (`open_decoder`), greedy or sampled row by row.

Everything that writes text runs it: the reward model's verdicts (greedy, with their logits for the
readouts; sampled for Avg@k), GCPO's sampled traces (with the logits of a few watched words), the
decomposer's plans, and the served reward model, whose rows each bring their own temperature, top_p,
seed, token budget, stop strings and cancellation flag.

A row ends at `eos` or one of its stop ids (the token is kept), at a stop string in its decoded
text, at its token budget, or when its caller is gone; after that it writes `pad`. Every row is
drawn at every step, ended or not, so a row's random draws do not depend on when the others end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from earl.errors import EarlError
from earl.generate.decoders import DecodeCache, open_decoder
from earl.generate.sampling import Generators, SamplingConfig, process_logits
from earl.layout import positions_from_mask


@dataclass(frozen=True)
class TextSampling:
    """How each row's next token is chosen: the argmax where its temperature is 0, else a draw from
    softmax(logits / temperature) cut to its `top_p` mass. `temperature` and `top_p` are one value
    for every row or one per row. `generator`: one for the batch (the sampled rows are drawn together),
    or one per row, so that a row's text depends on its own seed alone, not on its batch-mates."""

    temperature: float | Sequence[float] = 0.0
    top_p: float | Sequence[float] = 1.0
    generator: Generators = None

    def per_row(self, rows: int) -> list[SamplingConfig]:
        """One `SamplingConfig` per row (checked: temperature >= 0, top_p in (0, 1])."""
        temps = _per_row(self.temperature, rows, "temperature")
        top_ps = _per_row(self.top_p, rows, "top_p")
        if isinstance(self.generator, (list, tuple)) and len(self.generator) != rows:
            raise EarlError(f"got {len(self.generator)} generators for {rows} rows (one per row, or one in all)")
        return [SamplingConfig(temperature=float(t), top_p=float(p)) for t, p in zip(temps, top_ps)]


@dataclass(frozen=True)
class TextStops:
    """When each row ends. `budgets`: its most new tokens (one for all rows, or one per row).
    `stop_strings`: per row, strings that end it once its decoded text (`decode(ids)`) holds one.
    `cancel`: per row, an event set when its caller is gone."""

    eos: int
    pad: int
    budgets: int | Sequence[int]
    stop_ids: tuple[int, ...] = ()
    stop_strings: Sequence[Sequence[str]] = ()
    decode: Callable[[list[int]], str] | None = None
    cancel: Sequence[threading.Event] = ()


@dataclass
class TextOutput:
    """Per row of the batch, in its order."""

    ids: torch.Tensor  # (B, T) new ids, `pad` after the row ended; T: steps until every row ended
    lengths: list[int]  # tokens each row wrote, its closing eos or stop id included
    finished: list[bool]  # the row ended itself (eos, a stop id or a stop string), not at its budget or cancelled
    logprobs: torch.Tensor | None  # (B, T) log-prob of each token under the distribution it was chosen from
    logits: torch.Tensor | None  # (B, T, V), or (B, T, len(keep_logits)): the raw logits each token was chosen from

    def row(self, i: int) -> list[int]:
        """Row i's tokens, without the padding after its end."""
        return self.ids[i, : self.lengths[i]].tolist()


def _per_row(value, rows: int, name: str) -> list:
    if isinstance(value, (int, float)):
        return [value] * rows
    value = list(value)
    if len(value) != rows:
        raise EarlError(f"got {len(value)} values of {name} for {rows} rows (one per row, or one in all)")
    return value


def left_pad(prompts: list[list[int]], pad: int, device) -> dict[str, torch.Tensor]:
    """Token lists as a left-padded batch (`input_ids`, `attention_mask`, `position_ids`) on `device`."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):], mask[i, L - len(p):] = torch.tensor(p), 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "position_ids": positions_from_mask(mask).to(device)}


def draw(logits: torch.Tensor, cfgs: list[SamplingConfig], generator: Generators,
         with_logprobs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token per row of (B, V) float logits, as `cfgs` (one per row) and `generator` say; and,
    when asked, its log-prob under the distribution it was chosen from (temperature and top-p applied).

    Rows that share their settings are processed together, as one tensor: the same float steps, hence
    the same draws, whatever the other rows ask for."""
    tok = logits.argmax(-1)
    processed = logits
    sampled = [i for i, c in enumerate(cfgs) if c.temperature > 0]
    if sampled:
        same = all(c == cfgs[0] for c in cfgs)
        processed = process_logits(logits, cfgs[0]) if same else torch.stack(
            [process_logits(logits[i : i + 1], c)[0] if c.temperature > 0 else logits[i] for i, c in enumerate(cfgs)])
        probs = processed.softmax(-1)
        if isinstance(generator, (list, tuple)):
            for i in sampled:
                tok[i] = torch.multinomial(probs[i : i + 1], 1, generator=generator[i])[0, 0]
        elif len(sampled) == len(cfgs):
            tok = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            at = torch.tensor(sampled, device=logits.device)
            tok[at] = torch.multinomial(probs[at], 1, generator=generator)[:, 0]
    if not with_logprobs:
        return tok, None
    return tok, torch.log_softmax(processed, -1).gather(-1, tok[:, None])[:, 0]


def _says_stop(out: list[torch.Tensor], rows: list[int], stops: TextStops) -> list[int]:
    """Which of `rows` now hold one of their stop strings in their decoded text."""
    if not rows:
        return []
    written = torch.stack(out, dim=1)
    return [i for i in rows if any(s and s in stops.decode(written[i].tolist()) for s in stops.stop_strings[i])]


@torch.no_grad()
def decode_text(backbone, batch: dict[str, torch.Tensor], stops: TextStops, sampling: TextSampling = TextSampling(),
                logprobs: bool = False, keep_logits: bool | Sequence[int] = False, decoder: str = "auto",
                cache: DecodeCache | None = None) -> TextOutput:
    """Continue a left-padded batch (`input_ids`, `attention_mask`, `position_ids`) until every row ended.

    `keep_logits`: True keeps the (B, T, V) logits of every step, a list of token ids only those columns
    (a few watched words cost nothing next to the forward). `decoder`, `cache`: as `open_decoder` takes them."""
    B, device = batch["input_ids"].shape[0], batch["input_ids"].device
    cfgs = sampling.per_row(B)
    budgets = torch.tensor(_per_row(stops.budgets, B, "budgets"), device=device)
    if stops.stop_strings and (len(stops.stop_strings) != B or stops.decode is None):
        raise EarlError("stop strings need one tuple per row and a decode function")
    ends = torch.tensor([stops.eos, *stops.stop_ids], device=device)
    cols = None if isinstance(keep_logits, bool) else torch.tensor(list(keep_logits), device=device)
    horizon = int(budgets.max())
    dec = open_decoder(backbone, batch, horizon, decoder, cache)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    finished, lengths = done.clone(), torch.zeros(B, dtype=torch.long, device=device)
    out, lps, kept = [], [], []
    for step in range(horizon):
        logits = dec.logits.float()
        tok, lp = draw(logits, cfgs, sampling.generator, logprobs)
        tok = torch.where(done, torch.full_like(tok, stops.pad), tok)
        out.append(tok)
        if logprobs:
            lps.append(torch.where(done, torch.zeros_like(lp), lp))
        if keep_logits is not False:
            kept.append(logits if cols is None else logits[:, cols])
        live = ~done
        lengths += live.long()
        ended = live & torch.isin(tok, ends)
        if stops.stop_strings:
            said = _says_stop(out, [i for i in live.nonzero()[:, 0].tolist() if stops.stop_strings[i]], stops)
            ended[said] = True
        finished |= ended
        done |= ended | (lengths >= budgets)
        if stops.cancel:
            done |= torch.tensor([c.is_set() for c in stops.cancel], device=device)
        if bool(done.all()) or step == horizon - 1:
            break
        dec.feed(tok[:, None])
    return TextOutput(torch.stack(out, dim=1), lengths.tolist(), finished.tolist(),
                      torch.stack(lps, dim=1) if logprobs else None,
                      torch.stack(kept, dim=1) if keep_logits is not False else None)


def greedy_text(backbone, batch: dict[str, torch.Tensor], max_new_tokens: int, eos: int, pad: int,
                decoder: str = "auto", keep_logits: bool = True,
                cache: DecodeCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy continuation of a left-padded batch, written as `generate(do_sample=False)` writes it:
    (B, T) new ids, `pad` after a row's `eos`, T the steps until every row ended or the budget; and,
    with `keep_logits`, the raw (B, T, V) logits each id was chosen from (what `output_logits=True`
    returns), else None. `decoder`, `cache`: as `open_decoder` takes them."""
    got = decode_text(backbone, batch, TextStops(eos, pad, max_new_tokens), keep_logits=keep_logits,
                      decoder=decoder, cache=cache)
    return got.ids, got.logits


def sample_traces_watching(model, prompts: list[list[int]], n: int, temperature: float, max_new_tokens: int,
                           eos: int, pad: int, generator: torch.Generator | None = None,
                           watch: list[int] | None = None, decoder: str = "auto",
                           cache: DecodeCache | None = None) -> tuple[list[list[int]], list[torch.Tensor] | None]:
    """n sampled completions per prompt (prompt-major), each ending at eos (kept) or the token budget;
    and, with `watch`, each completion's raw logits (before the temperature) of the `watch` tokens at
    every step it sampled: one (len(completion), len(watch)) CPU tensor per row, else None.
    Why: a score read as an expectation (`gcpo.score: expected`) needs the distribution the score
    word was drawn from. `decoder`, `cache`: as `open_decoder` takes them."""
    rows = [p for p in prompts for _ in range(n)]
    batch = left_pad(rows, pad, next(model.parameters()).device)
    got = decode_text(model, batch, TextStops(eos, pad, max_new_tokens), TextSampling(temperature, 1.0, generator),
                      keep_logits=watch if watch is not None else False, decoder=decoder, cache=cache)
    traces = [got.row(i) for i in range(len(rows))]
    if watch is None:
        return traces, None
    seen = got.logits.cpu()
    return traces, [seen[i, : got.lengths[i]] for i in range(len(rows))]
