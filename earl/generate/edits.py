"""The edit sampler: an image generated token by token, written for image tokens.

Why not `transformers.generate`: image positions must be sampled from the image-id slice only,
`<eol>` must land exactly at row ends, classifier-free guidance needs conditional and
unconditional rows in *one* forward pass, and RL needs the log-probability of each sampled token
under the distribution it was actually drawn from. The loop is explicit:

    prefill(prompts)                      one forward over [cond rows; uncond rows], KV cache filled
    [think]  text tokens, cond rows only  uncond rows feed masked padding, so they stay unconditional
    header   <boi> "h*w" <img>            forced, one forward for all of it
    image    h rows x w codes             CFG-combined logits on the image slice -> filter -> sample;
                                          the row's last code and its <eol> go in together
    tail     <eof> <eoi> <eos>            appended, no forward needed

CFG: `logits = u + s * (c - u)` on the image slice; the unconditional prompt is the conditional
one with the instruction dropped. At s = 1 the unconditional rows are not computed at all.

`schedule="jacobi"` replaces the image loop: each forward verifies a window of guessed codes and keeps
the prefix the model agrees with (`earl.generate.jacobi`): greedy, the same codes; sampled, the same
distribution (another random stream).

The forward that carries the KV cache is picked by one argument, `decoder=` ("auto" | "hf" | "static" |
"compiled" | "lean", `choose_decoder`); what a static or compiled decoder keeps between calls lives in
a `DecodeCache` the caller owns (`cache=`), never on the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from earl.errors import EarlError
from earl.generate.budget import check_prompt_lengths, decoding_capacity
from earl.generate.decoders import DecodeCache, _Decoder, open_decoder
from earl.generate.jacobi import check_schedule, jacobi_grid
from earl.generate.sampling import (
    Generators,
    SamplingConfig,
    _image_code_sampler,
    process_logits,
    sample_from,
)
from earl.layout import EditLayout

PLAIN_SAMPLING = SamplingConfig()  # temperature 1, no CFG, no filter


@dataclass
class GenerationOutput:
    """Per row of the batch (prompts x num_samples, prompt-major)."""

    completions: torch.Tensor  # (N, T) ids after the prompt: [<think> ... </think>] image <eos>
    logprobs: torch.Tensor  # (N, T) log-prob of each sampled token under the distribution it was drawn from; 0 where forced
    sampled_mask: torch.Tensor  # (N, T) True where the token was sampled (False: forced structure or padding)
    codes: torch.Tensor  # (N, h, w) generated code grids
    image_positions: torch.Tensor  # (N, T) True at image-code positions
    thinking: list[str | None] = field(default_factory=list)
    forward_passes: int = 0  # forwards the batch ran, prefill included (what the schedule cost)

    @property
    def tokens_per_pass(self) -> float:
        """Completion tokens per forward, per row (the prefill counted as a forward)."""
        return self.completions.shape[1] / self.forward_passes if self.forward_passes else 0.0


@dataclass
class GenerationCost:
    """What a run of `sample_edits` calls cost in forwards, summed over its batches, for a results file
    to show beside the success it bought.

    `forward_passes`: forwards run in all (a batch's forward counts once, whatever its rows);
    `forward_passes_per_image`: over the images, the mean of the forwards of the call that made each
    (the sequential steps an image waited for: what a schedule saves); `tokens_per_pass`: completion
    tokens per forward, per row (`GenerationOutput.tokens_per_pass` over the whole run).
    """

    schedule: str = "sequential"
    window: int | None = None
    images: int = 0
    forward_passes: int = 0
    image_passes: int = 0  # sum over images of their call's forwards
    tokens: int = 0  # sum over calls of the completion length of a row

    def add(self, out: GenerationOutput) -> GenerationOutput:
        """Count one call's output (returned, so a caller can count where it uses it)."""
        self.add_counts(len(out.codes), out.forward_passes, out.completions.shape[1])
        return out

    def add_counts(self, images: int, forward_passes: int, tokens: int) -> None:
        """Count a call that made `images` images in `forward_passes` forwards, `tokens` completion tokens each."""
        self.images += images
        self.forward_passes += forward_passes
        self.image_passes += forward_passes * images
        self.tokens += tokens

    def to_dict(self) -> dict:
        return {"schedule": self.schedule, "window": self.window, "images": self.images,
                "forward_passes": self.forward_passes,
                "forward_passes_per_image": self.image_passes / self.images if self.images else None,
                "tokens_per_pass": self.tokens / self.forward_passes if self.forward_passes else None}



# ---- the sampler ----------------------------------------------------------------------------
def check_edit_inputs(instructions: list[str], source_codes: torch.Tensor, generator: Generators) -> None:
    """What every edit sampler (earl's, `earl.generate.vllm_engine`'s) refuses before it starts: a count of
    instructions other than of source grids, of per-row generators other than of rows, an empty instruction."""
    if len(instructions) != source_codes.shape[0]:
        raise EarlError(f"got {len(instructions)} instructions for {source_codes.shape[0]} source images")
    if isinstance(generator, (list, tuple)) and len(generator) != len(instructions):
        raise EarlError(f"got {len(generator)} generators for {len(instructions)} rows (one per row, or one in all)")
    for ins in instructions:
        if not ins or not ins.strip():
            raise EarlError("instruction is empty")


@torch.no_grad()
def sample_edits(
    backbone,
    layout: EditLayout,
    instructions: list[str],
    source_codes: torch.Tensor,
    cfg: SamplingConfig = PLAIN_SAMPLING,
    think: bool = False,
    generator: Generators = None,
    decoder: str = "auto",
    cache: DecodeCache | None = None,
    pixels_per_code: int | None = None,
    schedule: str = "sequential",
    window: int | None = None,
) -> GenerationOutput:
    """Sample one edit per (instruction, source grid). Repeat inputs for several samples per prompt.

    `decoder`: "auto" | "hf" | "static" | "compiled" | "lean" (`choose_decoder` says what each is and
    what "auto" picks: `earl.lean` on a CPU where it reproduces the backbone, else the Hugging Face
    forward with a growing cache). All give the same tokens up to float rounding.
    `cache`: a `DecodeCache` the caller keeps across calls, so that "static" and "compiled" reuse their
    KV cache and compiled step (None: this call makes its own; nothing is kept on the backbone).
    `generator`: one `torch.Generator` for the batch, or a list of one per row (on the rows' device),
    so that a row's draws depend on its own seed only, not on which rows share its batch (resumable
    evaluations seed each sample by its id). Per-row generators use the PyTorch draw, not the fused one.
    `pixels_per_code`: the image tokenizer's downsample factor, so that an image too large for the
    model is refused with its largest size that fits in pixels too, not only as a code grid.
    `schedule`: "sequential" (one code per forward) or "jacobi" with `window` (codes fed and verified
    per forward, `earl.generate.jacobi`): the same greedy codes, or the same sampling distribution, in
    fewer forwards. Each row advances by its own accepted count and draws the same count from its
    generator per forward, so with per-row generators a row's sample is independent of its batch under
    "jacobi" too. The result's `forward_passes` says how many forwards the batch ran (the most any
    of its rows takes alone).
    """
    check_edit_inputs(instructions, source_codes, generator)
    device = next(backbone.parameters()).device
    N, h, w = source_codes.shape
    window = check_schedule(schedule, window, cfg, h, w)
    check_prompt_lengths(backbone, layout, instructions, h, w, cfg, think, pixels_per_code)
    v = layout.vocab
    img_start, img_stop = v.image_ids

    prompts = [layout.prompt(ins, src) for ins, src in zip(instructions, source_codes.cpu())]
    if cfg.uses_cfg:
        prompts += [layout.prompt(None, src) for src in source_codes.cpu()]
    batch = {k: t.to(device) for k, t in layout.pad_prompts(prompts).items()}
    capacity = decoding_capacity(layout, h, w, cfg, think)
    if schedule == "jacobi":  # room for one window (its codes and <eol>s) beyond the most a row holds live
        capacity += 2 * window
    dec = open_decoder(backbone, batch, capacity, decoder, cache)
    R = batch["input_ids"].shape[0]

    pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (ids, logprobs, sampled) chunks (N, n)

    def forced(ids: list[int]):
        t = torch.tensor(ids, device=device)[None].expand(N, -1)
        pieces.append((t, torch.zeros(t.shape, device=device), torch.zeros(t.shape, dtype=torch.bool, device=device)))

    thinking: list[str | None] = [None] * N
    if think:
        thinking = _sample_thinking(dec, layout, N, R, cfg, generator, pieces, device)

    forced(layout.header(h, w))
    dec.feed(torch.tensor(layout.header(h, w), device=device)[None].expand(R, -1))

    if schedule == "jacobi":
        flat, lps = jacobi_grid(dec, N, h, w, window, cfg, (img_start, img_stop), v.eol, generator)
        codes = flat.view(N, h, w)
        for r in range(h):
            ids = codes[:, r] + img_start
            pieces.append((ids, lps[:, r * w : (r + 1) * w], torch.ones_like(ids, dtype=torch.bool)))
            forced([v.eol])
    else:
        codes = _sequential_grid(dec, N, R, h, w, cfg, generator, pieces, forced, layout)
    forced([v.eof, v.eoi, layout.ids.eos])

    completions = torch.cat([p[0] for p in pieces], dim=1)
    logprobs = torch.cat([p[1] for p in pieces], dim=1)
    sampled = torch.cat([p[2] for p in pieces], dim=1)
    image_pos = v.is_image(completions) & sampled
    return GenerationOutput(completions.cpu(), logprobs.cpu(), sampled.cpu(), codes.cpu(), image_pos.cpu(), thinking,
                            forward_passes=dec.passes)


def _sequential_grid(dec: _Decoder, N: int, R: int, h: int, w: int, cfg: SamplingConfig, generator, pieces, forced,
                     layout: EditLayout) -> torch.Tensor:
    """One code per forward, the row's last code and its <eol> fed together; (N, h, w) codes."""
    v = layout.vocab
    img_start, img_stop = v.image_ids
    device = dec.logits.device
    codes = torch.empty((N, h, w), dtype=torch.long, device=device)
    eol = torch.full((R, 1), v.eol, dtype=torch.long, device=device)
    sample_codes = _image_code_sampler(device, cfg, N, (img_start, img_stop), generator)
    for r in range(h):
        for c in range(w):
            tok, lp = sample_codes(dec.logits)  # (N,), (N,)
            codes[:, r, c] = tok
            ids = (tok + img_start)[:, None]
            pieces.append((ids, lp[:, None], torch.ones_like(ids, dtype=torch.bool)))
            ids_r = ids.repeat(R // N, 1)  # same token for the unconditional twin
            last_in_row = c == w - 1
            if last_in_row and r == h - 1:
                break  # nothing left to sample: no forward needed
            dec.feed(torch.cat([ids_r, eol], dim=1) if last_in_row else ids_r)
        forced([v.eol])
    return codes


def thinking_vocab_mask(layout: EditLayout, vocab_size: int, device) -> torch.Tensor:
    """(V,) True for ids a reasoning text may contain: text tokens and </think>, no structure or images."""
    allowed = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    allowed[: layout.vocab.image_offset] = True
    ids, v = layout.ids, layout.vocab
    for special in (ids.pad, ids.bos, ids.eos, ids.think_start, v.boi, v.img, v.eol, v.eof, v.eoi):
        allowed[special] = False
    if layout.think_format != "tokens":  # the block closes with plain text, not with this id
        allowed[ids.think_end] = False
    return allowed


def _sample_thinking(dec: _Decoder, layout: EditLayout, N: int, R: int, cfg: SamplingConfig, generator, pieces,
                     device) -> list[str | None]:
    """Sample `<think> text </think>` for the conditional rows; rows that finish early feed masked padding.

    With the layout's `think_format` "cot_text" the block opens and closes with plain text: the opening is
    forced, a row is done once its reasoning decodes to text holding the closing marker, and rows still
    open when the budget is spent get the closing tokens forced."""
    ids = layout.ids
    text_close = layout.think_format != "tokens"
    allowed = thinking_vocab_mask(layout, dec.logits.shape[-1], device)
    opening = torch.tensor(layout.think_open(), device=device)[None]
    first = len(pieces)
    pieces.append((opening.expand(N, -1), torch.zeros(N, opening.shape[1], device=device),
                   torch.zeros(N, opening.shape[1], dtype=torch.bool, device=device)))
    active = torch.cat([torch.ones(N, dtype=torch.bool, device=device), torch.zeros(R - N, dtype=torch.bool, device=device)])
    dec.feed(opening.expand(R, -1), active)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    written: list[list[int]] = [[] for _ in range(N)]  # each row's sampled reasoning ids (text_close)
    for step in range(cfg.max_think_tokens):
        logits = dec.logits[:N].masked_fill(~allowed, float("-inf"))
        forced_close = step == cfg.max_think_tokens - 1 and not text_close
        if forced_close:  # budget spent: close the block
            logits = torch.full_like(logits, float("-inf"))
            logits[:, ids.think_end] = 0.0
        tok, lp = sample_from(process_logits(logits, cfg), cfg, generator)
        tok = torch.where(done, ids.pad, tok)
        # the budget's forced </think> is structure, not a sample: it carries no log-prob and no loss
        sampled = ~done if not forced_close else torch.zeros_like(done)
        lp = torch.where(sampled, lp, torch.zeros_like(lp))
        pieces.append((tok[:, None], lp[:, None], sampled[:, None]))
        row_active = torch.cat([~done, torch.zeros(R - N, dtype=torch.bool, device=device)])
        full = torch.cat([tok, torch.full((R - N,), ids.pad, device=device)])[:, None]
        if text_close:
            for i in (~done).nonzero().flatten().tolist():
                written[i].append(int(tok[i]))
            done = done | torch.tensor([layout.think_closed(w) for w in written], device=device)
        else:
            done = done | (tok == ids.think_end)
        dec.feed(full, row_active)
        if bool(done.all()):
            break
    if text_close and not bool(done.all()):  # budget spent: the closing text, forced where still open
        close = torch.tensor(layout.think_close(), device=device)[None].expand(N, -1)
        close = torch.where(done[:, None], torch.full_like(close, ids.pad), close)
        pieces.append((close, torch.zeros(close.shape, device=device), torch.zeros(close.shape, dtype=torch.bool,
                                                                                     device=device)))
        pad_rows = torch.full((R - N, close.shape[1]), ids.pad, device=device)
        dec.feed(torch.cat([close, pad_rows]), torch.cat([~done, torch.zeros(R - N, dtype=torch.bool, device=device)]))
    text = torch.cat([p[0] for p in pieces[first:]], dim=1)
    return [layout.parse_thinking([t for t in row.tolist() if t != ids.pad]) for row in text]

