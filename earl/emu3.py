"""Emu3 as an earl editor: its text model is the backbone, its VQ-VAE the image tokenizer.

`UnifiedEditor.from_pretrained(DIR)` calls `load_emu3_parts` when DIR is an Emu3 checkpoint in
transformers' format (`Emu3ForConditionalGeneration`: config.json with model_type "emu3") and builds
the editor from the parts it returns (`EditorParts`; this module never imports `earl.model`). Nothing
is copied: the editor's backbone is an `Emu3ForCausalLM` whose body and head are the checkpoint's
own modules, and its image tokenizer wraps the checkpoint's VQ-VAE.

Emu3's own ids fill the layout, so the token format is Emu3's:
    <|image start|> "{h}*{w}" <|image token|>  codes, <|extra_200|> after each row,  <|extra_201|> <|image end|>
with codes mapped through the checkpoint's `vocabulary_map` ("<|visual token 000123|>" -> id); the
visual tokens must occupy one contiguous id range (they do in the released checkpoints), since
the sampler restricts image positions to that slice.

Emu3 has no thinking delimiters. For chain-of-thought editing earl uses two of its reserved tokens,
`THINK_TOKENS` below; plain editing never emits them.

Images are resized by the checkpoint's own rule, the one its image processor applies
(transformers' `Emu3ImageProcessor`: keep the aspect ratio, each side a multiple of `spatial_factor`,
the area within [`min_pixels`, `max_pixels`], read from preprocessor_config.json with that class's
defaults for missing keys), so a checkpoint sees images at the sizes it was trained on. A caller
that passes `image_area` gets earl's area rule instead (aspect kept, about `image_area` pixels, sides
multiples of the VQ-VAE's factor; EARL edits at 256x256 of area). Outputs are resized back to the
input's size.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from earl.errors import EarlError
from earl.hub import resolve_model
from earl.layout import EditLayout, ImageVocab, TextIds
from tokenizer.emu3 import Emu3VQTokenizer

STRUCTURAL = {"boi": "<|image start|>", "img": "<|image token|>", "eol": "<|extra_200|>",
              "eof": "<|extra_201|>", "eoi": "<|image end|>"}
THINK_TOKENS = ("<|extra_100|>", "<|extra_101|>")
VISUAL_PREFIX = "<|visual token "
DEFAULT_AREA = 256 * 256  # EARL's area rule: 256x256 pixels of area
PROCESSOR_FILE = "preprocessor_config.json"
# transformers' Emu3ImageProcessor defaults, for keys its preprocessor_config.json leaves out
PROCESSOR_DEFAULTS = {"min_pixels": 512 * 512, "max_pixels": 1024 * 1024, "spatial_factor": 8}


@dataclass
class EditorParts:
    """What a loader of another checkpoint format returns and `UnifiedEditor.from_parts` assembles."""

    backbone: Any  # a causal LM
    image_tokenizer: Any  # `tokenizer.ImageTokenizer`
    text_tokenizer: Any
    layout: Any  # `earl.layout.EditLayout`
    config: dict  # the `earl.model.EditorConfig` fields


def is_emu3_checkpoint(path: Path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "emu3"
    except json.JSONDecodeError:
        return False


def image_vocab_from_map(vocab_map: dict[str, int], codebook_size: int):
    """The `ImageVocab` of an Emu3 vocabulary: contiguous visual ids and the structural tokens."""
    visual = sorted((int(name[len(VISUAL_PREFIX):-2]), i) for name, i in vocab_map.items()
                    if name.startswith(VISUAL_PREFIX))
    if len(visual) != codebook_size or [c for c, _ in visual] != list(range(codebook_size)):
        raise EarlError(f"the vocabulary_map has {len(visual)} visual tokens; expected codes 0..{codebook_size - 1}")
    offset = visual[0][1]
    if any(i != offset + c for c, i in visual):
        raise EarlError("the visual tokens of the vocabulary_map are not one contiguous id range; earl's sampler "
                        "needs image ids in [offset, offset + codebook_size)")
    missing = [t for t in [*STRUCTURAL.values(), *THINK_TOKENS] if t not in vocab_map]
    if missing:
        raise EarlError(f"the vocabulary_map lacks Emu3's structural token(s) {missing}")
    return ImageVocab(codebook_size=codebook_size, image_offset=offset,
                      **{k: vocab_map[v] for k, v in STRUCTURAL.items()})


def _processor_config(path: Path) -> dict:
    p = path / PROCESSOR_FILE
    if not p.is_file():
        return {}
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise EarlError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise EarlError(f"{p}: expected a JSON object (an image processor config)")
    return cfg


def _normalisation(path: Path) -> tuple[list[float], list[float]]:
    cfg = _processor_config(path)
    return cfg.get("image_mean", [0.5] * 3), cfg.get("image_std", [0.5] * 3)


def processor_resize_rule(path: Path, downsample: int) -> dict:
    """The checkpoint's resize rule as `EditorConfig` fields: `min_pixels`, `max_pixels` and
    `spatial_factor` from its preprocessor_config.json (transformers' defaults for missing keys)."""
    cfg = _processor_config(path)
    rule = {k: cfg.get(k, default) for k, default in PROCESSOR_DEFAULTS.items()}
    for k, v in rule.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise EarlError(f"{path / PROCESSOR_FILE}: {k} must be a positive integer, got {v!r}")
    if rule["spatial_factor"] % downsample:
        raise EarlError(f"{path / PROCESSOR_FILE}: spatial_factor {rule['spatial_factor']} is not a multiple of the "
                        f"VQ-VAE's downsample factor {downsample}; images could not be split into codes")
    return rule


def load_emu3_parts(path: str | Path, dtype: torch.dtype | None = None, cot: bool = False,
                    image_area: int | None = None) -> EditorParts:
    """The parts of an editor over an Emu3 checkpoint directory (weights shared, not copied):
    `UnifiedEditor.from_parts(load_emu3_parts(path))` is the editor. Images follow the checkpoint's
    processor (`processor_resize_rule`) unless `image_area` asks for earl's area rule."""
    from transformers import AutoTokenizer, Emu3ForCausalLM, Emu3ForConditionalGeneration

    path = resolve_model(path)
    full = Emu3ForConditionalGeneration.from_pretrained(path, dtype=dtype or "auto", use_safetensors=True)
    text_cfg = full.config.text_config
    with torch.device("meta"):  # an empty shell; its two parts are the checkpoint's modules
        backbone = Emu3ForCausalLM(text_cfg)
    backbone.model = full.model.text_model
    backbone.lm_head = full.lm_head
    mean, std = _normalisation(path)
    image_tokenizer = Emu3VQTokenizer(full.model.vqmodel, mean, std)
    text_tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)

    vocab_map = full.config.vocabulary_map or text_tokenizer.get_vocab()
    vocab = image_vocab_from_map(vocab_map, image_tokenizer.codebook_size)
    eos = text_cfg.eos_token_id[0] if isinstance(text_cfg.eos_token_id, list) else text_cfg.eos_token_id
    pad = text_cfg.pad_token_id if text_cfg.pad_token_id is not None else eos
    ids = TextIds(bos=text_cfg.bos_token_id, eos=eos, pad=pad, think_start=vocab_map[THINK_TOKENS[0]],
                  think_end=vocab_map[THINK_TOKENS[1]])
    d = image_tokenizer.downsample
    if image_area is not None:
        side = int(round(image_area ** 0.5))
        rule = dict(resize_rule="area", image_area=image_area)
    else:
        rule = dict(resize_rule="pixels", **processor_resize_rule(path, d))
        # the nominal size: the square the rule makes of a large square image
        side = pixels_size(1 << 15, 1 << 15, rule["min_pixels"], rule["max_pixels"], rule["spatial_factor"])[0]
    config = dict(cot=cot, image_size=side, grid=(side // d, side // d), image_vocab=vocab.to_dict(),
                  text_ids=ids.to_dict(), image_tokenizer_kind="emu3", **rule)
    return EditorParts(backbone, image_tokenizer, text_tokenizer, EditLayout(text_tokenizer, vocab, ids), config)


def area_size(width: int, height: int, area: int, factor: int) -> tuple[int, int]:
    """(width, height) keeping the aspect ratio, about `area` pixels, each side a multiple of `factor`."""
    s = (area / (width * height)) ** 0.5
    return (max(factor, round(width * s / factor) * factor), max(factor, round(height * s / factor) * factor))


def pixels_size(width: int, height: int, min_pixels: int, max_pixels: int, factor: int) -> tuple[int, int]:
    """(width, height) as transformers' Emu3ImageProcessor resizes an image (its `smart_resize`): sides
    rounded to multiples of `factor`, then scaled down to at most `max_pixels` or up to at least
    `min_pixels` of area, keeping the aspect ratio."""
    if max(width, height) / min(width, height) > 200:
        raise EarlError(f"image of {width}x{height}: the aspect ratio must be at most 200 for an Emu3 checkpoint's "
                        "resize rule")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return w, h
