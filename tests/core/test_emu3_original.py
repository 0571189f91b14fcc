"""EARL's released checkpoints in BAAI's original Emu3 format, loaded without remote code.

The tests write tiny checkpoints in exactly that layout: a decoder config.json with model_type "Emu3"
and BAAI's keys, Llama weights under BAAI's names in two safetensors shards with an index, an
emu3.tiktoken (a small byte-level BPE trained here) with emu3_vision_tokens.txt, and a vision
tokenizer (config.json "Emu3VisionVQ", weights under the original module names, 1x1-conv attention).
Token ids are checked against a tiktoken-style encoder written here, and EARL's sequences against a
restatement of how EARL builds them (strings of special tokens, tokenised as one text)."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter

import numpy as np
import pytest
import regex
import torch
from PIL import Image
from safetensors.torch import save_file

from earl.emu3_original import PATTERN
from earl.errors import EarlError
from earl.model import UnifiedEditor

CODES = 64
CORPUS = ("make the sky red. remove the dog! add a hat to the man; turn the car blue, the the the "
          "Let's think step by step. <|start thinking|> The sky is blue, so the edit paints it red.<|end thinking|> "
          "12*16 8*8 2*3 don't it's we'll they've 1234567890 \n\n  spaces   and\ttabs")


# ---- a tiny emu3.tiktoken and a tiktoken-style reference encoder ---------------------------------
def train_ranks(corpus: str, merges: int = 80) -> dict[bytes, int]:
    """Byte-level BPE ranks: the 256 bytes, then the most frequent pair of each round (ties: smallest)."""
    ranks = {bytes([b]): b for b in range(256)}
    words = [[bytes([b]) for b in w.encode()] for w in regex.findall(PATTERN, corpus)]
    for _ in range(merges):
        pairs = Counter((w[i], w[i + 1]) for w in words for i in range(len(w) - 1))
        if not pairs:
            break
        top = max(pairs.values())
        a, b = min(p for p, c in pairs.items() if c == top)
        ranks[a + b] = len(ranks)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i : i + 2] = [a + b]
                i += 1
    return ranks


def specials_of(n_ranks: int) -> dict[str, int]:
    """BAAI's special-token scheme restated: ids after the ranks, in this order."""
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)),
             "<|image token|>", "<|image start|>", "<|image end|>", *(f"<|visual token {c:06d}|>" for c in range(CODES))]
    return {t: n_ranks + i for i, t in enumerate(names)}


def reference_encode(text: str, ranks: dict[bytes, int], specials: dict[str, int]) -> list[int]:
    """tiktoken's algorithm: special tokens split out; each regex piece whole if ranked, else merged by rank."""
    out: list[int] = []

    def ordinary(t: str):
        for piece in regex.findall(PATTERN, t):
            b = piece.encode()
            if b in ranks:
                out.append(ranks[b])
                continue
            parts = [bytes([x]) for x in b]
            while True:
                cands = [(ranks[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 1)
                         if parts[i] + parts[i + 1] in ranks]
                if not cands:
                    break
                _, i = min(cands)
                parts[i : i + 2] = [parts[i] + parts[i + 1]]
            out.extend(ranks[p] for p in parts)

    pos = 0
    for m in re.finditer("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)), text):
        ordinary(text[pos : m.start()])
        out.append(specials[m.group()])
        pos = m.end()
    ordinary(text[pos:])
    return out


# ---- the checkpoints, written in the original layout -----------------------------------------------
def write_decoder(path, ranks, seed=0):
    path.mkdir(parents=True)
    (path / "emu3.tiktoken").write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    vision_lines = ["<|image token|>", "<|image start|>", "<|image end|>", *(f"<|visual token {c:06d}|>"
                                                                           for c in range(CODES))]
    (path / "emu3_vision_tokens.txt").write_text("\n".join(vision_lines) + "\n")
    sp = specials_of(len(ranks))
    V, d, ffn, layers, heads, kv = len(ranks) + len(sp), 64, 128, 2, 4, 2
    cfg = {"architectures": ["Emu3ForCausalLM"], "model_type": "Emu3",
           "auto_map": {"AutoConfig": "configuration_emu3.Emu3Config",
                        "AutoModelForCausalLM": "modeling_emu3.Emu3ForCausalLM"},
           "vocab_size": V, "hidden_size": d, "intermediate_size": ffn, "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": kv, "hidden_act": "silu",
           "max_position_embeddings": 1024, "initializer_range": 0.02, "rms_norm_eps": 1e-5, "use_cache": True,
           "pad_token_id": sp["<|endoftext|>"], "bos_token_id": sp["<|extra_203|>"], "eos_token_id": sp["<|extra_204|>"],
           "img_token_id": sp["<|image token|>"], "boi_token_id": sp["<|image start|>"],
           "eoi_token_id": sp["<|image end|>"], "eol_token_id": sp["<|extra_200|>"], "eof_token_id": sp["<|extra_201|>"],
           "image_area": 518400, "pretraining_tp": 1, "tie_word_embeddings": False, "rope_theta": 1000000.0,
           "rope_scaling": None, "attention_dropout": 0.0, "torch_dtype": "float32", "transformers_version": "4.44.0"}
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    hd = d // heads
    weights = {"model.embed_tokens.weight": w(V, d), "model.norm.weight": torch.ones(d), "lm_head.weight": w(V, d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        weights.update({p + "self_attn.q_proj.weight": w(d, d), p + "self_attn.k_proj.weight": w(kv * hd, d),
                        p + "self_attn.v_proj.weight": w(kv * hd, d), p + "self_attn.o_proj.weight": w(d, d),
                        p + "mlp.gate_proj.weight": w(ffn, d), p + "mlp.up_proj.weight": w(ffn, d),
                        p + "mlp.down_proj.weight": w(d, ffn), p + "input_layernorm.weight": torch.ones(d),
                        p + "post_attention_layernorm.weight": torch.ones(d)})
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for f, keys in shards.items():
        save_file({k: weights[k].contiguous() for k in keys}, str(path / f), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(t.numel() * 4 for t in weights.values())},
             "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return weights


def to_original_vq_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers Emu3VQVAE state dict restated in the Emu3-VisionTokenizer's module names: encoder.down.i,
    decoder.up.i, *.mid; attention blocks q, k, v, proj_out as 1x1 convolutions with their norm inside."""
    attn = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "proj_out"}
    out = {}
    for k, v in state.items():
        k = k.replace("down_block.down.", "down.").replace("up_block.up.", "up.").replace("middle_block.", "mid.")
        k = re.sub(r"\.attn_norms\.(\d+)\.", r".attn.\1.norm.", k)
        k = k.replace("mid.attn_norm.", "mid.attn_1.norm.")
        m = re.search(r"\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$", k)
        if m:
            k = k[: m.start()] + f".{attn[m[1]]}.{m[2]}"
            if m[2] == "weight":
                v = v[:, :, None, None]
        out[k] = v.contiguous()
    return out


def write_vision_tokenizer(path, seed=0):
    from transformers import Emu3VQVAE, Emu3VQVAEConfig

    path.mkdir(parents=True)
    cfg = {"architectures": ["Emu3VisionVQModel"], "model_type": "Emu3VisionVQ", "codebook_size": CODES,
           "embed_dim": 4, "z_channels": 4, "double_z": False, "in_channels": 3, "out_channels": 3,
           "temporal_downsample_factor": 2, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [1],
           "dropout": 0.0, "torch_dtype": "float32"}
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                                                               "min_pixels": 256 * 256, "max_pixels": 1024 * 1024}))
    torch.manual_seed(seed)
    hf = Emu3VQVAE(Emu3VQVAEConfig(codebook_size=CODES, embed_dim=4, latent_channels=4, base_channels=32,
                                   channel_multiplier=[1, 2], num_res_blocks=1, attn_resolutions=[1],
                                   temporal_downsample_factor=2, hidden_size=64, num_attention_heads=1)).eval()
    original = to_original_vq_names(hf.state_dict())
    assert "encoder.mid.attn_1.q.weight" in original and original["encoder.mid.attn_1.q.weight"].dim() == 4
    save_file(original, str(path / "model.safetensors"))
    return hf


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("earl-original")
    ranks = train_ranks(CORPUS)
    weights = write_decoder(root / "sft-simple", ranks)
    vq = write_vision_tokenizer(root / "Emu3-VisionTokenizer")
    (root / "earl-thinking-sft-simple").symlink_to(root / "sft-simple")  # a thinking checkpoint's name
    return {"root": root, "model": root / "sft-simple", "thinking": root / "earl-thinking-sft-simple",
            "vision": root / "Emu3-VisionTokenizer", "ranks": ranks, "weights": weights, "vq": vq}


@pytest.fixture(scope="module")
def editor(ckpt):
    return UnifiedEditor.from_pretrained(ckpt["model"], vision_tokenizer=ckpt["vision"], image_area=16 * 16)


@pytest.fixture(scope="module")
def cot_editor(ckpt):
    return UnifiedEditor.from_pretrained(ckpt["thinking"], vision_tokenizer=ckpt["vision"], image_area=16 * 16)


# ---- tests -------------------------------------------------------------------------------------------
STRINGS = ["make the sky red", "Remove the dog!", " add a hat to the man.", "don't stop; it's 12*16 px",
           "café naïve 日本語 🙂", "two  spaces\nand a new line\n\n", "tabs\tand  trailing   ",
           "<|extra_203|><|image start|>2*3<|image token|><|visual token 000005|><|extra_200|>",
           " Let's think step by step. <|start thinking|> The sky is red.<|end thinking|>", ""]


def test_tokenizer_ids_match_tiktoken(editor, ckpt):
    tok, ranks = editor.text_tokenizer, ckpt["ranks"]
    sp = specials_of(len(ranks))
    for s in STRINGS:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert ids == reference_encode(s, ranks, sp), s
        assert tok.decode(ids) == s
    assert len(tok) == len(ranks) + len(sp)
    n = len(ranks)  # BAAI's scheme: <|extra_i|> = n + 3 + i, visual token c = n + 3 + 205 + 3 + c
    assert tok.convert_tokens_to_ids("<|extra_203|>") == tok.bos_token_id == n + 3 + 203
    assert tok.eos_token_id == n + 3 + 204 and tok.pad_token_id == n
    assert editor.layout.vocab.image_offset == n + 211 and editor.layout.vocab.eol == n + 3 + 200
    assert editor.layout.vocab.boi == n + 209 and editor.layout.vocab.img == n + 208


def test_from_pretrained_reads_the_original_format(ckpt):
    from transformers import LlamaForCausalLM

    ed = UnifiedEditor.from_pretrained(ckpt["model"], vision_tokenizer=ckpt["vision"])
    assert type(ed.backbone) is LlamaForCausalLM
    state = ed.backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt["weights"].items())  # both shards, every name
    c = ed.backbone.config
    assert (c.num_key_value_heads, c.rope_parameters["rope_theta"], c.tie_word_embeddings) == (2, 1e6, False)
    vq = ed.image_tokenizer.vqvae.state_dict()
    assert vq.keys() == ckpt["vq"].state_dict().keys()
    assert all(torch.equal(vq[k], v) for k, v in ckpt["vq"].state_dict().items())
    cfg = ed.config
    assert (cfg.prompt_order, cfg.think_format, cfg.cot, cfg.image_area) == ("image_instruction", "cot_text",
                                                                             False, 256 * 256)
    assert UnifiedEditor.from_pretrained(ckpt["thinking"], vision_tokenizer=ckpt["vision"]).config.cot


def test_vision_tokenizer_encodes_as_the_original(editor, ckpt):
    img = Image.new("RGB", (16, 16), (200, 30, 30))
    codes = editor.encode_images([editor.preprocess(img)[0]])
    x = (torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None] / 255 - 0.5) / 0.5
    ref = ckpt["vq"].encode(x, torch.tensor([[16, 16]]), return_dict=True).image_tokens[0]
    assert codes.shape == (1, 8, 8) and torch.equal(codes[0], ref.long())


def earl_image_string(codes: torch.Tensor) -> str:
    """EARL's image string: <|image start|> "h*w" <|image token|> rows joined by <|extra_200|>, then
    <|extra_200|> <|extra_201|> <|image end|>."""
    h, w = codes.shape
    rows = ["".join(f"<|visual token {int(c):06d}|>" for c in row) for row in codes]
    return f"<|image start|>{h}*{w}<|image token|>" + "<|extra_200|>".join(rows) + "<|extra_200|><|extra_201|><|image end|>"


def test_sequences_are_earls_token_for_token(editor, cot_editor, ckpt):
    sp = specials_of(len(ckpt["ranks"]))
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(0, CODES, (2, 3), generator=g), torch.randint(0, CODES, (2, 3), generator=g)
    instruction, reasoning = "make the sky red.", "The sky is blue, so paint it red. " * 80  # longer than 1,750

    def enc(s):
        return reference_encode(s, ranks=ckpt["ranks"], specials=sp)

    prompt = "<|extra_203|>" + earl_image_string(src) + instruction  # BOS + source + instruction, no template
    ex = editor.layout.example(instruction, src, tgt)
    assert ex.input_ids == enc(prompt + earl_image_string(tgt) + "<|extra_204|>")
    assert ex.prompt_len == len(enc(prompt)) and sum(ex.loss_mask) == len(ex.input_ids) - len(enc(prompt))
    cot = f" Let's think step by step. <|start thinking|> {reasoning[:1750]}<|end thinking|>"
    ex = cot_editor.layout.example(instruction, src, tgt, thinking=reasoning)
    assert ex.input_ids == enc(prompt + cot + earl_image_string(tgt) + "<|extra_204|>")
    # inference prefill after the prompt: the image header, or the opening of the reasoning
    lay = editor.layout
    assert lay.prompt(instruction, src) + lay.header(2, 3) == enc(prompt + "<|image start|>2*3<|image token|>")
    assert lay.prompt(instruction, src) + cot_editor.layout.think_open() == enc(
        prompt + " Let's think step by step. <|start thinking|>")
    assert cot_editor.layout.parse_thinking(enc(cot) + enc(earl_image_string(tgt))) == reasoning[:1750].strip()


def test_edit_sft_step_grpo_step_save_and_reload(cot_editor, tmp_path):
    from earl.generate import SamplingConfig, sample_edits
    from earl.pipeline import EditPipeline
    from earl.rl.logprobs import policy_logprobs, rollout_from_generation
    from earl.rl.losses import policy_loss

    ed = cot_editor
    img = Image.new("RGB", (16, 16), (20, 90, 200))
    res = EditPipeline(ed)(img, "make the sky red", temperature=1.0, seed=0)  # a thinking checkpoint thinks
    assert res.images[0].size == (16, 16) and isinstance(res.thinking[0], str)

    src = ed.encode_images([img])[0]
    tgt = ed.encode_images([Image.new("RGB", (16, 16), (220, 40, 40))])[0]
    backbone = ed.backbone
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    opt = torch.optim.SGD(backbone.parameters(), lr=0.1)
    backbone.train()  # SFT: one step on EARL's sequence with reasoning
    loss = ed(**ed.layout.collate([ed.layout.example("make the sky red", src, tgt, thinking="paint it red")])).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert torch.isfinite(loss) and not torch.equal(before["lm_head.weight"], backbone.state_dict()["lm_head.weight"])

    backbone.eval()  # GRPO: sampled with thinking, log-probs recomputed as sampled, one step
    cfg = SamplingConfig(temperature=1.0, max_think_tokens=6)
    out = sample_edits(backbone, ed.layout, ["make the sky red"] * 2, src[None].repeat(2, 1, 1), cfg, think=True,
                       generator=torch.Generator().manual_seed(0))
    opening = ed.layout.think_open()
    assert out.completions[0, : len(opening)].tolist() == opening  # EARL's plain-text opening, forced
    assert all(ed.layout.parse_image(c).shape == src.shape for c in out.completions)
    rollout = rollout_from_generation(["make the sky red"] * 2, src[None].repeat(2, 1, 1), out, ed.layout)
    logp = policy_logprobs(backbone, ed.layout, rollout, cfg)
    m = rollout.sampled
    assert torch.allclose(logp[m], rollout.old_logprobs[m], atol=1e-4)
    loss, _ = policy_loss(logp, rollout.old_logprobs, torch.tensor([1.0, -1.0]), m, 0.2, 0.2, None, 0.0, "grpo")
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

    greedy = SamplingConfig(temperature=0.0, max_think_tokens=4)
    first = sample_edits(backbone, ed.layout, ["remove the dog"], src[None], greedy, think=True)
    ed.save_pretrained(tmp_path / "ed")
    meta = json.loads((tmp_path / "ed/editor.json").read_text())
    assert (meta["prompt_order"], meta["think_format"], meta["cot"]) == ("image_instruction", "cot_text", True)
    again = UnifiedEditor.from_pretrained(tmp_path / "ed")
    second = sample_edits(again.backbone, again.layout, ["remove the dog"], src[None], greedy, think=True)
    assert torch.equal(first.completions, second.completions)
    assert again.layout.example("x", src, tgt, "y").input_ids == ed.layout.example("x", src, tgt, "y").input_ids


def test_sft_and_grpo_trainers_take_a_converted_editor(ckpt, tmp_path):
    """`earl convert emu3`, then one step of `earl train sft` and of `earl train grpo` from its output."""
    from pathlib import Path

    from earl.cli import main
    from earl.config import load_config
    from earl.shards import tokenize_dataset
    from earl.train.grpo import GRPORecipe, train_grpo
    from earl.train.sft import SFTRecipe, train_sft
    from tests.rl.test_grpo import Redness
    from tests.train.test_data_shards import jsonl_dataset

    assert main(["convert", "emu3", "--model", str(ckpt["model"]), "--vision-tokenizer", str(ckpt["vision"]),
          "--out", str(tmp_path / "conv"), "--image-area", str(16 * 16)]) == 0
    ed = UnifiedEditor.from_pretrained(tmp_path / "conv")
    assert ed.config.prompt_order == "image_instruction" and ed.config.image_area == 16 * 16
    tokenize_dataset(jsonl_dataset(tmp_path / "data", n=2, broken=None), ed, tmp_path / "shards", progress=False)
    root = Path(__file__).resolve().parents[2]
    over = {"out_dir": tmp_path / "sft", "model.init_from": tmp_path / "conv", "model.image_size": 16,
            "data.train": f"[tokenized:{tmp_path / 'shards'}]", "data.eval": "null", "run.steps": 1,
            "run.batch_size": 2, "run.save_every": 1, "run.log_every": 1, "optim.warmup_steps": 1}
    cfg = load_config(SFTRecipe, root / "recipes/emu3/sft.yaml", [f"{k}={v}" for k, v in over.items()]
                      + ["run.deepspeed=null", "run.mixed_precision=no", "run.grad_accum=1",
                         "run.gradient_checkpointing=false"])
    assert train_sft(cfg, progress=False)["step"] == 1
    over = {"out_dir": tmp_path / "grpo", "init_from": tmp_path / "conv", "data.train": f"[tokenized:{tmp_path / 'shards'}]",
            "grpo.group_size": 2, "grpo.prompts_per_step": 2, "grpo.minibatch_size": 2, "run.steps": 1,
            "run.save_every": 1, "run.deepspeed": "null", "run.mixed_precision": "no"}
    cfg = load_config(GRPORecipe, root / "recipes/emu3/grpo.yaml", [f"{k}={v}" for k, v in over.items()])
    assert train_grpo(cfg, progress=False, verifier=Redness())["step"] == 1
    assert UnifiedEditor.from_pretrained(tmp_path / "grpo/model").config.prompt_order == "image_instruction"


def test_a_directory_of_no_known_format_is_named(ckpt, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x/config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(EarlError, match=r"x: not an earl editor \(no editor.json\).*emu3.tiktoken.*vision_tokenizer"):
        UnifiedEditor.from_pretrained(tmp_path / "x")
    with pytest.raises(EarlError, match="pass vision_tokenizer="):
        UnifiedEditor.from_pretrained(ckpt["model"])
    with pytest.raises(EarlError, match="not an Emu3 vision tokenizer.*Emu3VisionVQ"):
        UnifiedEditor.from_pretrained(ckpt["model"], vision_tokenizer=tmp_path / "x")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((ckpt["model"] / "config.json").read_text())
    with pytest.raises(EarlError, match=r"bare: no emu3.tiktoken"):
        UnifiedEditor.from_pretrained(bare, vision_tokenizer=ckpt["vision"])
