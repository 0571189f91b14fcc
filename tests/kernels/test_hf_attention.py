"""The "earl_triton" transformers attention: same logits and samples as SDPA, SDPA wherever it cannot run."""

import copy
import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from earl.generate import SamplingConfig, cache_kwargs, sample_edits
from earl.kernels.hf import NAME, padding_starts, register, use_triton_attention


def count_kernel_calls(monkeypatch) -> dict:
    """Wrap the two kernels so a test can check the Triton path ran (not a silent SDPA fallback)."""
    import earl.kernels.attention as att

    calls = {"prefill": 0, "decode": 0}
    for name in calls:
        fn = getattr(att, f"{name}_attention")

        def wrapped(*a, _fn=fn, _name=name, **k):
            calls[_name] += 1
            return _fn(*a, **k)

        monkeypatch.setattr(att, f"{name}_attention", wrapped)
    return calls


def tiny_llama(kv_heads: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=16, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def test_padding_starts_accepts_exactly_causal_plus_left_padding():
    lq = lk = 6
    start = torch.tensor([0, 2])
    cols = torch.arange(lk)
    mask = (cols[None, None, :] >= start[:, None, None]) & (cols[None, None, :] <= torch.arange(lq)[None, :, None])
    assert torch.equal(padding_starts(mask[:, None], lq, lk), start)
    holed = mask.clone()
    holed[1, 4, 3] = False  # a hole in the middle: not this pattern
    assert padding_starts(holed[:, None], lq, lk) is None
    assert padding_starts(mask[:, None].float(), lq, lk) is None  # additive float masks are not handled


def test_left_padded_prefill_and_cached_decode_match_sdpa(monkeypatch):
    calls = count_kernel_calls(monkeypatch)
    sdpa = tiny_llama()
    tri = copy.deepcopy(sdpa)
    assert use_triton_attention(tri, force=True) and tri.config._attn_implementation == NAME
    ids = torch.randint(3, 97, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, :7] = 0
    with torch.no_grad():
        a = sdpa(input_ids=ids, attention_mask=mask, use_cache=True)
        b = tri(input_ids=ids, attention_mask=mask, use_cache=True)
        live = mask.bool()
        assert torch.allclose(a.logits[live], b.logits[live], atol=1e-5)
        for step in range(3):  # decode steps over the cache: one new token per row
            nxt = a.logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            a = sdpa(input_ids=nxt, attention_mask=mask, use_cache=True, **cache_kwargs(sdpa, a.past_key_values))
            b = tri(input_ids=nxt, attention_mask=mask, use_cache=True, **cache_kwargs(tri, b.past_key_values))
            assert torch.allclose(a.logits, b.logits, atol=1e-5), step
    assert calls == {"prefill": 2, "decode": 6}  # 2 layers x (1 prefill + 3 decode steps)


@pytest.mark.slow
def test_earl_sampler_gives_the_same_edits_with_triton_attention(tiny_editor, monkeypatch):
    """Greedy CFG sampling through earl.generate: identical codes with either attention."""
    register()
    backbone = copy.deepcopy(tiny_editor.backbone)
    backbone.set_attn_implementation(NAME)
    layout = tiny_editor.layout
    h = w = tiny_editor.config.image_size // 8
    sources = torch.randint(0, layout.vocab.codebook_size, (2, h, w))
    instructions = ["make the red circle blue .", "remove the small triangle"]
    cfg = SamplingConfig(temperature=0.0, guidance_scale=3.0)
    ref = sample_edits(tiny_editor.backbone, layout, instructions, sources, cfg)
    calls = count_kernel_calls(monkeypatch)
    out = sample_edits(backbone, layout, instructions, sources, cfg)
    assert calls["prefill"] > 0 and calls["decode"] > 0
    assert torch.equal(ref.codes, out.codes)
    assert torch.allclose(ref.logprobs, out.logprobs, atol=1e-4)


def test_training_and_cpu_fall_back_to_sdpa_and_say_so_once(monkeypatch, caplog):
    import earl.kernels.hf as hf

    model = tiny_llama(kv_heads=4)
    use_triton_attention(model, force=True)
    ids = torch.randint(3, 97, (2, 5))
    hf._reported.clear()
    with caplog.at_level(logging.WARNING, logger="earl.kernels.hf"):
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()  # it trains: SDPA has a backward
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # a CPU tensor outside the interpreter: no kernels
        with torch.no_grad():
            model(input_ids=ids)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("no backward" in m for m in msgs) == 1  # once, though 2 layers called it
    assert sum("no GPU" in m for m in msgs) == 1
    assert not use_triton_attention(tiny_llama()) or torch.cuda.is_available()  # CPU, no force: keeps SDPA


def test_editor_attention_option(tiny_editor, tmp_path, caplog):
    import pytest

    from earl.errors import EarlError
    from earl.model import UnifiedEditor

    tiny_editor.save_pretrained(tmp_path / "ed")
    with pytest.raises(EarlError, match="attention must be"):
        UnifiedEditor.from_pretrained(tmp_path / "ed", attention="flash")
    if not torch.cuda.is_available():  # here: no GPU, so it stays on SDPA and says so
        with caplog.at_level(logging.WARNING):
            ed = UnifiedEditor.from_pretrained(tmp_path / "ed", attention="earl_triton")
        assert ed.backbone.config._attn_implementation == "sdpa"
        assert any("earl_triton attention needs" in r.getMessage() for r in caplog.records)
