import inspect

import pytest
import torch
from transformers import LlamaForCausalLM

from earl.errors import EarlError
from earl.generate import (
    DecodeCache,
    SamplingConfig,
    cache_kwargs,
    choose_decoder,
    process_logits,
    sample_edits,
)
from earl.layout import positions_from_mask
from earl.rl.logprobs import policy_logprobs, rollout_from_generation

INSTRUCTIONS = ["make the red circle blue", "change the square to green", "remove the small triangle"]


@torch.no_grad()
def reference_greedy(backbone, layout, instruction: str, source: torch.Tensor, guidance_scale: float = 1.0):
    """Greedy image decoding that recomputes the whole sequence every step (no cache, no batching):
    the slow reference `sample_edits` at temperature 0 must match token for token."""
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
            codes[r, c] = int(logits.argmax())
            cond.append(int(codes[r, c]) + s0)
            uncond.append(int(codes[r, c]) + s0)
        cond.append(v.eol)
        uncond.append(v.eol)
    return codes


@pytest.fixture(scope="module")
def setup(tiny_editor):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, tiny_editor.image_tokenizer.codebook_size, (3, 4, 4), generator=g)
    return tiny_editor.backbone, tiny_editor.layout, codes


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_greedy_matches_slow_reference_token_for_token(setup, scale):
    backbone, layout, codes = setup
    out = sample_edits(backbone, layout, INSTRUCTIONS, codes, SamplingConfig(temperature=0.0, guidance_scale=scale))
    ref = torch.stack([reference_greedy(backbone, layout, i, c, scale) for i, c in zip(INSTRUCTIONS, codes)])
    assert torch.equal(out.codes, ref)


def test_sampler_logprobs_equal_a_forward_pass_on_the_sampled_sequence(setup):
    backbone, layout, codes = setup
    cfg = SamplingConfig(temperature=0.8)
    out = sample_edits(backbone, layout, INSTRUCTIONS, codes, cfg, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        recomputed = policy_logprobs(backbone, layout, rollout_from_generation(INSTRUCTIONS, codes, out, layout), cfg)
    assert out.image_positions.sum() == 3 * 16
    torch.testing.assert_close(recomputed, out.logprobs, atol=1e-4, rtol=1e-4)
    assert (out.logprobs[~out.sampled_mask] == 0).all()


def test_cfg_rows_at_scale_one_change_nothing(setup, monkeypatch):
    """Batching unconditional rows (with their own left padding) must not perturb the conditional rows."""
    backbone, layout, codes = setup
    cfg = SamplingConfig(temperature=1.0, guidance_scale=1.0)
    plain = sample_edits(backbone, layout, INSTRUCTIONS, codes, cfg, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(SamplingConfig, "uses_cfg", property(lambda self: True))
    with_rows = sample_edits(backbone, layout, INSTRUCTIONS, codes, cfg, generator=torch.Generator().manual_seed(5))
    assert torch.equal(plain.codes, with_rows.codes)
    torch.testing.assert_close(plain.logprobs, with_rows.logprobs, atol=1e-5, rtol=1e-5)


def test_same_seed_same_output_and_grids_well_formed(setup):
    backbone, layout, codes = setup
    cfg = SamplingConfig(temperature=1.0, top_k=20, top_p=0.9, guidance_scale=2.0)
    a = sample_edits(backbone, layout, INSTRUCTIONS, codes, cfg, generator=torch.Generator().manual_seed(7))
    b = sample_edits(backbone, layout, INSTRUCTIONS, codes, cfg, generator=torch.Generator().manual_seed(7))
    c = sample_edits(backbone, layout, INSTRUCTIONS, codes, cfg, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.completions, b.completions)
    assert not torch.equal(a.codes, c.codes)
    for row, grid in zip(a.completions, a.codes):
        assert torch.equal(layout.parse_image(row, 4, 4), grid)


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_per_row_generators_make_a_row_independent_of_its_batch(setup, scale):
    """With one generator per row, a row's sample depends on its own seed only: the same whether it is
    drawn alone, first or last, beside other rows (what a resumed evaluation needs)."""
    backbone, layout, codes = setup
    cfg = SamplingConfig(temperature=1.0, top_k=50, guidance_scale=scale)
    full = sample_edits(backbone, layout, INSTRUCTIONS, codes, cfg, generator=_gens(11, 12, 13))
    alone = [sample_edits(backbone, layout, [INSTRUCTIONS[i]], codes[i : i + 1], cfg, generator=_gens(11 + i))
             for i in range(3)]
    swapped = sample_edits(backbone, layout, INSTRUCTIONS[::-1][:2], codes.flip(0)[:2], cfg, generator=_gens(13, 12))
    for i in range(3):
        assert torch.equal(full.codes[i], alone[i].codes[0]), i
        torch.testing.assert_close(full.logprobs[i], alone[i].logprobs[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(swapped.codes, full.codes.flip(0)[:2])
    assert not torch.equal(full.codes[0], sample_edits(backbone, layout, INSTRUCTIONS[:1], codes[:1], cfg,
                                                       generator=_gens(99)).codes[0])  # the seed matters


def test_per_row_generators_leave_greedy_unchanged_and_must_match_the_rows(setup):
    backbone, layout, codes = setup
    greedy = SamplingConfig(temperature=0.0)
    plain = sample_edits(backbone, layout, INSTRUCTIONS, codes, greedy)
    assert torch.equal(sample_edits(backbone, layout, INSTRUCTIONS, codes, greedy, generator=_gens(1, 2, 3)).codes,
                       plain.codes)
    with pytest.raises(EarlError, match="2 generators for 3 rows"):
        sample_edits(backbone, layout, INSTRUCTIONS, codes, SamplingConfig(temperature=1.0), generator=_gens(1, 2))


def test_per_row_generators_cover_the_thinking_text(tiny_cot_editor):
    layout = tiny_cot_editor.layout
    codes = torch.zeros(2, 4, 4, dtype=torch.long)
    cfg = SamplingConfig(temperature=1.0, max_think_tokens=6)
    both = sample_edits(tiny_cot_editor.backbone, layout, INSTRUCTIONS[:2], codes, cfg, think=True,
                        generator=_gens(4, 5))
    second = sample_edits(tiny_cot_editor.backbone, layout, INSTRUCTIONS[1:2], codes[1:], cfg, think=True,
                          generator=_gens(5))
    assert both.thinking[1] == second.thinking[0]
    assert torch.equal(both.codes[1], second.codes[0])


def test_thinking_text_precedes_a_well_formed_image(tiny_cot_editor):
    layout = tiny_cot_editor.layout
    codes = torch.zeros(2, 4, 4, dtype=torch.long)
    cfg = SamplingConfig(temperature=1.0, max_think_tokens=6, guidance_scale=2.0)
    out = sample_edits(tiny_cot_editor.backbone, layout, INSTRUCTIONS[:2], codes, cfg, think=True,
                       generator=torch.Generator().manual_seed(0))
    for row in out.completions:
        ids = [t for t in row.tolist() if t != layout.ids.pad]
        assert ids[0] == layout.ids.think_start
        assert layout.ids.think_end in ids and ids.index(layout.ids.think_end) <= 7
        layout.parse_image(ids, 4, 4)
    assert all(isinstance(t, str) for t in out.thinking)


def test_top_k_and_top_p_filter_as_specified():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k = process_logits(logits, SamplingConfig(top_k=2))
    assert torch.isinf(k[0, 2:]).all() and torch.isfinite(k[0, :2]).all()
    p = process_logits(logits, SamplingConfig(top_p=0.7))  # 0.5 + 0.3 reaches 0.7: keep two
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    t = process_logits(logits, SamplingConfig(temperature=0.5))
    torch.testing.assert_close(t, logits / 0.5)


def test_bad_sampling_input_is_refused(setup):
    backbone, layout, codes = setup
    with pytest.raises(EarlError, match="instruction is empty"):
        sample_edits(backbone, layout, ["", "a", "b"], codes)
    with pytest.raises(EarlError, match="3 source images"):
        sample_edits(backbone, layout, ["a"], codes)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_static_cache_gives_the_growing_caches_tokens(setup, scale):
    """Preallocated cache and mask (the graph-capture path, run eagerly here)."""
    backbone, layout, codes = setup
    for cfg in (SamplingConfig(temperature=0.0, guidance_scale=scale), SamplingConfig(guidance_scale=scale, top_k=50)):
        base = sample_edits(backbone, layout, INSTRUCTIONS, codes, cfg, generator=torch.Generator().manual_seed(3),
                            decoder="hf")
        static = sample_edits(backbone, layout, INSTRUCTIONS, codes, cfg, generator=torch.Generator().manual_seed(3),
                              decoder="static")
        assert torch.equal(static.completions, base.completions)
        assert torch.allclose(static.logprobs, base.logprobs, atol=1e-4)


def test_static_cache_holds_the_thinking_budget(tiny_cot_editor):
    ed = tiny_cot_editor
    codes = torch.zeros(2, 4, 4, dtype=torch.long)
    cfg = SamplingConfig(temperature=0.0, max_think_tokens=12)
    base = sample_edits(ed.backbone, ed.layout, ["add a red circle", "remove the square"], codes, cfg, think=True,
                        decoder="hf")
    static = sample_edits(ed.backbone, ed.layout, ["add a red circle", "remove the square"], codes, cfg, think=True,
                          decoder="static")
    assert torch.equal(static.completions, base.completions) and static.thinking == base.thinking


# ---- the decoder choice ----------------------------------------------------------------------
def test_an_unknown_decoder_is_refused_naming_the_choices(setup):
    backbone, layout, codes = setup
    for call in (lambda: sample_edits(backbone, layout, INSTRUCTIONS, codes, decoder="fast"),
                 lambda: choose_decoder(backbone, "cpu", "Lean")):
        with pytest.raises(EarlError, match="expected one of auto, hf, static, compiled, lean") as e:
            call()
    assert "'Lean'" in str(e.value)


def test_compiled_needs_cuda(setup):
    backbone, layout, codes = setup
    with pytest.raises(EarlError, match="'compiled'.*needs a CUDA device.*on cpu.*'static'"):
        sample_edits(backbone, layout, INSTRUCTIONS, codes, SamplingConfig(temperature=0.0), decoder="compiled")
    assert choose_decoder(backbone, "cuda", "compiled") == "compiled"  # checked by device, not by what is here


def test_auto_picks_lean_on_a_cpu_for_a_backbone_it_reproduces_and_hf_elsewhere(setup):
    backbone = setup[0]
    assert choose_decoder(backbone, "cpu") == "lean"
    assert choose_decoder(backbone, "cuda") == "hf"
    assert [choose_decoder(backbone, "cpu", d) for d in ("hf", "static", "lean")] == ["hf", "static", "lean"]


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_hf_static_and_lean_give_the_same_greedy_codes_and_logprobs(setup, scale):
    backbone, layout, codes = setup
    for cfg in (SamplingConfig(temperature=0.0, guidance_scale=scale), SamplingConfig(guidance_scale=scale)):
        runs = {d: sample_edits(backbone, layout, INSTRUCTIONS, codes, cfg, decoder=d,
                                generator=torch.Generator().manual_seed(6)) for d in ("hf", "static", "lean")}
        for d in ("static", "lean"):
            assert torch.equal(runs[d].codes, runs["hf"].codes), d
            assert torch.equal(runs[d].completions, runs["hf"].completions), d
            torch.testing.assert_close(runs[d].logprobs, runs["hf"].logprobs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoder", ["auto", "hf", "static", "lean"])
def test_a_generation_leaves_nothing_on_the_backbone(setup, decoder):
    backbone, layout, codes = setup
    before = set(vars(backbone))
    sample_edits(backbone, layout, INSTRUCTIONS, codes, SamplingConfig(temperature=0.0), decoder=decoder,
                 cache=DecodeCache() if decoder == "static" else None)
    sample_edits(backbone, layout, INSTRUCTIONS, codes, SamplingConfig(temperature=0.0), decoder=decoder)
    assert set(vars(backbone)) == before
    assert not [k for k in vars(backbone) if k.startswith("_earl")]
    for m in backbone.modules():
        assert not [k for k in vars(m) if k.startswith("_earl")], type(m).__name__


def test_a_cache_the_caller_keeps_gives_what_fresh_calls_give(setup):
    """Two calls sharing one DecodeCache (the second reuses the zeroed KV cache; then a new shape
    replaces it) write what two calls with fresh caches write."""
    backbone, layout, codes = setup
    cfg = SamplingConfig(guidance_scale=2.0, top_k=40)
    calls = [(INSTRUCTIONS, codes, 1), (INSTRUCTIONS[::-1], codes.flip(0), 2), (INSTRUCTIONS[:2], codes[:2], 3)]

    def run(ins, src, seed, cache):
        return sample_edits(backbone, layout, ins, src, cfg, decoder="static", cache=cache,
                            generator=torch.Generator().manual_seed(seed))

    cache = DecodeCache()
    kept = [run(*c, cache) for c in calls]
    fresh = [run(*c, None) for c in calls]
    for a, b in zip(kept, fresh):
        assert torch.equal(a.completions, b.completions)
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=0, rtol=0)
    assert cache.backbone is backbone and cache._static[0][0] == 4  # the last shape's rows: 2 cond + 2 uncond
    other = type(backbone)(backbone.config).eval()
    with pytest.raises(EarlError, match="one DecodeCache per backbone"):
        sample_edits(other, layout, INSTRUCTIONS, codes, cfg, decoder="static", cache=cache)


@pytest.mark.gpu  # CUDA graphs: deselected on CPU runs, run by recipes/gpu/checks.sh (step compiled_decoder)
def test_compiled_gives_the_hf_codes_and_reuses_the_callers_cache(setup):
    import copy

    backbone, layout, codes = setup
    gpu = copy.deepcopy(backbone).cuda()
    before = set(vars(gpu))
    cfg = SamplingConfig(temperature=0.0, guidance_scale=3.0, fused_step=False)
    ref = sample_edits(gpu, layout, INSTRUCTIONS, codes, cfg, decoder="hf")
    cache = DecodeCache()
    runs = [sample_edits(gpu, layout, INSTRUCTIONS, codes, cfg, decoder="compiled", cache=cache) for _ in range(2)]
    step = cache._step
    for out in runs:
        assert torch.equal(out.codes, ref.codes)
        torch.testing.assert_close(out.logprobs, ref.logprobs, atol=1e-4, rtol=1e-4)
    assert cache._step is step is not None and set(vars(gpu)) == before


def test_the_text_loops_take_the_decoder_and_the_cache(setup):
    """`greedy_text` (the reward model's verdicts) and `sample_traces_watching` (GCPO) through every CPU decoder."""
    from earl.generate import greedy_text, sample_traces_watching

    backbone = setup[0]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, backbone.config.vocab_size, (3, 9), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(9)[None].expand(3, -1)}
    cache = DecodeCache()
    greedy = {d: greedy_text(backbone, batch, 6, eos=2, pad=0, decoder=d, cache=cache) for d in ("hf", "static", "lean")}
    for d in ("static", "lean"):
        assert torch.equal(greedy[d][0], greedy["hf"][0])
        torch.testing.assert_close(greedy[d][1], greedy["hf"][1], atol=1e-5, rtol=1e-5)
    prompts = [ids[0].tolist(), ids[1, 3:].tolist()]
    traces = {d: sample_traces_watching(backbone, prompts, 2, 1.0, 6, 2, 0, torch.Generator().manual_seed(1), decoder=d,
                                        cache=cache)[0] for d in ("hf", "static", "lean")}
    assert traces["static"] == traces["hf"] == traces["lean"]
    with pytest.raises(EarlError, match="expected one of"):
        greedy_text(backbone, batch, 6, eos=2, pad=0, decoder="graph")


def test_the_kv_cache_goes_by_the_name_the_models_forward_takes():
    """transformers renamed `past_key_values` to `cache` (the old name warns, then goes in 5.40); older
    releases know only the old name. The sampler passes whichever the forward declares."""
    class OldForward:
        def forward(self, input_ids, past_key_values=None, use_cache=False):
            pass

    expected = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
    assert list(cache_kwargs(LlamaForCausalLM.__new__(LlamaForCausalLM), 1)) == [expected]
    class Wrapper:  # forwards everything to a transformers model
        def forward(self, **kwargs):
            pass

    assert cache_kwargs(OldForward(), 1) == {"past_key_values": 1}
    assert list(cache_kwargs(Wrapper(), 1)) == [expected]


def test_the_text_loop_keeps_each_row_s_own_settings(setup):
    """`decode_text` with rows that each ask for something else: greedy, sampled from their own seed,
    a nucleus of one token (the greedy text again), their own budgets, a stop string, a cancelled caller.
    A sampled row writes what it writes alone with its seed; log-probs are those of the distribution drawn from."""
    import threading

    from earl.generate import TextSampling, TextStops, decode_text, greedy_text

    backbone = setup[0]
    ids = torch.randint(5, backbone.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(4)).expand(5, -1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(9)[None].expand(5, -1)}
    eos, pad = 2, 0
    greedy = greedy_text(backbone, {k: v[:1] for k, v in batch.items()}, 8, eos, pad, keep_logits=False)[0][0].tolist()
    gens = [torch.Generator().manual_seed(s) for s in range(5)]
    cancelled = threading.Event()
    cancelled.set()
    stop_word = str(greedy[2])
    stops = TextStops(eos, pad, [8, 8, 5, 8, 8], stop_strings=[(), (), (), (stop_word,), ()],
                      decode=lambda row: " ".join(map(str, row)),
                      cancel=[threading.Event(), threading.Event(), threading.Event(), threading.Event(), cancelled])
    got = decode_text(backbone, batch, stops, TextSampling([0.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1e-6, 1.0, 1.0], gens),
                      logprobs=True)
    alone = decode_text(backbone, {k: v[1:2] for k, v in batch.items()}, TextStops(eos, pad, 8),
                        TextSampling(1.0, 1.0, [torch.Generator().manual_seed(1)]), logprobs=True)
    assert got.row(0) == greedy[: got.lengths[0]] and got.row(2) == greedy[:5]  # top_p 1e-6: the argmax
    assert got.row(1) == alone.row(0) and got.row(1) != greedy[: got.lengths[1]]
    torch.testing.assert_close(got.logprobs[1, : got.lengths[1]], alone.logprobs[0, : got.lengths[1]])
    assert (got.logprobs[2, :5] == 0).all() and (got.logprobs[0, : got.lengths[0]] < 0).all()
    assert got.row(3) == greedy[: greedy.index(greedy[2]) + 1] and got.finished[3]  # ends at its stop string
    assert got.lengths[4] == 1 and not got.finished[4]  # its caller is gone: one step, then padding
    assert got.lengths[2] == 5 and not got.finished[2] and (got.ids[2, 5:] == pad).all()
    for i in range(5):
        assert got.finished[i] == (eos in got.row(i) or i == 3)
