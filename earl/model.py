"""`UnifiedEditor`: one causal LM over text and image tokens, plus the pieces that feed it.

An editor is four things saved together in one directory:

    editor.json        what kind of editor (chain-of-thought or not, image size, grid, layout ids)
    backbone/          any Hugging Face causal LM whose vocabulary holds the image ids (safetensors)
    image_tokenizer/   pixels <-> codes (`tokenizer.ImageTokenizer`)
    text_tokenizer/    a Hugging Face tokenizer with the special tokens

The editor owns conversions at its boundary (PIL images of any size/mode <-> code grids) and the
training forward pass; sampling lives in `earl.generate`, the user API in `earl.pipeline`.
Nothing here reaches a hub: everything loads from local paths, with `trust_remote_code` off.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from earl.cards import write_model_card
from earl.errors import EarlError
from earl.hub import resolve_model, upload
from earl.io import atomic_directory, load_image
from earl.layout import EditLayout, ImageVocab, TextIds
from tokenizer import ImageTokenizer, pil_to_tensor, tensor_to_pil

EDITOR_FORMAT = 1

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
    resize_rule: str = "stretch"  # "stretch": to image_size²; "area": keep aspect, ~image_area pixels
    image_area: int | None = None  # for resize_rule "area"
    prompt_order: str = "instruction_image"  # EditLayout: "image_instruction" for EARL's released checkpoints
    think_format: str = "tokens"  # EditLayout: "cot_text" (plain-text markers) for EARL's thinking checkpoints
    format: int = EDITOR_FORMAT


def _load_image_tokenizer(kind: str, path: Path) -> ImageTokenizer:
    if kind == "vq":
        from tokenizer.vq import TokenizerLoadError, VQTokenizer

        try:
            return VQTokenizer.from_pretrained(path)
        except TokenizerLoadError as e:
            raise EarlError(str(e)) from None
    if kind == "emu3":
        from tokenizer.emu3 import Emu3VQTokenizer

        return Emu3VQTokenizer.from_pretrained(path)
    raise EarlError(f"{path}: unknown image tokenizer kind {kind!r}; expected 'vq' or 'emu3'")


def _load_backbone(kind: str, path: Path, dtype):
    """The causal LM in `path`; Emu3's text model has its own class (its config type is not in the Auto maps)."""
    if kind == "emu3" and json.loads((path / "config.json").read_text()).get("model_type", "").startswith("emu3"):
        from transformers import Emu3ForCausalLM

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
        from earl.layout import build_layout_for_tokenizer

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
        import copy

        from earl.layout import build_layout_for_tokenizer
        from earl.text import build_word_tokenizer

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
        config = replace(self.config, image_vocab=layout.vocab.to_dict(), text_ids=layout.ids.to_dict())
        return UnifiedEditor(backbone, self.image_tokenizer, text, layout, config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu", attention: str = "sdpa",
                        vision_tokenizer: str | os.PathLike | None = None, cot: bool | None = None,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> UnifiedEditor:
        """Load an editor directory. `attention="earl_triton"` runs the backbone on earl's Triton kernels
        (`earl.kernels`; a GPU and triton needed, otherwise it stays on SDPA and says so).

        Also takes, as they are, a transformers Emu3 checkpoint (`earl.emu3`) and a checkpoint in BAAI's
        original Emu3 format such as EARL's released editors (`earl.emu3_original`: needs `vision_tokenizer`,
        the Emu3-VisionTokenizer directory; `cot` None reads chain-of-thought from the path's name).
        `path` may be a Hub id, `org/name[@revision]`, fetched into `cache_dir` (`earl.hub`)."""
        path = resolve_model(path, revision, cache_dir)
        meta = path / "editor.json"
        if not path.is_dir():
            raise EarlError(f"{path}: model directory not found")
        from earl.emu3 import is_emu3_checkpoint, load_emu3_parts
        from earl.emu3_original import is_original_emu3, load_original_parts, unknown_directory

        if not meta.is_file() and is_emu3_checkpoint(path):  # a transformers Emu3 checkpoint, used as is
            return cls._finish(cls.from_parts(load_emu3_parts(path, dtype=dtype)), device, attention)
        if not meta.is_file() and is_original_emu3(path):  # BAAI's remote-code layout (EARL's releases)
            parts = load_original_parts(path, vision_tokenizer, dtype=dtype, cot=cot)
            return cls._finish(cls.from_parts(parts), device, attention)
        if not meta.is_file():
            raise unknown_directory(path)
        try:
            raw = json.loads(meta.read_text())
            raw["grid"] = tuple(raw["grid"])
            config = EditorConfig(**raw)
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise EarlError(f"{meta}: malformed editor config ({e})") from None
        if config.format > EDITOR_FORMAT:
            raise EarlError(f"{meta}: format {config.format} is newer than this earl ({EDITOR_FORMAT}); upgrade earl")
        for sub in ("backbone", "image_tokenizer", "text_tokenizer"):
            if not (path / sub).is_dir():
                raise EarlError(f"{path}: missing {sub}/ directory")
        backbone = _load_backbone(config.image_tokenizer_kind, path / "backbone", dtype)
        text_tokenizer = AutoTokenizer.from_pretrained(path / "text_tokenizer", trust_remote_code=False)
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
            from earl.kernels.hf import use_triton_attention

            if not use_triton_attention(editor.backbone):
                logging.getLogger(__name__).warning("earl_triton attention needs triton and a GPU; using SDPA")
        elif attention != "sdpa":
            raise EarlError(f"attention must be 'sdpa' or 'earl_triton', got {attention!r}")
        return editor

    def save_pretrained(self, path: str | os.PathLike, push_to_hub: bool = False, repo_id: str | None = None,
                        private: bool | None = None) -> Path:
        """Write the editor directory atomically (build it beside the target, then swap it in), with its model
        card (`earl.cards`); returns it. `push_to_hub=True` then uploads it to `repo_id` (`earl.hub.upload`)."""
        path = Path(path)
        if push_to_hub and not repo_id:
            raise EarlError("save_pretrained(push_to_hub=True) needs repo_id='org/name'")
        with atomic_directory(path) as tmp:
            self.backbone.save_pretrained(tmp / "backbone", safe_serialization=True)
            self.image_tokenizer.save_pretrained(tmp / "image_tokenizer")
            self.text_tokenizer.save_pretrained(tmp / "text_tokenizer")
            (tmp / "editor.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
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

        Rule 'stretch' (the ShapesEdit editors): resize to image_size x image_size. Rule 'area' (Emu3):
        keep the aspect ratio at about image_area pixels, sides multiples of the tokenizer's factor.
        Bicubic filtering (box filter when shrinking by a large factor); `postprocess` resizes the
        output back to the original size.
        """
        img = load_image(image)
        size = img.size
        if self.config.resize_rule == "area":  # Emu3: aspect kept, ~image_area pixels, sides multiples of d
            from earl.emu3 import area_size

            target = area_size(*size, self.config.image_area, self.image_tokenizer.downsample)
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
