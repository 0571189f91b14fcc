"""The cache-carrying decoders every generation loop runs on: one forward over a left-padded
prompt batch fills a KV cache, then `feed` appends tokens and leaves the next logits on `.logits`.

Four kinds, picked by `choose_decoder`: the Hugging Face forward with a growing `DynamicCache`
(`hf`), the same over buffers preallocated for the whole generation (`static`), that with the
one-token step captured as a CUDA graph (`compiled`), and `earl.lean`'s fused CPU forward (`lean`).
What a static or compiled decoder keeps between calls lives in a `DecodeCache` the caller owns,
never on the backbone.
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch
from transformers import DynamicCache, LlamaForCausalLM, StaticCache

from earl.errors import EarlError
from earl.lean import LeanLlama, unsupported_reason

log = logging.getLogger(__name__)


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



# ---- the cache-carrying decoder -------------------------------------------------------------
class _Decoder:
    """Owns the KV cache and the growing attention mask of one batched generation.

    `passes` counts the forwards run (the prefill included), so a sampler can report what a schedule
    cost. `feed(..., all_logits=True)` returns the logits at every fed position, and `rollback(n)` drops
    the last n fed tokens again: what a speculative schedule needs to verify guesses in one forward.
    `settle(kept)` keeps a different number of them per row (the others become masked slots), and
    `compact()` moves each row's live slots together so that masked ones stop taking room: what lets
    each row of a batch advance by its own accepted count. `capacity` bounds the slots written
    (prompt included) for every decoder alike, so that they all compact at the same points.
    """

    def __init__(self, backbone, batch: dict[str, torch.Tensor], capacity: int | None = None):
        self.backbone = backbone
        self.cache = DynamicCache()
        self.mask = batch["attention_mask"]  # (R, T_so_far)
        self.next_pos = batch["position_ids"][:, -1] + 1  # (R,)
        self.capacity = None if capacity is None else batch["input_ids"].shape[1] + capacity
        self.passes = 1
        self.logits = self._forward(batch["input_ids"], batch["position_ids"])[:, -1]

    @property
    def slots(self) -> int:
        """Cache slots written so far (live or masked), the prompt's included."""
        return self.mask.shape[1]

    def _kv(self) -> list[torch.Tensor]:
        """Every layer's (R, heads, >= slots, head_dim) key and value buffers (`layers` in transformers 5,
        `key_cache` / `value_cache` lists before)."""
        layers = getattr(self.cache, "layers", None)
        if layers is not None:
            return [t for layer in layers for t in (layer.keys, layer.values)]
        return [*self.cache.key_cache, *self.cache.value_cache]

    def _set_mask(self, start: int, values: torch.Tensor) -> None:
        """Write the attention mask of slots start .. start + width (all of them written already)."""
        self.mask = torch.cat([self.mask[:, :start], values.to(self.mask.dtype)], dim=1)

    def _crop(self, n: int) -> None:
        """Drop the last n written slots (positions are the caller's)."""
        if n:
            self.cache.crop(-n)  # negative: drop n (a positive length is refused by newer transformers)
            self.mask = self.mask[:, : self.mask.shape[1] - n]

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, keep: int = 1) -> torch.Tensor:
        out = self.backbone(input_ids=ids, attention_mask=self.mask, position_ids=pos,
                            use_cache=True, logits_to_keep=keep, **cache_kwargs(self.backbone, self.cache))
        return out.logits  # (R, keep, V)

    def _advance(self, ids: torch.Tensor, active: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep (R, n), positions (R, n)) for fed ids, moving `next_pos` on. `active`: None (every token
        counts), (R,) per row, or (R, n) per token; a masked token is padding that takes no position (the
        tokens of a row that count are at consecutive positions). Shared by every decoder's `feed`."""
        R, n = ids.shape
        if active is None:
            keep = torch.ones(R, n, dtype=torch.long, device=ids.device)
        else:
            keep = (active[:, None].expand(R, n) if active.dim() == 1 else active).long()
        before = keep.cumsum(1) - keep  # tokens that count before each one, in this feed
        pos = self.next_pos[:, None] + before
        self._fed = (n, keep, self.next_pos)
        self.next_pos = self.next_pos + keep.sum(1)
        return keep, pos

    def _result(self, logits: torch.Tensor, all_logits: bool) -> torch.Tensor:
        """Keep the last position's logits on `.logits`; return all of them when asked."""
        self.passes += 1
        self.logits = logits[:, -1]
        return logits if all_logits else self.logits

    def feed(self, ids: torch.Tensor, active: torch.Tensor | None = None, all_logits: bool = False) -> torch.Tensor:
        """Append (R, n) tokens; rows with active=False get masked padding and keep their positions.
        Returns the (R, V) logits at the last position, or (R, n, V) at every one with `all_logits`."""
        keep, pos = self._advance(ids, active)
        self.mask = torch.cat([self.mask, keep], dim=1)
        return self._result(self._forward(ids, pos, ids.shape[1] if all_logits else 1), all_logits)

    def rollback(self, n: int) -> None:
        """Forget the last n tokens of the last feed: cache, mask and positions as if never fed.
        `.logits` is left to the caller (it knows which fed position it keeps)."""
        fed = self._fed[0]
        if not 0 <= n <= fed:
            raise EarlError(f"rollback of {n} tokens: the last feed had {fed}")
        self.settle(torch.full((self.next_pos.shape[0],), fed - n, dtype=torch.long, device=self.next_pos.device))

    def settle(self, kept: torch.Tensor) -> None:
        """Of the last feed's n tokens, row r keeps its first `kept[r]`; the rest of its tokens are
        forgotten: masked, their positions given back, and the tail no row keeps dropped from the cache.
        `.logits` is left to the caller."""
        fed, keep, start = self._fed
        lo, hi = torch.stack(kept.aminmax()).tolist()  # one look at the device's numbers
        if kept.shape != self.next_pos.shape or lo < 0 or hi > fed:
            raise EarlError(f"settle: kept {kept.tolist()} must hold one count in 0..{fed} per row")
        held = keep * (torch.arange(fed, device=keep.device)[None] < kept[:, None])
        self.next_pos = start + held.sum(1)
        self._set_mask(self.slots - fed, held)
        tail = fed - hi
        self._crop(tail)
        self._fed = (fed - tail, held[:, : fed - tail], start)

    def compact(self) -> None:
        """Move each row's live slots (mask 1) to the end of the written ones, in order, and drop the
        slots no row needs: written slots become the most any row holds live. Attention reads keys by
        mask and causal order only (positions are in the keys already), so the logits do not change.
        What a row's masked slots (its rejected guesses) cost in room and attention stops here."""
        t = self.slots
        live = self.mask[:, :t].bool()
        keep = int(live.sum(1).max())
        if keep == t:
            return
        order = torch.sort(live.to(torch.int8), dim=1, stable=True).indices[:, t - keep :]  # dead first, live in order
        for buf in self._kv():
            R, H, _, D = buf.shape
            moved = buf[:, :, :t].gather(2, order[:, None, :, None].expand(R, H, keep, D))
            buf[:, :, :keep].copy_(moved)
        self._crop(t - keep)
        self._set_mask(0, live.gather(1, order))
        self._fed = (0, self._fed[1][:, :0], self.next_pos)


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
        self.capacity = P + capacity
        self.next_pos = batch["position_ids"][:, -1] + 1
        self.step = store.compiled_step(backbone) if compiled else backbone
        self.passes = 1
        self.logits = self._run(backbone, batch["input_ids"], batch["position_ids"])[:, -1]

    def _run(self, fn, ids: torch.Tensor, pos: torch.Tensor, keep: int = 1) -> torch.Tensor:
        n = ids.shape[1]
        if self.length + n > self.mask.shape[1]:
            raise EarlError(f"static decode: {self.length + n} tokens exceed the cache of {self.mask.shape[1]}")
        where = torch.arange(self.length, self.length + n, device=ids.device)
        out = fn(input_ids=ids, attention_mask=self.mask, position_ids=pos, cache_position=where, use_cache=True,
                 logits_to_keep=keep, **cache_kwargs(self.backbone, self.cache))
        self.length += n
        return out.logits.clone()  # a captured graph reuses its output buffer on the next replay

    def feed(self, ids: torch.Tensor, active: torch.Tensor | None = None, all_logits: bool = False) -> torch.Tensor:
        n = ids.shape[1]
        keep, pos = self._advance(ids, active)
        self.mask[:, self.length : self.length + n] = keep
        logits = self._run(self.step if n == 1 else self.backbone, ids, pos, n if all_logits else 1)
        return self._result(logits, all_logits)

    @property
    def slots(self) -> int:
        return self.length

    def _set_mask(self, start: int, values: torch.Tensor) -> None:
        self.mask[:, start : start + values.shape[1]] = values

    def _crop(self, n: int) -> None:
        """Forget the last n written slots: masked off and written over by the next feed (a `StaticCache`
        that counts its own writes is moved back too; older ones write at `cache_position`)."""
        if n and hasattr(self.cache, "crop"):
            self.cache.crop(-n)
        self.length -= n
        self.mask[:, self.length :] = 0


class _LeanDecoder(_Decoder):
    """The same decoder over `earl.lean.LeanLlama`: fused weights, a preallocated KV cache and mask.

    The CPU path: there a small model's step is per-op work, which this forward mostly removes (same
    logits as the Hugging Face forward up to float rounding; `tests/core/test_lean.py`).
    """

    def __init__(self, backbone, batch: dict[str, torch.Tensor], capacity: int):
        R, P = batch["input_ids"].shape
        self.net = LeanLlama(backbone, R, P + capacity)
        self.capacity = P + capacity
        self.mask = torch.zeros(R, P + capacity, dtype=torch.long, device=batch["input_ids"].device)
        self.mask[:, :P] = batch["attention_mask"]
        self.next_pos = batch["position_ids"][:, -1] + 1
        self.passes = 1
        self.logits = self.net.forward(batch["input_ids"], batch["position_ids"], self.mask[:, :P])

    def feed(self, ids: torch.Tensor, active: torch.Tensor | None = None, all_logits: bool = False) -> torch.Tensor:
        t0, n = self.net.length, ids.shape[1]
        keep, pos = self._advance(ids, active)
        self.mask[:, t0 : t0 + n] = keep
        if all_logits:
            return self._result(self.net.forward(ids, pos, self.mask[:, : t0 + n], all_positions=True), True)
        return self._result(self.net.forward(ids, pos, self.mask[:, : t0 + n])[:, None], False)

    @property
    def slots(self) -> int:
        return self.net.length

    def _kv(self) -> list[torch.Tensor]:
        return [*self.net.k, *self.net.v]

    def _set_mask(self, start: int, values: torch.Tensor) -> None:
        self.mask[:, start : start + values.shape[1]] = values

    def _crop(self, n: int) -> None:
        """Forget the last n written slots: masked off and written over by the next feed."""
        self.net.length -= n
        self.mask[:, self.net.length :] = 0


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
    (R, V) at the last position, `.feed(ids (R, n), active)` appends up to `capacity` tokens in all
    (`all_logits=True`: the logits at every fed position), `.rollback(n)` forgets the last n fed, and
    `.passes` counts the forwards.
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
    return _Decoder(backbone, batch, capacity)

