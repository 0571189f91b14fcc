"""Speculative Jacobi decoding of the image grid: the sequential greedy codes, in fewer forwards."""

import itertools
import math
from pathlib import Path

import pytest
import torch

from earl.errors import EarlError
from earl.generate import SamplingConfig, sample_edits
from earl.generate.decoders import open_decoder
from earl.generate.jacobi import jacobi_grid

INSTRUCTIONS = ["make the red circle blue", "change the square to green", "remove the small triangle"]
EDITOR = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes-editor"
GREEDY = SamplingConfig(temperature=0.0)


@pytest.fixture(scope="module", params=[0, 1, 2])
def tiny(request, vq_tokenizer, text_tokenizer):
    """A random tiny editor per seed and random source grids (4x4 codes)."""
    from earl.model import UnifiedEditor

    ed = UnifiedEditor.build("shapes-test", vq_tokenizer, text_tokenizer, image_size=32, seed=10 + request.param).eval()
    g = torch.Generator().manual_seed(request.param)
    return ed, torch.randint(0, ed.image_tokenizer.codebook_size, (3, 4, 4), generator=g)


def _same(a, b):
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.completions, b.completions) and torch.equal(a.sampled_mask, b.sampled_mask)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("decoder", ["hf", "static", "lean"])
def test_greedy_jacobi_gives_the_sequential_codes_in_no_more_forwards(tiny, decoder):
    ed, codes = tiny
    for scale in (1.0, 3.0):
        cfg = SamplingConfig(temperature=0.0, guidance_scale=scale)
        seq = sample_edits(ed.backbone, ed.layout, INSTRUCTIONS, codes, cfg, decoder=decoder)
        for window in (1, 2, 4, 7, 16):
            jac = sample_edits(ed.backbone, ed.layout, INSTRUCTIONS, codes, cfg, decoder=decoder, schedule="jacobi",
                               window=window)
            _same(jac, seq)
            assert jac.forward_passes <= seq.forward_passes
            if window == 1:  # one code per forward: the sequential schedule's count
                assert jac.forward_passes == seq.forward_passes


@pytest.mark.parametrize("decoder", ["hf", "static", "lean"])
@pytest.mark.parametrize("compact_always", [False, True])
def test_each_row_advances_by_its_own_accepted_count(tiny, decoder, compact_always, monkeypatch):
    """Rows whose guesses stand for different stretches: the batch gives each row its sequential codes,
    and takes the forwards its slowest row takes alone (a batch that kept only the prefix every row
    accepted would take more). `compact_always`: the KV cache compacted before every forward (else
    only when masked slots would outgrow it)."""
    from earl.generate import decoders, edits

    compactions = []
    compact = decoders._Decoder.compact
    monkeypatch.setattr(decoders._Decoder, "compact", lambda self: compactions.append(self.slots) or compact(self))
    if compact_always:
        def tight(*args, **kw):
            dec = decoders.open_decoder(*args, **kw)
            dec.capacity = 0  # every feed "outgrows" it
            return dec

        monkeypatch.setattr(edits, "open_decoder", tight)
    ed, codes = tiny
    differ = 0
    for scale, window in ((1.0, 4), (3.0, 4), (3.0, 7)):
        cfg = SamplingConfig(temperature=0.0, guidance_scale=scale)
        seq = sample_edits(ed.backbone, ed.layout, INSTRUCTIONS, codes, cfg, decoder=decoder)
        jac = sample_edits(ed.backbone, ed.layout, INSTRUCTIONS, codes, cfg, decoder=decoder, schedule="jacobi",
                           window=window)
        _same(jac, seq)
        alone = [sample_edits(ed.backbone, ed.layout, INSTRUCTIONS[i : i + 1], codes[i : i + 1], cfg, decoder=decoder,
                              schedule="jacobi", window=window).forward_passes for i in range(len(INSTRUCTIONS))]
        assert jac.forward_passes == max(alone), (scale, window, alone)
        differ += len(set(alone)) > 1
    assert differ  # rows of one batch did accept different counts
    assert bool(compactions) or not compact_always


@pytest.mark.parametrize("decoder", ["hf", "static", "lean"])
def test_settle_and_compact_leave_the_logits_of_what_each_row_kept(tiny_editor, decoder):
    """Rows keep different counts of a feed (`settle`), the cache is compacted, and the next forward's
    logits are those of feeding each row only what it kept."""
    from earl.generate.decoders import open_decoder

    ed = tiny_editor
    prompts = [ed.layout.prompt(i, torch.zeros(4, 4, dtype=torch.long)) for i in INSTRUCTIONS]
    batch = ed.layout.pad_prompts(prompts)
    fed = torch.tensor([[300, 301, 302, 303]] * 3)
    kept = torch.tensor([1, 4, 2])
    dec = open_decoder(ed.backbone, batch, 20, decoder)
    dec.feed(fed, all_logits=True)
    dec.settle(kept)
    assert dec.slots == batch["input_ids"].shape[1] + 4  # the longest kept; the others' tails masked
    dec.compact()
    assert dec.slots == batch["input_ids"].shape[1] + 4  # left padding of the prompts and the holes fill up
    after = dec.feed(torch.tensor([[310]] * 3))
    for r in range(3):
        ref = open_decoder(ed.backbone, ed.layout.pad_prompts(prompts[r : r + 1]), 20, decoder)
        ref.feed(fed[r : r + 1, : kept[r]])
        torch.testing.assert_close(after[r], ref.feed(torch.tensor([[310]]))[0], atol=1e-4, rtol=1e-4)


def test_jacobi_after_chain_of_thought(tiny_cot_editor):
    ed = tiny_cot_editor
    codes = torch.zeros(2, 4, 4, dtype=torch.long)
    cfg = SamplingConfig(temperature=0.0, max_think_tokens=12, guidance_scale=2.0)
    seq = sample_edits(ed.backbone, ed.layout, INSTRUCTIONS[:2], codes, cfg, think=True, decoder="hf")
    jac = sample_edits(ed.backbone, ed.layout, INSTRUCTIONS[:2], codes, cfg, think=True, decoder="hf",
                       schedule="jacobi", window=5)
    _same(jac, seq)
    assert jac.thinking == seq.thinking


def test_sequential_passes_are_one_per_code_but_the_last(tiny_editor):
    codes = torch.zeros(2, 4, 4, dtype=torch.long)
    out = sample_edits(tiny_editor.backbone, tiny_editor.layout, INSTRUCTIONS[:2], codes, GREEDY)
    assert out.forward_passes == 1 + 1 + 15  # prefill, header, 15 fed codes
    assert out.tokens_per_pass == out.completions.shape[1] / 17


@pytest.fixture(scope="module")
def constant(vq_tokenizer, text_tokenizer):
    """An editor whose logits are all zero: its greedy image is every code 0, so each Jacobi guess (the
    last code, repeated) is right and every forward decides `window` codes."""
    from earl.model import UnifiedEditor

    ed = UnifiedEditor.build("shapes-test", vq_tokenizer, text_tokenizer, image_size=32, seed=0).eval()
    with torch.no_grad():
        ed.backbone.lm_head.weight.zero_()
    return ed


@pytest.mark.parametrize("decoder", ["hf", "static", "lean"])
@pytest.mark.parametrize("window", [1, 2, 4, 5, 8, 15, 16])
def test_pass_count_of_a_constructed_case(constant, decoder, window):
    codes = torch.zeros(2, 4, 4, dtype=torch.long)
    out = sample_edits(constant.backbone, constant.layout, INSTRUCTIONS[:2], codes, GREEDY, decoder=decoder,
                       schedule="jacobi", window=window)
    assert (out.codes == 0).all()
    # prefill + header + the 15 fed codes in forwards of `window` codes each (the 16th is never fed)
    assert out.forward_passes == 2 + math.ceil(15 / window)


def _shapes_inputs(editor, split: str, n: int):
    from earl.shapes.dataset import generate_samples
    from earl.shapes.render import render

    samples = list(itertools.islice(generate_samples(split, n, seed=0, part="test", image_size=64, grid=4), n))
    codes = editor.encode_images([editor.preprocess(render(s.source_scene))[0] for s in samples])
    return [s.instruction for s in samples], codes


@pytest.fixture(scope="module")
def bundled():
    from earl.model import UnifiedEditor

    return UnifiedEditor.from_pretrained(EDITOR).eval()


def test_bundled_editor_jacobi_gives_the_sequential_images(bundled):
    instructions, codes = _shapes_inputs(bundled, "simple", 20)
    seq = sample_edits(bundled.backbone, bundled.layout, instructions, codes, GREEDY)
    for window in (4, 8):
        jac = sample_edits(bundled.backbone, bundled.layout, instructions, codes, GREEDY, schedule="jacobi",
                           window=window)
        _same(jac, seq)
        assert jac.forward_passes < seq.forward_passes


# ---- bad input --------------------------------------------------------------------------------
def test_bad_schedules_and_windows_are_refused_naming_the_option(tiny_editor):
    codes = torch.zeros(2, 4, 4, dtype=torch.long)

    def run(cfg=GREEDY, **kw):
        return sample_edits(tiny_editor.backbone, tiny_editor.layout, INSTRUCTIONS[:2], codes, cfg, **kw)

    for kw, msg in [
        (dict(schedule="rows", window=2), "schedule 'rows': expected one of sequential, jacobi"),
        (dict(schedule="jacobi", window=0), r"window=0: expected an integer >= 1"),
        (dict(schedule="jacobi", window=2.5), r"window=2.5: expected an integer >= 1"),
        (dict(schedule="jacobi"), "schedule 'jacobi' needs window=N"),
        (dict(schedule="jacobi", window=17), r"window=17 is beyond the grid: an 4x4 image has 16 codes"),
        (dict(window=4), "window=4 is for schedule 'jacobi'"),
    ]:
        with pytest.raises(EarlError, match=msg):
            run(**kw)


def test_a_decoder_that_cannot_roll_back_is_refused_by_name(tiny_editor):
    ed = tiny_editor
    batch = ed.layout.pad_prompts([ed.layout.prompt("make it red", torch.zeros(4, 4, dtype=torch.long))])
    dec = open_decoder(ed.backbone, batch, 64, "hf")

    class NoRollback:  # a decoder with only the one-way feed
        logits = dec.logits
        feed = dec.feed

    with pytest.raises(EarlError, match="needs a decoder that can roll its KV cache back; NoRollback cannot"):
        jacobi_grid(NoRollback(), 1, 4, 4, 4, GREEDY, ed.layout.vocab.image_ids, ed.layout.vocab.eol)


# ---- sampling: the speculative-sampling rule keeps the model's distribution ---------------------
def test_sampled_jacobi_codes_follow_the_sequential_distribution(constant_free_tiny):
    """Two-sample chi-square on the joint of code pairs (within a row, and across a row end) of a 2x2 grid
    sampled with top_k=3 (9 cells per pair), 3000 samples per schedule, each test at alpha 0.001.
    Power, checked by breaking the rule: accepting a guess with probability min(1, 2 p(x)) or sqrt(p(x))
    instead of p(x), or drawing the fallen guess's code from p with x left in, each fails it."""
    from scipy.stats import chi2_contingency

    ed, codes, top = constant_free_tiny
    cfg = SamplingConfig(temperature=1.0, top_k=top, guidance_scale=2.0)
    n = codes.shape[0]
    seq = sample_edits(ed.backbone, ed.layout, ["make it blue"] * n, codes, cfg, generator=torch.Generator().manual_seed(1))
    jac = sample_edits(ed.backbone, ed.layout, ["make it blue"] * n, codes, cfg, generator=torch.Generator().manual_seed(2),
                       schedule="jacobi", window=4)
    assert jac.forward_passes <= seq.forward_passes
    for i, j in ((0, 1), (1, 2), (2, 3)):
        a = _cells(seq.codes, i, j)
        b = _cells(jac.codes, i, j)
        keep = (a + b) > 0
        p = chi2_contingency(torch.stack([a[keep], b[keep]]).numpy())[1]
        assert p > 1e-3, (i, j, p, a.tolist(), b.tolist())
    # log-probs are those of the distribution each code was drawn from (the sequential sampler's)
    assert (jac.logprobs[jac.sampled_mask] <= 0).all() and (jac.logprobs[jac.sampled_mask] > -20).all()


def _cells(codes: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Counts of each (code i, code j) pair seen, over the codes the grid holds at those positions."""
    flat = codes.flatten(1)
    pair = flat[:, i] * (int(flat.max()) + 1) + flat[:, j]
    return torch.bincount(pair, minlength=(int(flat.max()) + 1) ** 2)


@pytest.fixture(scope="module")
def constant_free_tiny(vq_tokenizer, text_tokenizer):
    """A random tiny editor with one source grid repeated 3000 times (2x2 codes)."""
    from earl.model import UnifiedEditor

    ed = UnifiedEditor.build("shapes-test", vq_tokenizer, text_tokenizer, image_size=32, seed=3).eval()
    codes = torch.randint(0, ed.image_tokenizer.codebook_size, (1, 2, 2), generator=torch.Generator().manual_seed(4))
    return ed, codes.expand(3000, -1, -1).clone(), 3


def test_sampled_jacobi_runs_with_one_generator_per_row(tiny_editor):
    codes = torch.zeros(3, 4, 4, dtype=torch.long)
    cfg = SamplingConfig(temperature=1.0, top_k=5)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    out = sample_edits(tiny_editor.backbone, tiny_editor.layout, INSTRUCTIONS, codes, cfg, generator=gens,
                       schedule="jacobi", window=4)
    again = sample_edits(tiny_editor.backbone, tiny_editor.layout, INSTRUCTIONS, codes, cfg, schedule="jacobi", window=4,
                         generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    assert torch.equal(out.codes, again.codes)  # seeded: reproducible
    assert out.codes.shape == (3, 4, 4) and (out.logprobs[out.sampled_mask] < 0).all()
    # rows advance on their own, each drawing the same count per forward: a row's sample is its seed's,
    # whether it is drawn alone or beside other rows (what a resumed evaluation needs)
    for i, seed in enumerate((1, 2, 3)):
        alone = sample_edits(tiny_editor.backbone, tiny_editor.layout, INSTRUCTIONS[i : i + 1], codes[i : i + 1], cfg,
                             generator=[torch.Generator().manual_seed(seed)], schedule="jacobi", window=4)
        assert torch.equal(alone.codes[0], out.codes[i]), i
        torch.testing.assert_close(alone.logprobs[0], out.logprobs[i], atol=1e-5, rtol=1e-5)
