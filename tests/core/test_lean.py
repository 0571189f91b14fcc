"""`earl.lean` is a second implementation of the Llama forward: it is held to Hugging Face's, logit for logit."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from earl.errors import EarlError
from earl.generate import SamplingConfig, choose_decoder, greedy_text, sample_edits
from earl.generate.decoders import _Decoder, _LeanDecoder
from earl.lean import LeanLlama, unsupported_reason

INSTRUCTIONS = ["make the red circle blue", "change the square to green", "remove the small triangle"]


def _tiny_llama(**over) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, hidden_size=64, intermediate_size=144, num_hidden_layers=3, num_attention_heads=8,
               num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(LlamaConfig(**{**cfg, **over})).eval()
    with torch.no_grad():  # norms away from 1, so a dropped or misplaced norm weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _padded_batch(lengths, vocab, seed=0):
    """Left-padded random prompts: (ids, mask, positions) as `EditLayout.pad_prompts` builds them."""
    g = torch.Generator().manual_seed(seed)
    P = max(lengths)
    ids = torch.zeros(len(lengths), P, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, P - n:] = torch.randint(1, vocab, (n,), generator=g)
        mask[r, P - n:] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (4, 4), (8, 1)])
def test_logits_equal_the_hf_forward_over_prefill_and_cached_feeds(heads, kv_heads):
    """Left padding, one-token steps, multi-token feeds (a row's code + <eol>, the header) and rows fed
    masked padding (the CoT loop's finished and unconditional rows) must all match."""
    model = _tiny_llama(num_attention_heads=heads, num_key_value_heads=kv_heads, rope_theta=500.0)
    batch = _padded_batch([7, 12, 3, 12], model.config.vocab_size)
    hf, lean = _Decoder(model, batch), _LeanDecoder(model, batch, capacity=40)
    torch.testing.assert_close(lean.logits, hf.logits, atol=1e-5, rtol=1e-5)
    g = torch.Generator().manual_seed(1)
    feeds = [(1, None), (2, None), (1, torch.tensor([True, False, True, False])), (4, None), (1, None), (3, None)]
    for n, active in feeds:
        ids = torch.randint(1, model.config.vocab_size, (4, n), generator=g)
        torch.testing.assert_close(lean.feed(ids, active), hf.feed(ids, active), atol=1e-5, rtol=1e-5)
    assert lean.net.length == 12 + sum(n for n, _ in feeds)


def test_the_fused_weights_are_read_afresh_by_the_next_generation():
    """RL updates the policy in place between rollouts: a LeanLlama built after the update must see it."""
    model = _tiny_llama()
    batch = _padded_batch([5, 5], model.config.vocab_size)
    before = LeanLlama(model, 2, 8).forward(batch["input_ids"], batch["position_ids"], batch["attention_mask"])
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(3.0)
        model.model.layers[0].input_layernorm.weight.add_(0.5)
    after = LeanLlama(model, 2, 8).forward(batch["input_ids"], batch["position_ids"], batch["attention_mask"])
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, _Decoder(model, batch).logits, atol=1e-5, rtol=1e-5)


def test_a_cache_overflow_and_a_wrong_mask_are_named():
    model = _tiny_llama()
    batch = _padded_batch([5, 5], model.config.vocab_size)
    net = LeanLlama(model, 2, 6)
    with pytest.raises(EarlError, match="exceed the cache of 6"):
        net.forward(torch.ones(2, 7, dtype=torch.long), torch.zeros(2, 7, dtype=torch.long), torch.ones(2, 7))
    with pytest.raises(EarlError, match="key_mask has shape"):
        net.forward(batch["input_ids"], batch["position_ids"], batch["attention_mask"][:, :4])


def test_backbones_it_cannot_reproduce_are_refused_and_generation_falls_back(tiny_editor):
    biased = _tiny_llama(attention_bias=True)
    assert "bias" in unsupported_reason(biased)
    assert "hidden_act" in unsupported_reason(_tiny_llama(hidden_act="gelu"))
    assert unsupported_reason(_tiny_llama()) is None
    sharded = _tiny_llama()
    sharded.model.layers[0].mlp.up_proj.weight.ds_id = 7  # what DeepSpeed ZeRO-3 marks a partitioned parameter with
    assert "ZeRO-3" in unsupported_reason(sharded)
    with pytest.raises(EarlError, match="has a bias"):
        LeanLlama(biased, 1, 4)
    layout, codes = tiny_editor.layout, torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(EarlError, match="decoder 'lean' asked for, but .*has a bias"):
        sample_edits(biased, layout, INSTRUCTIONS[:1], codes, SamplingConfig(temperature=0.0), decoder="lean")
    assert choose_decoder(biased, "cpu") == "hf"  # auto falls back


@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.slow
def test_sampled_edits_match_the_hf_forward(tiny_editor, scale):
    """Same seed, same tokens, same log-probs as the Hugging Face forward (CFG rows included)."""
    codes = torch.randint(0, tiny_editor.image_tokenizer.codebook_size, (3, 4, 4),
                          generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(temperature=1.0, guidance_scale=scale)
    runs = [sample_edits(tiny_editor.backbone, tiny_editor.layout, INSTRUCTIONS, codes, cfg, decoder=decoder,
                         generator=torch.Generator().manual_seed(4)) for decoder in ("lean", "hf")]
    assert torch.equal(runs[0].completions, runs[1].completions)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-5, rtol=1e-5)


def test_thinking_rows_match_the_hf_forward(tiny_cot_editor):
    """CoT: conditional rows finish their text at different steps and feed masked padding meanwhile."""
    codes = torch.zeros(2, 4, 4, dtype=torch.long)
    cfg = SamplingConfig(temperature=1.0, max_think_tokens=8, guidance_scale=2.0)
    runs = [sample_edits(tiny_cot_editor.backbone, tiny_cot_editor.layout, INSTRUCTIONS[:2], codes, cfg, think=True,
                         decoder=decoder, generator=torch.Generator().manual_seed(2)) for decoder in ("lean", "hf")]
    assert torch.equal(runs[0].completions, runs[1].completions)
    assert runs[0].thinking == runs[1].thinking


def test_an_emu3_text_model_runs_lean_with_the_same_logits():
    """Emu3's text model is a Llama with a residual dropout (identity in eval): the lean forward takes it."""
    from transformers import Emu3ForCausalLM, Emu3TextConfig

    torch.manual_seed(0)
    model = Emu3ForCausalLM(Emu3TextConfig(vocab_size=80, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2,
                                           max_position_embeddings=128, attention_dropout=0.0, pad_token_id=0,
                                           bos_token_id=1, eos_token_id=2)).eval()
    assert unsupported_reason(model) is None
    batch = _padded_batch([6, 9], 80, seed=3)
    hf, lean = _Decoder(model, batch), _LeanDecoder(model, batch, capacity=4)
    torch.testing.assert_close(lean.logits, hf.logits, atol=1e-5, rtol=1e-5)
    ids = torch.tensor([[5, 6], [7, 8]])
    torch.testing.assert_close(lean.feed(ids), hf.feed(ids), atol=1e-5, rtol=1e-5)


def test_a_wrapper_that_changes_the_forward_is_not_bypassed():
    class Biased(LlamaForCausalLM):
        def forward(self, **kw):
            out = super().forward(**kw)
            out.logits[..., 3] += 100.0
            return out

    torch.manual_seed(0)
    model = Biased(_tiny_llama().config).eval()
    assert "own forward" in unsupported_reason(model)
    assert "own forward" in unsupported_reason(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("decoder", ["lean", "hf", "static"])
@pytest.mark.slow
def test_greedy_text_writes_what_hf_generate_writes(decoder):
    """The reward model's verdicts used `generate(do_sample=False, output_logits=True)`: same ids (pad
    after eos, stop when every row ended) and the same raw logits per step. The eos is an id that some
    rows write and others never do, so both the padding and the budget are exercised."""
    model = _tiny_llama()
    batch = _padded_batch([6, 9, 4, 9, 7], model.config.vocab_size, seed=2)
    free = model.generate(**batch, max_new_tokens=24, do_sample=False, top_k=None, pad_token_id=0)
    written = [set(row.tolist()) for row in free[:, batch["input_ids"].shape[1]:]]
    eos = next(t for t in sorted(set.union(*written)) if 0 < sum(t in w for w in written) < len(written))
    pad = 0
    ref = model.generate(**batch, max_new_tokens=24, do_sample=False, top_k=None, eos_token_id=eos,
                         pad_token_id=pad, output_logits=True, return_dict_in_generate=True)
    new, logits = greedy_text(model, batch, 24, eos, pad, decoder=decoder)
    ended = (new == eos).any(-1)
    assert ended.any() and not ended.all()  # the case is not trivial
    assert torch.equal(new, ref.sequences[:, batch["input_ids"].shape[1]:])
    torch.testing.assert_close(logits, torch.stack(ref.logits, dim=1), atol=1e-5, rtol=1e-5)


def test_gcpo_traces_are_the_same_on_the_lean_and_hf_forward():
    """The GCPO sampler decodes through `open_decoder`: same seed, same traces and watched logits."""
    from earl.generate import sample_traces_watching

    model = _tiny_llama()
    prompts = [[3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]
    runs = [sample_traces_watching(model, prompts, 3, 1.0, 12, eos=2, pad=0, generator=torch.Generator().manual_seed(0),
                                   watch=[3, 4], decoder=decoder) for decoder in ("lean", "hf")]
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
