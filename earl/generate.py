"""`earl.generate`: a sampler written for image tokens.

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

The forward that carries the KV cache is picked by one argument, `decoder=` ("auto" | "hf" | "static" |
"compiled" | "lean", `choose_decoder`); what a static or compiled decoder keeps between calls lives in
a `DecodeCache` the caller owns (`cache=`), never on the backbone.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, LlamaForCausalLM, StaticCache

from earl.errors import EarlError
from earl.layout import EditLayout, positions_from_mask
from earl.lean import LeanLlama, unsupported_reason


@functools.cache
def _cache_argument(forward_cls: type) -> str:
    """The name a model's forward takes its KV cache by: transformers renamed `past_key_values` to
    `cache` (the old name warns on every call and goes in 5.40), while older 5.x releases, and the
    GPU machine's, know only the old one. A wrapper whose forward takes only `**kwargs` gets the name
    this transformers' own models use."""
    params = inspect.signature(forward_cls.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """`{name: cache}` for `model`'s forward, whichever name its transformers version uses."""
    return {_cache_argument(type(model)): cache}


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


@dataclass
class GenerationOutput:
    """Per row of the batch (prompts x num_samples, prompt-major)."""

    completions: torch.Tensor  # (N, T) ids after the prompt: [<think> ... </think>] image <eos>
    logprobs: torch.Tensor  # (N, T) log-prob of each sampled token under the distribution it was drawn from; 0 where forced
    sampled_mask: torch.Tensor  # (N, T) True where the token was sampled (False: forced structure or padding)
    codes: torch.Tensor  # (N, h, w) generated code grids
    image_positions: torch.Tensor  # (N, T) True at image-code positions
    thinking: list[str | None] = field(default_factory=list)


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
        from earl.kernels.sampling import cfg_sample

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


# ---- the cache-carrying decoder -------------------------------------------------------------
class _Decoder:
    """Owns the KV cache and the growing attention mask of one batched generation."""

    def __init__(self, backbone, batch: dict[str, torch.Tensor]):
        self.backbone = backbone
        self.cache = DynamicCache()
        self.mask = batch["attention_mask"]  # (R, T_so_far)
        self.next_pos = batch["position_ids"][:, -1] + 1  # (R,)
        self.logits = self._forward(batch["input_ids"], batch["position_ids"])

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=ids, attention_mask=self.mask, position_ids=pos,
                            use_cache=True, logits_to_keep=1, **cache_kwargs(self.backbone, self.cache))
        return out.logits[:, -1]  # (R, V)

    def _advance(self, ids: torch.Tensor, active: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep (R,), positions (R, n)) for fed ids, moving `next_pos` on: an inactive row's tokens are
        masked padding that keeps its position. Shared by every decoder's `feed`."""
        R, n = ids.shape
        keep = torch.ones(R, dtype=torch.long, device=ids.device) if active is None else active.long()
        pos = self.next_pos[:, None] + torch.arange(n, device=ids.device)[None] * keep[:, None]
        self.next_pos = self.next_pos + n * keep
        return keep, pos

    def feed(self, ids: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Append (R, n) tokens; rows with active=False get masked padding and keep their positions."""
        keep, pos = self._advance(ids, active)
        self.mask = torch.cat([self.mask, keep[:, None].expand(ids.shape)], dim=1)
        self.logits = self._forward(ids, pos)
        return self.logits


class DecodeCache:
    """What the `static` and `compiled` decoders keep between generations; the caller owns it.

    A captured CUDA graph is recorded against its buffers' addresses, so a loop that generates batch
    after batch reuses both the compiled step and the `StaticCache` (zeroed between calls of the same
    shape) to replay the graph instead of compiling and recording it again. Make one per backbone and
    pass it as `cache=` to every call of the loop (an evaluation, a benchmark, a rollout loop); without
    one each call builds its own and drops it on return. Nothing is stored on the backbone.

    Holds the compiled step and one `StaticCache` (the last shape asked for: bounded memory). `hf` and
    `lean` keep nothing here (the lean forward reads the weights afresh every generation, so an in-place
    update of the policy between calls is seen). One generation at a time.
    """

    def __init__(self):
        self.backbone = None  # the backbone it was first used with; another one is refused
        self._step = None
        self._static: tuple[tuple, StaticCache] | None = None

    def _own(self, backbone) -> None:
        if self.backbone is None:
            self.backbone = backbone
        elif self.backbone is not backbone:
            raise EarlError("this DecodeCache holds another backbone's compiled step and KV cache: "
                            "make one DecodeCache per backbone")

    def compiled_step(self, backbone):
        """`torch.compile(backbone, mode="reduce-overhead", fullgraph=True)`, made once."""
        self._own(backbone)
        if self._step is None:
            self._step = torch.compile(backbone, mode="reduce-overhead", fullgraph=True)
        return self._step

    def static_cache(self, backbone, rows: int, length: int) -> StaticCache:
        """The kept `StaticCache`, zeroed, when its shape matches; else a new one, which replaces it."""
        self._own(backbone)
        p = next(backbone.parameters())
        key = (rows, length, p.dtype, p.device)
        if self._static is not None and self._static[0] == key:
            self._static[1].reset()
            return self._static[1]
        self._static = None  # free the old buffers before allocating the new ones
        cache = StaticCache(config=backbone.config, max_cache_len=length)
        self._static = (key, cache)
        return cache

    def clear(self) -> None:
        """Drop the compiled step and the KV cache (the next call builds them again)."""
        self.backbone, self._step, self._static = None, None, None


class _StaticDecoder(_Decoder):
    """The same decoder over buffers sized once for the whole generation.

    The KV cache (`StaticCache`) and the attention mask are allocated for prompt + every token the
    generation can feed, and each forward writes into them at `cache_position`. Every one-token
    decode forward then has identical shapes and touches only fixed buffers, which is what graph
    capture needs: with `compiled` (a CUDA device) that forward goes through
    `torch.compile(mode="reduce-overhead")`, which records it as a CUDA graph and replays it, so a
    decode step costs one graph launch instead of hundreds of kernel launches (small models are
    launch-bound). The prefill and the two-token row-end feeds run eagerly. The cache and the compiled
    step come from `store` (a `DecodeCache`), so a caller can keep them across generations.
    """

    def __init__(self, backbone, batch: dict[str, torch.Tensor], capacity: int, store: DecodeCache,
                 compiled: bool = False):
        R, P = batch["input_ids"].shape
        device = batch["input_ids"].device
        self.backbone = backbone
        self.cache = store.static_cache(backbone, R, P + capacity)
        self.mask = torch.zeros(R, P + capacity, dtype=torch.long, device=device)
        self.mask[:, :P] = batch["attention_mask"]
        self.length = 0  # tokens written so far
        self.next_pos = batch["position_ids"][:, -1] + 1
        self.step = store.compiled_step(backbone) if compiled else backbone
        self.logits = self._run(backbone, batch["input_ids"], batch["position_ids"])

    def _run(self, fn, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        if self.length + n > self.mask.shape[1]:
            raise EarlError(f"static decode: {self.length + n} tokens exceed the cache of {self.mask.shape[1]}")
        where = torch.arange(self.length, self.length + n, device=ids.device)
        out = fn(input_ids=ids, attention_mask=self.mask, position_ids=pos, cache_position=where, use_cache=True,
                 logits_to_keep=1, **cache_kwargs(self.backbone, self.cache))
        self.length += n
        return out.logits[:, -1].clone()  # a captured graph reuses its output buffer on the next replay

    def feed(self, ids: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        n = ids.shape[1]
        keep, pos = self._advance(ids, active)
        self.mask[:, self.length : self.length + n] = keep[:, None]
        self.logits = self._run(self.step if n == 1 else self.backbone, ids, pos)
        return self.logits


class _LeanDecoder(_Decoder):
    """The same decoder over `earl.lean.LeanLlama`: fused weights, a preallocated KV cache and mask.

    The CPU path: there a small model's step is per-op work, which this forward mostly removes (same
    logits as the Hugging Face forward up to float rounding; `tests/core/test_lean.py`).
    """

    def __init__(self, backbone, batch: dict[str, torch.Tensor], capacity: int):
        R, P = batch["input_ids"].shape
        self.net = LeanLlama(backbone, R, P + capacity)
        self.mask = torch.zeros(R, P + capacity, dtype=torch.long, device=batch["input_ids"].device)
        self.mask[:, :P] = batch["attention_mask"]
        self.next_pos = batch["position_ids"][:, -1] + 1
        self.logits = self.net.forward(batch["input_ids"], batch["position_ids"], self.mask[:, :P])

    def feed(self, ids: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        t0, n = self.net.length, ids.shape[1]
        keep, pos = self._advance(ids, active)
        self.mask[:, t0 : t0 + n] = keep[:, None]
        self.logits = self.net.forward(ids, pos, self.mask[:, : t0 + n])
        return self.logits


_reported: set[str] = set()  # what was said once: why `auto` keeps the Hugging Face forward, a compile per call


LEAN_AUTO_MAX_PARAMS = 1_000_000_000  # the lean forward copies the layer weights once per generation

DECODERS = ("auto", "hf", "static", "compiled", "lean")


def choose_decoder(backbone, device: torch.device | str, decoder: str = "auto") -> str:
    """The decoder a generation of `backbone` on `device` runs: "hf", "static", "compiled" or "lean".

    The choices: `hf` is the Hugging Face forward with a growing `DynamicCache`; `static` the same
    forward over a KV cache and mask preallocated for the whole generation; `compiled` that, with the
    one-token decode forward captured as a CUDA graph by `torch.compile(mode="reduce-overhead")`
    (CUDA only); `lean` the `earl.lean` forward (only for a backbone it reproduces). All give the same
    tokens up to float rounding. A named choice is checked and kept (an error says why it cannot run);
    `auto` picks:

    - on a CPU, `lean` for a backbone it reproduces with at most `LEAN_AUTO_MAX_PARAMS` parameters
      (it copies the layer weights once per generation), else `hf`, said once. Why: in
      `docs/PERFORMANCE.md` (shapes-tiny, 2 cores) it made earl's CFG sampling 1.45-1.5x faster at
      batch 16 and 1.3-1.65x at batch 1 than the Hugging Face forward, and the reward model's greedy
      verdicts 1.81x and GCPO's sampler 1.66x faster. Not `static`: there it measured within noise
      of `hf` (51.8-55.1 against 57.2-58.2 ms per image at batch 16); a CPU step is per-op work,
      not kernel launches.
    - elsewhere (a GPU), `hf`. `compiled` is the GPU's candidate (one graph launch per decode step
      instead of hundreds of kernel launches), but it is unmeasured (`docs/PERFORMANCE.md`,
      `docs/KERNELS.md`: no GPU run yet), costs a compilation per process and a graph recording per
      batch shape, and pays off only with a caller-owned `DecodeCache`: so it is asked for by name.
    """
    if decoder not in DECODERS:
        raise EarlError(f"decoder {decoder!r}: expected one of {', '.join(DECODERS)}")
    device = torch.device(device)
    if decoder == "compiled" and device.type != "cuda":
        raise EarlError(f"decoder 'compiled' captures the decode step as a CUDA graph and needs a CUDA device, but "
                        f"the backbone is on {device.type}; 'static' runs the same preallocated cache eagerly")
    if decoder == "lean":
        why = unsupported_reason(backbone)
        if why is not None:
            raise EarlError(f"decoder 'lean' asked for, but {why}; 'hf' (or 'auto') runs any backbone")
    if decoder != "auto":
        return decoder
    if device.type != "cpu" or sum(p.numel() for p in backbone.parameters()) > LEAN_AUTO_MAX_PARAMS:
        return "hf"
    why = unsupported_reason(backbone)
    if why is not None and why not in _reported:
        _reported.add(why)
        log.info("lean CPU decoder off (%s): the Hugging Face forward decodes", why)
    return "lean" if why is None else "hf"


def open_decoder(backbone, batch: dict[str, torch.Tensor], capacity: int, decoder: str = "auto",
                 cache: DecodeCache | None = None) -> _Decoder:
    """A cache-carrying decoder over a left-padded batch (`EditLayout.pad_prompts`'s keys): `.logits`
    (R, V) at the last position, `.feed(ids (R, n), active)` appends up to `capacity` tokens in all.
    `decoder`: one of `DECODERS`, resolved by `choose_decoder`; `cache`: a caller-owned `DecodeCache`
    that the static and compiled decoders reuse (None: a fresh one, dropped with the decoder).
    For generation loops beside `sample_edits` (the reward model's traces)."""
    kind = choose_decoder(backbone, batch["input_ids"].device, decoder)
    if kind == "lean":
        return _LeanDecoder(backbone, batch, capacity)
    if kind in ("static", "compiled"):
        if kind == "compiled" and cache is None and "compiled without a cache" not in _reported:
            _reported.add("compiled without a cache")
            log.warning("decoder 'compiled' without a DecodeCache: the step is compiled and its graph recorded "
                        "again on every call; pass cache=DecodeCache() to every call of a loop to reuse them")
        return _StaticDecoder(backbone, batch, capacity, cache if cache is not None else DecodeCache(),
                              compiled=kind == "compiled")
    return _Decoder(backbone, batch)


@torch.no_grad()
def greedy_text(backbone, batch: dict[str, torch.Tensor], max_new_tokens: int, eos: int, pad: int,
                decoder: str = "auto", keep_logits: bool = True,
                cache: DecodeCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy continuation of a left-padded batch, written as `generate(do_sample=False)` writes it:
    (B, T) new ids, `pad` after a row's `eos`, T the steps until every row ended or the budget; and,
    with `keep_logits`, the raw (B, T, V) logits each id was chosen from (what `output_logits=True`
    returns), else None. `decoder`, `cache`: as `open_decoder` takes them."""
    dec = open_decoder(backbone, batch, max_new_tokens, decoder, cache)
    B = batch["input_ids"].shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=batch["input_ids"].device)
    ids, logits = [], []
    for step in range(max_new_tokens):
        step_logits = dec.logits.float()
        nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), step_logits.argmax(-1))
        ids.append(nxt)
        if keep_logits:
            logits.append(step_logits)
        done = done | (nxt == eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        dec.feed(nxt[:, None])
    return torch.stack(ids, dim=1), torch.stack(logits, dim=1) if keep_logits else None


def sample_traces(model, prompts: list[list[int]], n: int, temperature: float, max_new_tokens: int, eos: int,
                  pad: int, generator: torch.Generator | None = None, decoder: str = "auto",
                  cache: DecodeCache | None = None) -> list[list[int]]:
    """n sampled completions per prompt (prompt-major), each ending at eos or the token budget.
    `decoder`, `cache`: as `open_decoder` takes them."""
    return sample_traces_watching(model, prompts, n, temperature, max_new_tokens, eos, pad, generator,
                                  decoder=decoder, cache=cache)[0]


def sample_traces_watching(model, prompts: list[list[int]], n: int, temperature: float, max_new_tokens: int,
                           eos: int, pad: int, generator: torch.Generator | None = None,
                           watch: list[int] | None = None, decoder: str = "auto",
                           cache: DecodeCache | None = None) -> tuple[list[list[int]], list[torch.Tensor] | None]:
    """`sample_traces`, and with `watch` also each completion's raw logits (before the temperature) of
    the `watch` tokens at every step it sampled: one (len(completion), len(watch)) CPU tensor per row.
    Why: a score read as an expectation (`gcpo.score: expected`) needs the distribution the score
    word was drawn from, and keeping only a few columns costs nothing next to the forward pass.
    `decoder`, `cache`: as `open_decoder` takes them ("auto": `earl.lean` on a CPU where it reproduces
    the model)."""
    rows = [p for p in prompts for _ in range(n)]
    L = max(len(p) for p in rows)
    device = next(model.parameters()).device
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(rows):
        ids[i, L - len(p):], mask[i, L - len(p):] = torch.tensor(p), 1
    ids, mask = ids.to(device), mask.to(device)
    out = [[] for _ in rows]
    seen: list[list[torch.Tensor]] = [[] for _ in rows]
    cols = torch.tensor(watch, device=device) if watch is not None else None
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    with torch.no_grad():
        batch = {"input_ids": ids, "attention_mask": mask, "position_ids": positions_from_mask(mask.cpu()).to(device)}
        dec = open_decoder(model, batch, max_new_tokens, decoder, cache)
        for step in range(max_new_tokens):
            logits = dec.logits.float()
            probs = torch.softmax(logits / temperature, -1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            kept = logits[:, cols].cpu() if cols is not None else None
            for i in torch.nonzero(~done)[:, 0].tolist():
                out[i].append(int(nxt[i]))
                if kept is not None:
                    seen[i].append(kept[i])
            done |= nxt == eos
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            dec.feed(nxt[:, None])
    if watch is None:
        return out, None
    return out, [torch.stack(s) if s else torch.zeros((0, len(watch))) for s in seen]


def decoding_capacity(layout: EditLayout, h: int, w: int, cfg: SamplingConfig, think: bool) -> int:
    """Tokens a generation can feed after its prompt: [<think> text </think>] header, h rows of w codes + <eol>."""
    thinking = len(layout.think_open()) + cfg.max_think_tokens if think else 0
    if think and layout.think_format != "tokens":  # a multi-token close is forced after the budget
        thinking += len(layout.think_close())
    return thinking + len(layout.header(h, w)) + h * (w + 1)


def context_limit(backbone) -> int | None:
    """The most positions the backbone takes (`max_position_embeddings`), or None if it names none."""
    cfg = backbone.config
    limit = getattr(cfg, "max_position_embeddings", None)
    if limit is None and getattr(cfg, "text_config", None) is not None:
        limit = getattr(cfg.text_config, "max_position_embeddings", None)
    return int(limit) if limit else None


def completion_length(layout: EditLayout, h: int, w: int, cfg: SamplingConfig, think: bool) -> int:
    """The longest completion of an h x w edit: what `decoding_capacity` feeds, then <eof> <eoi> <eos>."""
    return decoding_capacity(layout, h, w, cfg, think) + 3


def instruction_budget(backbone, layout: EditLayout, h: int, w: int, cfg: SamplingConfig, think: bool) -> int | None:
    """The most instruction tokens an h x w edit leaves room for: the context limit less <bos>, the source
    image's tokens and the completion (None: no limit known)."""
    limit = context_limit(backbone)
    if limit is None:
        return None
    return limit - len(layout.prompt(None, torch.zeros(h, w, dtype=torch.long))) - completion_length(layout, h, w, cfg,
                                                                                                       think)


def check_prompt_lengths(backbone, layout: EditLayout, instructions: list[str], h: int, w: int,
                         cfg: SamplingConfig, think: bool) -> None:
    """Refuse (EarlError) an instruction whose prompt and completion do not fit in the model's positions,
    naming the limit and the lengths in tokens."""
    limit = context_limit(backbone)
    if limit is None:
        return
    fixed = len(layout.prompt(None, torch.zeros(h, w, dtype=torch.long)))
    completion = completion_length(layout, h, w, cfg, think)
    for i, ins in enumerate(instructions):
        n = len(layout.encode_text(ins))
        if fixed + n + completion > limit:
            which = "the instruction" if len(instructions) == 1 else f"instruction {i + 1}"
            raise EarlError(
                f"{which} is too long for the model: the prompt is {fixed + n} tokens ({n} of them the "
                f"instruction) and the edit needs {completion} more, {fixed + n + completion} in all, but the "
                f"model takes at most {limit} tokens (max_position_embeddings), so an instruction may have at most "
                f"{max(limit - fixed - completion, 0)} tokens; shorten it, or ask for truncation "
                f"(EditPipeline(..., truncate_instruction=True), earl edit --truncate-instruction)")


def fit_instruction(layout: EditLayout, instruction: str, max_tokens: int) -> str:
    """The longest prefix of `instruction` (cut at a token boundary) that encodes to at most `max_tokens`."""
    if max_tokens <= 0:
        raise EarlError("no room for any instruction: the source image and the edit fill the model's positions")
    if len(layout.encode_text(instruction)) <= max_tokens:
        return instruction
    offsets = layout.tok(instruction, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    k = max_tokens
    while k > 0:
        cut = instruction[: offsets[k - 1][1]]
        if len(layout.encode_text(cut)) <= max_tokens:
            return cut
        k -= 1
    raise EarlError("the instruction cannot be truncated to fit the model's positions")


# ---- the sampler ----------------------------------------------------------------------------
@torch.no_grad()
def sample_edits(
    backbone,
    layout: EditLayout,
    instructions: list[str],
    source_codes: torch.Tensor,
    cfg: SamplingConfig = SamplingConfig(),
    think: bool = False,
    generator: Generators = None,
    decoder: str = "auto",
    cache: DecodeCache | None = None,
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
    """
    if len(instructions) != source_codes.shape[0]:
        raise EarlError(f"got {len(instructions)} instructions for {source_codes.shape[0]} source images")
    if isinstance(generator, (list, tuple)) and len(generator) != len(instructions):
        raise EarlError(f"got {len(generator)} generators for {len(instructions)} rows (one per row, or one in all)")
    for ins in instructions:
        if not ins or not ins.strip():
            raise EarlError("instruction is empty")
    device = next(backbone.parameters()).device
    N, h, w = source_codes.shape
    check_prompt_lengths(backbone, layout, instructions, h, w, cfg, think)
    v = layout.vocab
    img_start, img_stop = v.image_ids

    prompts = [layout.prompt(ins, src) for ins, src in zip(instructions, source_codes.cpu())]
    if cfg.uses_cfg:
        prompts += [layout.prompt(None, src) for src in source_codes.cpu()]
    batch = {k: t.to(device) for k, t in layout.pad_prompts(prompts).items()}
    dec = open_decoder(backbone, batch, decoding_capacity(layout, h, w, cfg, think), decoder, cache)
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
    forced([v.eof, v.eoi, layout.ids.eos])

    completions = torch.cat([p[0] for p in pieces], dim=1)
    logprobs = torch.cat([p[1] for p in pieces], dim=1)
    sampled = torch.cat([p[2] for p in pieces], dim=1)
    image_pos = v.is_image(completions) & sampled
    return GenerationOutput(completions.cpu(), logprobs.cpu(), sampled.cpu(), codes.cpu(), image_pos.cpu(), thinking)


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


# ---- the slow reference ---------------------------------------------------------------------
@torch.no_grad()
def reference_greedy(backbone, layout: EditLayout, instruction: str, source: torch.Tensor,
                     guidance_scale: float = 1.0) -> torch.Tensor:
    """Greedy image decoding that recomputes the whole sequence every step (no cache, no batching).

    Exists to check `sample_edits` at temperature 0 token for token; too slow for anything else.
    """
    device = next(backbone.parameters()).device
    h, w = source.shape
    v = layout.vocab
    s0, s1 = v.image_ids
    cond = layout.prompt(instruction, source) + layout.header(h, w)
    uncond = layout.prompt(None, source) + layout.header(h, w)
    codes = torch.empty((h, w), dtype=torch.long)

    def last_logits(seq):
        ids = torch.tensor(seq, device=device)[None]
        mask = torch.ones_like(ids)
        return backbone(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits[0, -1, s0:s1]

    for r in range(h):
        for c in range(w):
            logits = last_logits(cond).float()
            if guidance_scale != 1.0:
                u = last_logits(uncond).float()
                logits = u + guidance_scale * (logits - u)
            tok = int(logits.argmax())
            codes[r, c] = tok
            cond.append(tok + s0)
            uncond.append(tok + s0)
        cond.append(v.eol)
        uncond.append(v.eol)
    return codes


def logprobs_of(backbone, layout: EditLayout, instructions, source_codes, completions, image_positions,
                cfg: SamplingConfig) -> torch.Tensor:
    """Recompute, with one forward pass, the log-probs the sampler reports at image positions.

    Valid when the sampled distribution is a function of the conditional logits alone: no CFG and
    no top-k/top-p (with them, the sampler's distribution needs the unconditional pass or depends on
    the filter, which earl's RL refuses explicitly). Returns (N, T) with zeros elsewhere.
    """
    if cfg.uses_cfg or cfg.top_k or cfg.top_p < 1.0:
        raise EarlError("logprobs_of needs guidance_scale=1, top_k=0, top_p=1 (the sampled distribution "
                        "must be the model's own conditional distribution)")
    device = next(backbone.parameters()).device
    prompts = [layout.prompt(i, s) for i, s in zip(instructions, source_codes.cpu())]
    seqs = [p + c.tolist() for p, c in zip(prompts, completions)]
    batch = layout.pad_prompts(seqs)
    T = completions.shape[1]
    out = backbone(**{k: t.to(device) for k, t in batch.items()}).logits[:, -T - 1 : -1].float()  # (N, T, V)
    s0, s1 = layout.vocab.image_ids
    temp = cfg.temperature if cfg.temperature > 0 else 1.0
    logp = torch.log_softmax(out[..., s0:s1] / temp, dim=-1)
    tgt = (completions.to(device) - s0).clamp(0, s1 - s0 - 1)
    lp = logp.gather(-1, tgt[..., None]).squeeze(-1)
    return torch.where(image_positions.to(device), lp, torch.zeros_like(lp)).cpu()
