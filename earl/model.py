"""`UnifiedEditor`: one causal LM over text and image tokens, plus the pieces that feed it.

An editor is four things saved together in one directory:

    editor.json        what kind of editor (chain-of-thought or not, image size, grid, layout ids)
    backbone/          any Hugging Face causal LM whose vocabulary holds the image ids (safetensors)
    image_tokenizer/   pixels <-> codes (`tokenizer.ImageTokenizer`)
    text_tokenizer/    a Hugging Face tokenizer with the special tokens

The editor owns conversions at its boundary (PIL images of any size/mode <-> code grids) and the
training forward pass; sampling lives in `earl.generate`, the user API in `earl.pipeline`.
Nothing here reaches a hub: everything loads from local paths, with `trust_remote_code` off.

One directory format serves three kinds of model, recorded as editor.json's `kind`: an editor, a
decomposer (the editor taught to write plans, `earl.agents.unified`) and a reasoning reward model
(the editor taught to judge, `earl.rrm`). A loader that needs one kind names it (`from_pretrained(kind=...)`)
and another kind is refused, naming both, instead of being run as if it were the right one.
Directories written before the field existed are recognised by their vocabulary (`infer_kind`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, Emu3ForCausalLM, LlamaConfig, LlamaForCausalLM

from earl.cards import write_model_card
from earl.emu3 import area_size, is_emu3_checkpoint, load_emu3_parts, pixels_size
from earl.emu3_original import is_original_emu3, load_original_parts, unknown_directory
from earl.errors import EarlError
from earl.hub import resolve_model, upload
from earl.io import atomic_directory, load_image
from earl.kernels.hf import use_triton_attention
from earl.layout import EditLayout, ImageVocab, TextIds, build_layout_for_tokenizer
from earl.text import build_word_tokenizer
from tokenizer import ImageTokenizer, pil_to_tensor, tensor_to_pil
from tokenizer.emu3 import Emu3VQTokenizer
from tokenizer.vq import TokenizerLoadError, VQTokenizer

EDITOR_FORMAT = 1
RESIZE_RULES = ("stretch", "area", "pixels")
# kind -> how a message names it
KINDS = {"editor": "an editor", "decomposer": "a decomposer", "reward_model": "a reasoning reward model"}
# A decomposer's tokenizer exposes image code k as this token, at id image_offset + k (`earl.agents.unified`).
CODE_TOKEN = "<|code_{}|>"
# Words of the reasoning reward model's output contract (`earl.rrm.trace`: "k. reason - yes", "<score>X</score>"),
# which the vocabulary of earl's word-level editors never holds.
REWARD_MODEL_WORDS = ("score", "yes", "no")

# Named backbone sizes for the ShapesEdit domain (Llama architecture). Parameter counts are for
# the transformer body; embeddings add (vocab x hidden) twice (untied).
BACKBONE_SIZES: dict[str, dict] = {
    # ~0.8M body params: unit tests and smoke runs
    "shapes-test": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2),
    # ~3.2M body params: the demo and the bundled checkpoint
    "shapes-tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2),
    # ~12.6M body params: the study
    "shapes-small": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                         num_key_value_heads=2),
}


@dataclass
class EditorConfig:
    """What the saved directory holds besides the weights (editor.json)."""

    cot: bool  # trained to write <think> reasoning </think> before the target image
    image_size: int  # pixels of the square image the tokenizer sees
    grid: tuple[int, int]  # (h, w) codes per image
    image_vocab: dict
    text_ids: dict
    image_tokenizer_kind: str = "vq"  # "vq" (tokenizer/vq.py) | "emu3" (tokenizer/emu3.py)
    # "stretch": to image_size²; "area": keep aspect, ~image_area pixels; "pixels": keep aspect, area in
    # [min_pixels, max_pixels], sides multiples of spatial_factor (an Emu3 checkpoint's own processor)
    resize_rule: str = "stretch"
    image_area: int | None = None  # for resize_rule "area"
    min_pixels: int | None = None  # for resize_rule "pixels"
    max_pixels: int | None = None
    spatial_factor: int | None = None
    prompt_order: str = "instruction_image"  # EditLayout: "image_instruction" for EARL's released checkpoints
    think_format: str = "tokens"  # EditLayout: "cot_text" (plain-text markers) for EARL's thinking checkpoints
    kind: str | None = None  # a key of KINDS; None: not recorded, inferred from the vocabulary (`infer_kind`)
    format: int = EDITOR_FORMAT


def has_code_tokens(tokenizer, image_offset: int) -> bool:
    """Whether the tokenizer exposes image codes as tokens, as a decomposer's does."""
    return tokenizer.convert_tokens_to_ids(CODE_TOKEN.format(0)) == image_offset


def infer_kind(text_tokenizer, image_offset: int, image_tokenizer_kind: str) -> str:
    """The kind of a model whose editor.json does not record it, from what training added to its vocabulary:
    a decomposer's image-code tokens, or a reasoning reward model's contract words. Only earl's word-level
    vocabularies ("vq" models) tell the reward model apart; a byte-level one (Emu3) holds every word."""
    if has_code_tokens(text_tokenizer, image_offset):
        return "decomposer"
    if image_tokenizer_kind == "vq":
        vocab = text_tokenizer.get_vocab()
        if all(w in vocab for w in REWARD_MODEL_WORDS):
            return "reward_model"
    return "editor"


class WrongKindError(EarlError):
    """A model of one kind loaded where another is needed (a decomposer given as the editor, ...)."""


def check_kind(path, found: str, needed: str, purpose: str) -> None:
    """Refuse a model of kind `found` where `purpose` needs kind `needed`, naming both."""
    if found != needed:
        raise WrongKindError(f"{path} is {KINDS[found]} checkpoint; {purpose} needs {KINDS[needed]} checkpoint")


def _read_config(meta: Path) -> EditorConfig:
    """editor.json as an `EditorConfig`; a malformed or unknown field is an error naming the file."""
    try:
        raw = json.loads(meta.read_text())
        raw["grid"] = tuple(raw["grid"])
        config = EditorConfig(**raw)
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise EarlError(f"{meta}: malformed editor config ({e})") from None
    if config.format > EDITOR_FORMAT:
        raise EarlError(f"{meta}: format {config.format} is newer than this earl ({EDITOR_FORMAT}); upgrade earl")
    if config.resize_rule not in RESIZE_RULES:
        raise EarlError(f"{meta}: resize_rule {config.resize_rule!r} is not one of {', '.join(RESIZE_RULES)}")
    if config.kind is not None and config.kind not in KINDS:
        raise EarlError(f"{meta}: kind {config.kind!r} is not one of {', '.join(KINDS)}")
    return config


def _load_image_tokenizer(kind: str, path: Path) -> ImageTokenizer:
    if kind == "vq":
        try:
            return VQTokenizer.from_pretrained(path)
        except TokenizerLoadError as e:
            raise EarlError(str(e)) from None
    if kind == "emu3":
        return Emu3VQTokenizer.from_pretrained(path)
    raise EarlError(f"{path}: unknown image tokenizer kind {kind!r}; expected 'vq' or 'emu3'")


def _load_backbone(kind: str, path: Path, dtype):
    """The causal LM in `path`; Emu3's text model has its own class (its config type is not in the Auto maps)."""
    if kind == "emu3" and json.loads((path / "config.json").read_text()).get("model_type", "").startswith("emu3"):
        return Emu3ForCausalLM.from_pretrained(path, dtype=dtype or "auto", use_safetensors=True)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", trust_remote_code=False,
                                                use_safetensors=True)


class UnifiedEditor(nn.Module):
    def __init__(self, backbone, image_tokenizer: ImageTokenizer, text_tokenizer, layout: EditLayout,
                 config: EditorConfig):
        super().__init__()
        self.backbone = backbone
        self.image_tokenizer = image_tokenizer
        self.text_tokenizer = text_tokenizer
        self.layout = layout
        self.config = config
        # The tokenizer is frozen: codes are the contract and are cached offline.
        if isinstance(image_tokenizer, nn.Module):
            image_tokenizer.requires_grad_(False).eval()

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def build(cls, size: str, image_tokenizer, text_tokenizer, image_size: int, cot: bool = False,
              dtype: torch.dtype = torch.float32, seed: int = 0) -> UnifiedEditor:
        """A fresh editor with a randomly initialised Llama backbone of a named size."""
        if size not in BACKBONE_SIZES:
            raise EarlError(f"unknown backbone size {size!r}; expected one of {', '.join(BACKBONE_SIZES)}")
        d = image_tokenizer.downsample
        if image_size % d:
            raise EarlError(f"image_size {image_size} is not a multiple of the tokenizer's downsample factor {d}")
        layout = build_layout_for_tokenizer(text_tokenizer, image_tokenizer.codebook_size)
        grid = (image_size // d, image_size // d)
        seq = 4 * (grid[0] * (grid[1] + 1) + 16) + 512  # two images + text, generous
        cfg = LlamaConfig(
            vocab_size=layout.vocab.image_ids[1],
            max_position_embeddings=seq,
            bos_token_id=layout.ids.bos, eos_token_id=layout.ids.eos, pad_token_id=layout.ids.pad,
            tie_word_embeddings=False,
            **BACKBONE_SIZES[size],
        )
        torch.manual_seed(seed)
        backbone = LlamaForCausalLM(cfg).to(dtype)
        config = EditorConfig(cot=cot, image_size=image_size, grid=grid, image_vocab=layout.vocab.to_dict(),
                              text_ids=layout.ids.to_dict())
        return cls(backbone, image_tokenizer, text_tokenizer, layout, config)

    def with_words(self, words) -> UnifiedEditor:
        """A copy whose word-level text vocabulary also covers `words` (e.g. a reward model's judge
        texts), keeping everything the backbone learned: rows of known words and of every image code
        are carried over to their new ids (image ids move up by the number of added words), new
        words' rows start at the mean of the old text rows. For earl's own tokenizers (`earl.text`)."""
        old_vocab = self.text_tokenizer.get_vocab()
        text = build_word_tokenizer(list(words), extra_words=[w for w in old_vocab if not w.startswith("<")])
        new_vocab = text.get_vocab()
        missing = [w for w in old_vocab if w not in new_vocab]
        if missing:
            raise EarlError(f"with_words: the rebuilt vocabulary lost {missing[:5]} (not an earl word tokenizer?)")
        layout = build_layout_for_tokenizer(text, self.layout.vocab.codebook_size)
        old_off, new_off, K = self.layout.vocab.image_offset, layout.vocab.image_offset, self.layout.vocab.codebook_size
        backbone = copy.deepcopy(self.backbone)
        backbone.resize_token_embeddings(layout.vocab.image_ids[1], mean_resizing=False)
        old_in, old_out = self.backbone.get_input_embeddings().weight, self.backbone.get_output_embeddings().weight
        new_src = torch.tensor([new_vocab[w] for w in old_vocab] + list(range(new_off, new_off + K)))
        old_src = torch.tensor([old_vocab[w] for w in old_vocab] + list(range(old_off, old_off + K)))
        with torch.no_grad():
            for new_w, old_w in ((backbone.get_input_embeddings().weight, old_in),
                                 (backbone.get_output_embeddings().weight, old_out)):
                new_w[:new_off] = old_w[:old_off].mean(0)  # new words: the average text row
                new_w[new_src] = old_w[old_src]
        # kind None: what the new words make of it (a reward model's judge texts) is inferred again
        config = replace(self.config, image_vocab=layout.vocab.to_dict(), text_ids=layout.ids.to_dict(), kind=None)
        return UnifiedEditor(backbone, self.image_tokenizer, text, layout, config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu", attention: str = "sdpa",
                        vision_tokenizer: str | os.PathLike | None = None, cot: bool | None = None,
                        image_area: int | None = None, kind: str | None = None,
                        purpose: str = "this use", revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None) -> UnifiedEditor:
        """Load an editor directory. `attention="earl_triton"` runs the backbone on earl's Triton kernels
        (`earl.kernels`; a GPU and triton needed, otherwise it stays on SDPA and says so). `kind` (a key of
        `KINDS`): the kind of model the caller needs; another kind is a `WrongKindError` naming both and
        `purpose` (what needed it), raised before the weights load.

        Also takes, as they are, a transformers Emu3 checkpoint (`earl.emu3`; images resized by its own
        processor's rule unless `image_area` asks for earl's area rule) and a checkpoint in BAAI's original
        Emu3 format such as EARL's released editors (`earl.emu3_original`: needs `vision_tokenizer`, the
        Emu3-VisionTokenizer directory; `cot` None reads chain-of-thought from the path's name; EARL's
        256x256 area unless `image_area` says). Both are editors. `path` may be a Hub id,
        `org/name[@revision]`, fetched into `cache_dir` (`earl.hub`)."""
        path = resolve_model(path, revision, cache_dir)
        meta = path / "editor.json"
        if not path.is_dir():
            raise EarlError(f"{path}: model directory not found")
        if kind is not None and kind not in KINDS:
            raise EarlError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not meta.is_file() and (is_emu3_checkpoint(path) or is_original_emu3(path)):
            if kind is not None:
                check_kind(path, "editor", kind, purpose)
            if is_emu3_checkpoint(path):  # a transformers Emu3 checkpoint, used as is
                parts = load_emu3_parts(path, dtype=dtype, image_area=image_area)
            else:  # BAAI's remote-code layout (EARL's releases)
                parts = load_original_parts(path, vision_tokenizer, dtype=dtype, cot=cot, image_area=image_area)
            return cls._finish(cls.from_parts(parts), device, attention)
        if not meta.is_file() and (path / "adapter_config.json").is_file():
            raise EarlError(f"{path} holds LoRA adapters, not a full model; write the editor with `earl checkpoint "
                            f"merge {path} --out DIR` and load that")
        if not meta.is_file():
            raise unknown_directory(path)
        if image_area is not None:
            raise EarlError(f"{path}: image_area applies to Emu3 checkpoints loaded as they are; an earl editor "
                            "directory keeps the resize rule of its editor.json")
        config = _read_config(meta)
        for sub in ("backbone", "image_tokenizer", "text_tokenizer"):
            if not (path / sub).is_dir():
                raise EarlError(f"{path}: missing {sub}/ directory")
        text_tokenizer = AutoTokenizer.from_pretrained(path / "text_tokenizer", trust_remote_code=False)
        if kind is not None:  # before the weights: a wrong kind fails fast
            found = config.kind or infer_kind(text_tokenizer, config.image_vocab["image_offset"],
                                              config.image_tokenizer_kind)
            check_kind(path, found, kind, purpose)
        backbone = _load_backbone(config.image_tokenizer_kind, path / "backbone", dtype)
        image_tokenizer = _load_image_tokenizer(config.image_tokenizer_kind, path / "image_tokenizer")
        layout = EditLayout(text_tokenizer, ImageVocab.from_dict(config.image_vocab), TextIds.from_dict(config.text_ids),
                            prompt_order=config.prompt_order, think_format=config.think_format)
        return cls._finish(cls(backbone, image_tokenizer, text_tokenizer, layout, config), device, attention)

    @classmethod
    def from_parts(cls, parts) -> UnifiedEditor:
        """The editor a loader of another format describes (`earl.emu3.EditorParts`: backbone, tokenizers,
        layout and the `EditorConfig` fields), as it is: nothing moved or copied."""
        return cls(parts.backbone, parts.image_tokenizer, parts.text_tokenizer, parts.layout,
                   EditorConfig(**parts.config))

    @staticmethod
    def _finish(editor: UnifiedEditor, device, attention: str) -> UnifiedEditor:
        editor = editor.to(device).eval()
        if attention == "earl_triton":
            if not use_triton_attention(editor.backbone):
                logging.getLogger(__name__).warning("earl_triton attention needs triton and a GPU; using SDPA")
        elif attention != "sdpa":
            raise EarlError(f"attention must be 'sdpa' or 'earl_triton', got {attention!r}")
        return editor

    @property
    def kind(self) -> str:
        """What this model is (a key of `KINDS`): recorded in its config, else inferred from its vocabulary."""
        return self.config.kind or infer_kind(self.text_tokenizer, self.layout.vocab.image_offset,
                                              self.config.image_tokenizer_kind)

    def save_pretrained(self, path: str | os.PathLike, push_to_hub: bool = False, repo_id: str | None = None,
                        private: bool | None = None) -> Path:
        """Write the editor directory atomically (build it beside the target, then swap it in), with its model
        card and its kind in editor.json (`earl.cards`); returns it. `push_to_hub=True` then uploads it to `repo_id` (`earl.hub.upload`)."""
        path = Path(path)
        if push_to_hub and not repo_id:
            raise EarlError("save_pretrained(push_to_hub=True) needs repo_id='org/name'")
        with atomic_directory(path) as tmp:
            self.backbone.save_pretrained(tmp / "backbone", safe_serialization=True)
            self.image_tokenizer.save_pretrained(tmp / "image_tokenizer")
            self.text_tokenizer.save_pretrained(tmp / "text_tokenizer")
            config = asdict(replace(self.config, kind=self.kind))
            (tmp / "editor.json").write_text(json.dumps(config, indent=2) + "\n")
            write_model_card(tmp, repo_id=repo_id or path.name)
        if push_to_hub:
            upload(path, repo_id, private=private)
        return path

    # -- pixels <-> codes -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def preprocess(self, image) -> tuple[Image.Image, tuple[int, int]]:
        """Any image (path, bytes, PIL, array; any mode) -> RGB at the model's size, plus its original size.

        Rule 'stretch' (the ShapesEdit editors): resize to image_size x image_size. Rule 'area' (EARL's
        Emu3 editors): keep the aspect ratio at about image_area pixels, sides multiples of the tokenizer's
        factor. Rule 'pixels' (an Emu3 checkpoint's own processor): keep the aspect ratio, sides multiples
        of spatial_factor, area within [min_pixels, max_pixels]. Bicubic filtering (box filter when
        shrinking by a large factor); `postprocess` resizes the output back to the original size.
        """
        img = load_image(image)
        size = img.size
        c = self.config
        if c.resize_rule == "area":
            target = area_size(*size, c.image_area, self.image_tokenizer.downsample)
        elif c.resize_rule == "pixels":
            target = pixels_size(*size, c.min_pixels, c.max_pixels, c.spatial_factor)
        else:
            target = (self.config.image_size, self.config.image_size)
        if img.size != target:
            img = img.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
        return img, size

    def postprocess(self, image: Image.Image, original_size: tuple[int, int]) -> Image.Image:
        if image.size != original_size:
            image = image.resize(original_size, Image.Resampling.BICUBIC)
        return image

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images already at the model's size -> (B, h, w) codes."""
        x = pil_to_tensor(images).to(self.device)
        return self.image_tokenizer.encode(x)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> list[Image.Image]:
        return tensor_to_pil(self.image_tokenizer.decode(codes.to(self.device)))

    # -- training -------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, **kw):
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             labels=labels, **kw)
