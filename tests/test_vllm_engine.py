"""The vLLM engine (`earl.generate.vllm_engine`) against earl's own sampler on the same weights.

Runs where vllm imports (its own venv: `.ci/vllm`). There EARL_REQUIRE_VLLM=1 is set, and a vllm that
does not import is then an error, not a skip: the file must not pass by skipping where it is meant to run.
One engine serves the whole module (starting one takes ~10-45 s on a CPU).
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("EARL_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401  (EARL_REQUIRE_VLLM=1: an ImportError here fails the run)
else:
    pytest.importorskip("vllm")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from earl.errors import EarlError  # noqa: E402
from earl.generate import SamplingConfig, sample_edits  # noqa: E402
from earl.generate.vllm_engine import VLLMEngine, _vllm  # noqa: E402
from earl.model import UnifiedEditor  # noqa: E402
from earl.pipeline import EditPipeline  # noqa: E402

pytestmark = pytest.mark.slow

GREEDY = SamplingConfig(temperature=0.0)
INSTRUCTIONS = ["make the red circle blue .", "change the square to green", "remove the small triangle",
                "make the square blue", "change the red circle to green", "remove the red circle"]


@pytest.fixture(scope="module")
def editor(tiny_editor, tmp_path_factory):
    """A tiny random editor whose attention heads vLLM's CPU backend takes (head size 32; shapes-test has 16),
    its weights scaled so its greedy choices are far from ties; saved as an editor directory."""
    c = tiny_editor.backbone.config
    cfg = LlamaConfig(vocab_size=c.vocab_size, max_position_embeddings=512, bos_token_id=c.bos_token_id,
                      eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id, tie_word_embeddings=False,
                      hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1)
    torch.manual_seed(1)
    backbone = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in backbone.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    ed = UnifiedEditor(backbone, tiny_editor.image_tokenizer, tiny_editor.text_tokenizer, tiny_editor.layout,
                       tiny_editor.config).eval()
    path = tmp_path_factory.mktemp("vllm") / "editor"
    ed.save_pretrained(path)
    return ed, path


@pytest.fixture(scope="module")
def engine(editor):
    ed, path = editor
    return VLLMEngine(path, ed.layout, max_model_len=512)


def _sources(n: int, h: int = 4, w: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (n, h, w), generator=torch.Generator().manual_seed(seed))


def _same(a, b):
    assert torch.equal(a.completions, b.completions)
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.sampled_mask, b.sampled_mask)
    assert torch.equal(a.image_positions, b.image_positions)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-4)
    assert a.thinking == b.thinking


def test_greedy_edits_are_earl_s_token_for_token(editor, engine):
    ed, _ = editor
    src = _sources(6)
    ref = sample_edits(ed.backbone, ed.layout, INSTRUCTIONS, src, GREEDY, decoder="hf")
    got = engine.sample_edits(INSTRUCTIONS, src, GREEDY)
    _same(ref, got)
    assert len({tuple(g.flatten().tolist()) for g in got.codes}) > 1  # not one constant grid for all
    for row in got.completions:  # well-formed: the layout parses every one
        ed.layout.parse_image(row, 4, 4)


def test_each_request_carries_its_own_grid(editor, engine):
    """The grid travels with the request (extra_args): a 2 x 3 grid on the same engine."""
    ed, _ = editor
    src = _sources(3, 2, 3, seed=1)
    _same(sample_edits(ed.backbone, ed.layout, INSTRUCTIONS[:3], src, GREEDY, decoder="hf"),
          engine.sample_edits(INSTRUCTIONS[:3], src, GREEDY))


@pytest.mark.parametrize("budget", [3, 40])
def test_greedy_thinking_then_image_is_earl_s(editor, engine, budget):
    """<think> text </think> from the text ids, closed by the model or forced at the budget, then the image."""
    ed, _ = editor
    cfg = SamplingConfig(temperature=0.0, max_think_tokens=budget)
    src = _sources(4, seed=2)
    ref = sample_edits(ed.backbone, ed.layout, INSTRUCTIONS[:4], src, cfg, think=True, decoder="hf")
    got = engine.sample_edits(INSTRUCTIONS[:4], src, cfg, think=True)
    _same(ref, got)


def test_sampled_edits_repeat_with_the_seed_and_are_well_formed(editor, engine):
    ed, _ = editor
    cfg = SamplingConfig(temperature=1.0, top_k=20)
    src = _sources(4, seed=3)

    def run(seed):
        return engine.sample_edits(INSTRUCTIONS[:4], src, cfg, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a.codes, b.codes) and not torch.equal(a.codes, c.codes)
    assert bool((a.logprobs[a.sampled_mask] < 0).all()) and bool((a.logprobs[~a.sampled_mask] == 0).all())
    for row in a.completions:
        ed.layout.parse_image(row, 4, 4)


def test_the_pipeline_samples_on_the_engine_it_is_given(editor, engine):
    ed, _ = editor
    image = ed.decode_codes(_sources(1, seed=4))[0]
    ours = EditPipeline(ed)(image, INSTRUCTIONS[0])
    theirs = EditPipeline(ed, engine=engine)(image, INSTRUCTIONS[0])
    assert ours.images[0].tobytes() == theirs.images[0].tobytes()


def test_guidance_is_refused_naming_the_option_and_the_way_out(engine):
    with pytest.raises(EarlError, match=r"guidance.*engine='earl'"):
        engine.sample_edits(INSTRUCTIONS[:2], _sources(2), SamplingConfig(guidance_scale=3.0))


def test_a_prompt_too_long_is_refused_before_generating_naming_the_sample(engine):
    long = " ".join(["make the red circle blue"] * 120)
    with pytest.raises(EarlError, match=r"sample 2: .*max_model_len"):
        engine.sample_edits([INSTRUCTIONS[0], INSTRUCTIONS[1], long], _sources(3), GREEDY)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the head sizes checked are those of vLLM's CPU attention")
def test_a_model_the_engine_cannot_run_is_refused_naming_engine_and_model(tiny_editor, tmp_path):
    tiny_editor.save_pretrained(tmp_path / "ed")  # shapes-test: attention heads of 16, which vLLM's CPU lacks
    with pytest.raises(EarlError, match=r"engine 'vllm' cannot run .*ed/backbone.*head size is 16.*engine='earl'"):
        VLLMEngine(tmp_path / "ed", tiny_editor.layout)
    with pytest.raises(EarlError, match=r"engine 'vllm'.*nowhere.*neither"):
        VLLMEngine(tmp_path / "nowhere", tiny_editor.layout)


def test_without_vllm_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)
    with pytest.raises(EarlError, match=r"engine 'vllm' needs the vllm package.*engine='earl'"):
        _vllm()


def test_the_agent_s_editor_samples_on_the_engine_it_is_given(editor, engine):
    from earl.agents.editor import PipelineEditor

    ed, _ = editor
    images = ed.decode_codes(_sources(3, seed=5))
    ours = PipelineEditor(ed).edit(images, INSTRUCTIONS[:3])
    theirs = PipelineEditor(ed, engine=engine).edit(images, INSTRUCTIONS[:3])
    assert [im.tobytes() for im in ours] == [im.tobytes() for im in theirs]


def test_the_bundled_editor_s_shapes_eval_is_the_same_on_vllm(tmp_path):
    """`earl eval shapes --engine vllm` end to end on the bundled editor (its own engine over its backbone/):
    the same greedy images, byte for byte, as earl's sampler."""
    from earl.evaluate import run_shapes_eval
    from earl.pipeline import default_checkpoint
    from earl.shapes.dataset import write_dataset

    data = write_dataset(tmp_path / "data", split="simple", n=8, seed=0, part="test", progress=False)
    greedy = SamplingConfig(temperature=0.0)
    with pytest.raises(EarlError, match="guidance.*engine='earl'"):  # refused before the engine starts
        run_shapes_eval(default_checkpoint(), data, tmp_path / "cfg", SamplingConfig(guidance_scale=2.0),
                        progress=False, engine="vllm")
    a = run_shapes_eval(default_checkpoint(), data, tmp_path / "earl", greedy, batch_size=4, progress=False)
    b = run_shapes_eval(default_checkpoint(), data, tmp_path / "vllm", greedy, batch_size=4, progress=False,
                        engine="vllm")
    assert (a["engine"], b["engine"]) == ("earl", "vllm")
    names = sorted(p.name for p in (tmp_path / "earl" / "images").iterdir())
    assert len(names) == 8
    for n in names:
        assert (tmp_path / "earl" / "images" / n).read_bytes() == (tmp_path / "vllm" / "images" / n).read_bytes()


def test_pushed_weights_are_what_the_engine_samples_from(editor, engine):
    """`load_weights` (an RL step's new policy): greedy edits are then earl's on the new weights. The prompts
    span more than one KV block (128 tokens), so a stale prefix cache would be reused if it were kept."""
    import copy

    ed, _ = editor
    src = _sources(4, 9, 14, seed=6)
    assert len(ed.layout.prompt(INSTRUCTIONS[0], src[0])) > engine.llm.llm_engine.vllm_config.cache_config.block_size
    before = engine.sample_edits(INSTRUCTIONS[:4], src, GREEDY)
    changed = copy.deepcopy(ed.backbone)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    try:
        engine.load_weights(changed)
        after = engine.sample_edits(INSTRUCTIONS[:4], src, GREEDY)
        _same(sample_edits(changed, ed.layout, INSTRUCTIONS[:4], src, GREEDY, decoder="hf"), after)
        assert not torch.equal(before.codes, after.codes)
    finally:
        engine.load_weights(ed.backbone)  # the module's other tests sample the saved weights
    _same(before, engine.sample_edits(INSTRUCTIONS[:4], src, GREEDY))

