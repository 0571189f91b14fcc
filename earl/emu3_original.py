"""Checkpoints in BAAI's original Emu3 format (EARL's released editors), read without remote code.

EARL published its editors (`mair-lab/earl-sft-simple.rl-simple-n-complex-scaled` and the others listed
in docs/EMU3.md) the way BAAI published Emu3: code for `trust_remote_code` beside the weights. This
module reads that format with transformers' own classes:

    model directory   config.json (model_type "Emu3", Emu3ForCausalLM)   -> LlamaForCausalLM (same weight
                      model*.safetensors (+ .index.json)                     names: model.*, lm_head)
                      emu3.tiktoken: `base64(bytes) rank` per line        -> a `tokenizers` byte-level BPE
                      emu3_vision_tokens.txt: one token per line              with the same ids
    vision directory  config.json (model_type "Emu3VisionVQ")            -> transformers' Emu3VQVAE
                      model.safetensors, preprocessor_config.json            (weights renamed, see below)

Token ids: the tiktoken ranks 0..n-1, then the special tokens in BAAI's order: `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>`, `<|extra_0|>` .. `<|extra_204|>`, then the lines of
emu3_vision_tokens.txt (`<|image token|>`, `<|image start|>`, `<|image end|>`, the visual tokens).
Roles: BOS `<|extra_203|>`, EOS `<|extra_204|>`, PAD `<|endoftext|>`; the ids config.json names are
checked against these.

EARL's sequences differ from earl's own editors in two ways, recorded in editor.json: the source image
comes before the instruction (`prompt_order="image_instruction"`), and the thinking checkpoints write
their reasoning between plain-text markers (`think_format="cot_text"`, see `earl.layout`).
`UnifiedEditor.from_pretrained(DIR, vision_tokenizer=...)` assembles the parts `load_original_parts`
returns (this module never imports `earl.model`); `earl convert emu3` saves that editor as an earl
editor directory (no tiktoken parsing on later loads).
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from earl.emu3 import DEFAULT_AREA, THINK_TOKENS, EditorParts, _normalisation, image_vocab_from_map
from earl.errors import EarlError
from earl.hub import resolve_model
from earl.layout import EditLayout, TextIds
from tokenizer.emu3 import Emu3VQTokenizer

TIKTOKEN_FILE = "emu3.tiktoken"
VISION_TOKENS_FILE = "emu3_vision_tokens.txt"
# Qwen's pre-tokenisation pattern, which Emu3's tokenizer uses
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
HEAD_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
N_EXTRA = 205
BOS, EOS, PAD = "<|extra_203|>", "<|extra_204|>", "<|endoftext|>"
# config.json's role ids and the token each must be
CONFIG_IDS = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD, "img_token_id": "<|image token|>",
              "boi_token_id": "<|image start|>", "eoi_token_id": "<|image end|>", "eol_token_id": "<|extra_200|>",
              "eof_token_id": "<|extra_201|>"}
# chain-of-thought is not in the checkpoint's files; EARL's thinking checkpoints say it in their names
COT_NAME = "thinking"


def _config(path: Path) -> dict | None:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_original_emu3(path: str | os.PathLike) -> bool:
    """A decoder in BAAI's remote-code format: config.json with model_type "Emu3" (transformers' is "emu3")."""
    cfg = _config(Path(path))
    return bool(cfg) and cfg.get("model_type") == "Emu3"


def unknown_directory(path: Path) -> EarlError:
    """The error for a directory that is no format earl loads, naming the files each format has."""
    return EarlError(
        f"{path}: not an earl editor (no editor.json), nor an Emu3 checkpoint. Expected one of: an earl editor "
        "(editor.json, backbone/, image_tokenizer/, text_tokenizer/); a transformers Emu3 checkpoint (config.json "
        "with model_type 'emu3'); BAAI's original Emu3 format as EARL released it (config.json with model_type "
        f"'Emu3', model*.safetensors, {TIKTOKEN_FILE}, {VISION_TOKENS_FILE}; load it with "
        "vision_tokenizer=<Emu3-VisionTokenizer directory>)")


# ---- text tokenizer -----------------------------------------------------------------------------
def read_tiktoken(path: Path) -> dict[bytes, int]:
    """`base64 rank` lines -> {token bytes: rank}; ranks must be 0..n-1."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise EarlError(f"{path}:{n}: expected 'base64-token rank', got {line[:60]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise EarlError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def special_tokens(model_dir: Path) -> list[str]:
    """The special tokens in id order after the tiktoken ranks."""
    vision = model_dir / VISION_TOKENS_FILE
    if not vision.is_file():
        raise EarlError(f"{model_dir}: no {VISION_TOKENS_FILE} (the image tokens of Emu3's text tokenizer)")
    lines = [t.strip() for t in vision.read_text().splitlines() if t.strip()]
    return [*HEAD_SPECIALS, *(f"<|extra_{i}|>" for i in range(N_EXTRA)), *lines]


def _byte_chars() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, which byte-level BPE vocabularies are written in."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _last_merge(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The two parts BPE joins last to make `token`: merge byte pairs by rank, below the token's own rank."""
    parts = [bytes([b]) for b in token]
    limit = ranks[token]
    while len(parts) > 2:
        best, at = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best):
                best, at = r, i
        if at is None:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise EarlError(f"tiktoken token {token!r} cannot be built from lower-ranked merges")
    return parts[0], parts[1]


def build_text_tokenizer(model_dir: str | os.PathLike):
    """Emu3's tiktoken vocabulary as a transformers fast tokenizer with the same ids (no tiktoken needed)."""
    model_dir = Path(model_dir)
    if not (model_dir / TIKTOKEN_FILE).is_file():
        raise EarlError(f"{model_dir}: no {TIKTOKEN_FILE} (Emu3's text tokenizer)")
    ranks = read_tiktoken(model_dir / TIKTOKEN_FILE)
    chars = _byte_chars()

    def text(b: bytes) -> str:
        return "".join(chars[x] for x in b)

    vocab = {text(t): r for t, r in ranks.items()}
    merges = [tuple(text(p) for p in _last_merge(ranks, t)) for t, r in sorted(ranks.items(), key=lambda x: x[1])
              if len(t) > 1]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))  # ignore_merges: a piece in the
    tok.pre_tokenizer = pre_tokenizers.Sequence([  # vocabulary is one token, as in tiktoken
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = special_tokens(model_dir)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    for i, t in enumerate(specials):
        if tok.token_to_id(t) != len(ranks) + i:
            raise EarlError(f"{model_dir}: special token {t!r} got id {tok.token_to_id(t)}, expected {len(ranks) + i} "
                            "(duplicate or clashing token?)")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   clean_up_tokenization_spaces=False)


# ---- decoder ------------------------------------------------------------------------------------
_LLAMA_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "initializer_range",
               "tie_word_embeddings", "attention_dropout", "pad_token_id", "bos_token_id", "eos_token_id")


def llama_config(cfg: dict):
    """BAAI's Emu3Config as the LlamaConfig of the same network (Llama architecture, no biases)."""
    from transformers import LlamaConfig

    kw = {k: cfg[k] for k in _LLAMA_KEYS if k in cfg}
    rope = {"rope_type": "default"}
    if cfg.get("rope_scaling"):
        rope = dict(cfg["rope_scaling"])
        rope["rope_type"] = rope.pop("type", rope.get("rope_type", "default"))
    rope["rope_theta"] = float(cfg.get("rope_theta", 1_000_000.0))
    out = LlamaConfig(**kw, rope_parameters=rope, attention_bias=False, mlp_bias=False)
    if cfg.get("torch_dtype") or cfg.get("dtype"):
        out.dtype = cfg.get("dtype") or cfg.get("torch_dtype")
    return out


def load_decoder(model_dir: Path, cfg: dict, dtype=None):
    from transformers import LlamaForCausalLM

    if not any(model_dir.glob("*.safetensors")):
        raise EarlError(f"{model_dir}: no *.safetensors weights (model.safetensors or shards with "
                        "model.safetensors.index.json)")
    return LlamaForCausalLM.from_pretrained(model_dir, config=llama_config(cfg), dtype=dtype or "auto",
                                            use_safetensors=True, trust_remote_code=False)


# ---- vision tokenizer ---------------------------------------------------------------------------
def vq_config(cfg: dict):
    """BAAI's Emu3VisionVQConfig as transformers' Emu3VQVAEConfig."""
    from transformers import Emu3VQVAEConfig

    ch, mult = cfg.get("ch", 256), list(cfg.get("ch_mult", [1, 2, 2, 4]))
    return Emu3VQVAEConfig(
        codebook_size=cfg.get("codebook_size", 32768), embed_dim=cfg.get("embed_dim", 4),
        latent_channels=cfg.get("z_channels", 4), double_latent=cfg.get("double_z", False),
        in_channels=cfg.get("in_channels", 3), out_channels=cfg.get("out_channels", 3),
        temporal_downsample_factor=cfg.get("temporal_downsample_factor", 4), base_channels=ch,
        channel_multiplier=mult, num_res_blocks=cfg.get("num_res_blocks", 2),
        attn_resolutions=list(cfg.get("attn_resolutions", [3])),
        hidden_size=ch * mult[-1],  # the attention blocks (middle and last level) work at this width
        num_attention_heads=1, attention_dropout=cfg.get("dropout", 0.0))


# original module path -> transformers' (applied in order, first match wins); attention blocks in the
# original are 1x1 convolutions q, k, v, proj_out with their own norm, in transformers linear layers
# q_proj, k_proj, v_proj, out_proj with the norm beside them
_ATTN = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "proj_out": "out_proj"}
_RENAMES = [
    (r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.middle_block.attn_norm."),
    (r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.", lambda m: f"{m[1]}.middle_block.attn_1.{_ATTN[m[2]]}."),
    (r"^(encoder|decoder)\.mid\.", r"\1.middle_block."),
    (r"^encoder\.down\.(\d+)\.attn\.(\d+)\.norm\.", r"encoder.down_block.down.\1.attn_norms.\2."),
    (r"^encoder\.down\.(\d+)\.attn\.(\d+)\.(q|k|v|proj_out)\.",
     lambda m: f"encoder.down_block.down.{m[1]}.attn.{m[2]}.{_ATTN[m[3]]}."),
    (r"^encoder\.down\.", "encoder.down_block.down."),
    (r"^decoder\.up\.(\d+)\.attn\.(\d+)\.norm\.", r"decoder.up_block.up.\1.attn_norms.\2."),
    (r"^decoder\.up\.(\d+)\.attn\.(\d+)\.(q|k|v|proj_out)\.",
     lambda m: f"decoder.up_block.up.{m[1]}.attn.{m[2]}.{_ATTN[m[3]]}."),
    (r"^decoder\.up\.", "decoder.up_block.up."),
]


def vq_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Emu3-VisionTokenizer weights under transformers' Emu3VQVAE names (1x1 conv kernels -> linear weights)."""
    out = {}
    for key, value in original.items():
        new = key
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        if new.endswith(("_proj.weight",)) and value.dim() == 4:
            value = value[:, :, 0, 0]
        out[new] = value
    return out


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise EarlError(f"{path}: no vision tokenizer weights (model.safetensors, as BAAI/Emu3-VisionTokenizer "
                        "ships them)")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_vision_tokenizer(path: str | os.PathLike | None):
    """BAAI's Emu3-VisionTokenizer directory as earl's `Emu3VQTokenizer` (float32, frozen)."""
    from transformers import Emu3VQVAE

    if path is None:
        raise EarlError("an Emu3 checkpoint in BAAI's original format has no image tokenizer of its own: pass "
                        "vision_tokenizer=<directory of BAAI/Emu3-VisionTokenizer> (earl convert emu3 "
                        "--vision-tokenizer DIR)")
    path = resolve_model(path, what="vision tokenizer")
    cfg = _config(path)
    if cfg is None or cfg.get("model_type") != "Emu3VisionVQ":
        raise EarlError(f"{path}: not an Emu3 vision tokenizer; expected config.json with model_type "
                        "'Emu3VisionVQ', model.safetensors and preprocessor_config.json (BAAI/Emu3-VisionTokenizer)")
    state = vq_state_dict(_read_weights(path))
    with torch.device("meta"):
        vq = Emu3VQVAE(vq_config(cfg))
    expected = set(vq.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise EarlError(f"{path}: the vision tokenizer's weights do not match its config: missing {missing[:4]}"
                        f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                        f"{' ...' if len(unexpected) > 4 else ''}")
    vq.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    mean, std = _normalisation(path)
    return Emu3VQTokenizer(vq, mean, std)


def _checkpoint_names(path: Path) -> list[str]:
    """The names a checkpoint directory goes by: its own (as given and resolved) and, inside a Hugging Face
    cache (models--org--name/snapshots/HASH), the repository's."""
    names = []
    for p in (path.absolute(), path.resolve()):
        names.append(p.name)
        if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
            names.append(p.parent.parent.name)
    return names


# ---- the editor ---------------------------------------------------------------------------------
def load_original_parts(model_dir: str | os.PathLike, vision_tokenizer: str | os.PathLike | None,
                        dtype: torch.dtype | None = None, cot: bool | None = None, image_area: int | None = None):
    """The parts (`earl.emu3.EditorParts`) of an editor over an EARL / BAAI original-format checkpoint
    and its vision tokenizer.

    `cot` None: chain-of-thought when the resolved path names it ("thinking", as EARL's thinking
    checkpoints do). Images follow earl's Emu3 rule at EARL's 256x256 of area unless `image_area` says.
    """
    model_dir = resolve_model(model_dir)
    cfg = _config(model_dir)
    if cfg is None or not is_original_emu3(model_dir):
        raise unknown_directory(model_dir)
    image_tokenizer = load_vision_tokenizer(vision_tokenizer)  # first: the cheap checks fail early
    text_tokenizer = build_text_tokenizer(model_dir)
    vocab_map = text_tokenizer.get_vocab()
    wrong = {k: (cfg[k], vocab_map[t]) for k, t in CONFIG_IDS.items() if k in cfg and cfg[k] != vocab_map.get(t)}
    if wrong:
        raise EarlError(f"{model_dir}: config.json's ids disagree with {TIKTOKEN_FILE} + {VISION_TOKENS_FILE}: "
                        + ", ".join(f"{k} {a} (the tokenizer has {b})" for k, (a, b) in wrong.items()))
    if cfg.get("vocab_size", len(vocab_map)) < len(vocab_map):
        raise EarlError(f"{model_dir}: vocab_size {cfg['vocab_size']} is smaller than the tokenizer's {len(vocab_map)}")
    vocab = image_vocab_from_map(vocab_map, image_tokenizer.codebook_size)
    backbone = load_decoder(model_dir, cfg, dtype)
    ids = TextIds(bos=vocab_map[BOS], eos=vocab_map[EOS], pad=vocab_map[PAD], think_start=vocab_map[THINK_TOKENS[0]],
                  think_end=vocab_map[THINK_TOKENS[1]])
    if cot is None:
        cot = any(COT_NAME in name.lower() for name in _checkpoint_names(model_dir))
    area = image_area or DEFAULT_AREA
    side = int(round(area ** 0.5))
    d = image_tokenizer.downsample
    config = dict(cot=cot, image_size=side, grid=(side // d, side // d), image_vocab=vocab.to_dict(),
                  text_ids=ids.to_dict(), image_tokenizer_kind="emu3", resize_rule="area", image_area=area,
                  prompt_order="image_instruction", think_format="cot_text")
    layout = EditLayout(text_tokenizer, vocab, ids, prompt_order=config["prompt_order"],
                        think_format=config["think_format"])
    return EditorParts(backbone, image_tokenizer, text_tokenizer, layout, config)

