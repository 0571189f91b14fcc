"""One token sequence for text and images, in Emu3's image format.

An image of h x w codes is serialised as

    <boi> "{h}*{w}" <img>  c c ... c <eol>  ...  c c ... c <eol>  <eof> <eoi>

(the header's `h*w` is ordinary text), and an editing example as

    <bos> instruction [source image]  |  [<think> reasoning </think>] [target image] <eos>
    \\______________ prompt ______________/  \\____________ completion (loss) _____________/

(`prompt_order="instruction_image"`, earl's own editors). EARL's released checkpoints were trained
on the other order and with thinking written as plain text (`prompt_order="image_instruction"`,
`think_format="cot_text"`, both recorded in editor.json):

    <bos> [source image] instruction  |  [ Let's think step by step. <|start thinking|> reasoning<|end thinking|>] [target image] <eos>

`ImageVocab` maps codebook indices to token ids and names the structural ids, so a tiny model
(image ids after its text vocabulary) and an Emu3 checkpoint (its own ids) share this code.
`EditLayout` builds prompts and training examples, left-pads batches, and parses generated ids
back into code grids, raising `LayoutError` on malformed output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from earl import text as T
from earl.errors import EarlError

IGNORE_INDEX = -100  # label value that cross-entropy skips (HF convention)

PROMPT_ORDERS = ("instruction_image", "image_instruction")
THINK_FORMATS = ("tokens", "cot_text")
# think_format "cot_text" (EARL): the reasoning between two plain-text markers, cut at COT_MAX_CHARS
COT_OPEN = " Let's think step by step. <|start thinking|>"
COT_CLOSE = "<|end thinking|>"
COT_MAX_CHARS = 1750


class LayoutError(EarlError):
    """Generated or stored ids that do not follow the image format."""


@dataclass(frozen=True)
class ImageVocab:
    """Where image codes and structural markers live in the model's vocabulary.

    Codes occupy the contiguous id range [image_offset, image_offset + codebook_size); the
    sampler restricts image positions to exactly this slice.
    """

    codebook_size: int
    image_offset: int
    boi: int
    img: int
    eol: int
    eof: int
    eoi: int

    @property
    def image_ids(self) -> tuple[int, int]:
        """Half-open id range (start, stop) of image tokens."""
        return (self.image_offset, self.image_offset + self.codebook_size)

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise LayoutError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        return codes.long() + self.image_offset

    def is_image(self, ids: torch.Tensor) -> torch.Tensor:
        start, stop = self.image_ids
        return (ids >= start) & (ids < stop)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ImageVocab:
        return cls(**d)


@dataclass(frozen=True)
class TextIds:
    """The text-side special ids that the layout needs."""

    bos: int
    eos: int
    pad: int
    think_start: int
    think_end: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TextIds:
        return cls(**d)


@dataclass
class Example:
    """One tokenised editing example: ids and which positions carry loss."""

    input_ids: list[int]
    loss_mask: list[bool]  # True where the token is predicted (the completion)
    prompt_len: int
    loss_weights: list[float] | None = None  # per-token weights of the loss (None: all 1)


class EditLayout:
    """Builds and parses token sequences for `instruction + source -> [thinking] + target`."""

    def __init__(self, text_tokenizer, vocab: ImageVocab, text_ids: TextIds, prompt_order: str = "instruction_image",
                 think_format: str = "tokens"):
        if prompt_order not in PROMPT_ORDERS:
            raise LayoutError(f"prompt_order must be one of {PROMPT_ORDERS}, got {prompt_order!r}")
        if think_format not in THINK_FORMATS:
            raise LayoutError(f"think_format must be one of {THINK_FORMATS}, got {think_format!r}")
        self.tok = text_tokenizer
        self.vocab = vocab
        self.ids = text_ids
        self.prompt_order = prompt_order
        self.think_format = think_format
        self._header_cache: dict[tuple[int, int], list[int]] = {}

    # -- building -------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def header(self, h: int, w: int) -> list[int]:
        """`<boi> "h*w" <img>`: everything before the first code of an h x w image."""
        key = (h, w)
        if key not in self._header_cache:
            self._header_cache[key] = [self.vocab.boi, *self.encode_text(f"{h}*{w}"), self.vocab.img]
        return self._header_cache[key]

    def image_tokens(self, codes: torch.Tensor) -> list[int]:
        """The full serialisation of one (h, w) code grid."""
        if codes.dim() != 2:
            raise LayoutError(f"expected a 2-D code grid (h, w), got shape {tuple(codes.shape)}")
        h, w = codes.shape
        ids = self.vocab.codes_to_ids(codes)  # (h, w)
        eol = torch.full((h, 1), self.vocab.eol, dtype=torch.long)
        body = torch.cat([ids, eol], dim=1).flatten().tolist()  # (h * (w + 1),)
        return [*self.header(h, w), *body, self.vocab.eof, self.vocab.eoi]

    def prompt(self, instruction: str | None, source_codes: torch.Tensor) -> list[int]:
        """`<bos> instruction [source]` (or `<bos> [source] instruction`, by `prompt_order`); instruction None
        gives the unconditional (CFG) prompt."""
        text = self.encode_text(instruction) if instruction is not None else []
        if self.prompt_order == "image_instruction":
            return [self.ids.bos, *self.image_tokens(source_codes), *text]
        return [self.ids.bos, *text, *self.image_tokens(source_codes)]

    def thinking_tokens(self, thinking: str) -> list[int]:
        """The reasoning block of a completion: `<think> text </think>`, or EARL's plain-text markers."""
        if self.think_format == "cot_text":  # one string, tokenised as EARL tokenises it
            return self.encode_text(f"{COT_OPEN} {thinking[:COT_MAX_CHARS]}{COT_CLOSE}")
        return [self.ids.think_start, *self.encode_text(thinking), self.ids.think_end]

    def think_open(self) -> list[int]:
        """What the sampler feeds before sampling reasoning."""
        return self.encode_text(COT_OPEN) if self.think_format == "cot_text" else [self.ids.think_start]

    def think_close(self) -> list[int]:
        """What closes a reasoning block (forced when the sampler's budget is spent)."""
        return self.encode_text(COT_CLOSE) if self.think_format == "cot_text" else [self.ids.think_end]

    def think_closed(self, sampled: list[int]) -> bool:
        """Whether reasoning tokens sampled after `think_open()` have closed the block."""
        if self.think_format == "cot_text":
            return COT_CLOSE in self.tok.decode(sampled)
        return bool(sampled) and sampled[-1] == self.ids.think_end

    def completion(self, target_codes: torch.Tensor, thinking: str | None = None) -> list[int]:
        think = self.thinking_tokens(thinking) if thinking is not None else []
        return [*think, *self.image_tokens(target_codes), self.ids.eos]

    def example(
        self, instruction: str, source_codes: torch.Tensor, target_codes: torch.Tensor, thinking: str | None = None
    ) -> Example:
        if not instruction or not instruction.strip():
            raise LayoutError("instruction is empty")
        p = self.prompt(instruction, source_codes)
        c = self.completion(target_codes, thinking)
        return Example(input_ids=p + c, loss_mask=[False] * len(p) + [True] * len(c), prompt_len=len(p))

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """Left-pad a batch. Returns input_ids, attention_mask, position_ids and labels (shifted by the model),
        and loss_weights when an example carries them (`earl.train.lm.lm_loss`)."""
        n = max(len(e.input_ids) for e in examples)
        B = len(examples)
        input_ids = torch.full((B, n), self.ids.pad, dtype=torch.long)
        labels = torch.full((B, n), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((B, n), dtype=torch.long)
        for i, e in enumerate(examples):
            L = len(e.input_ids)
            ids = torch.tensor(e.input_ids, dtype=torch.long)
            input_ids[i, n - L :] = ids
            attention_mask[i, n - L :] = 1
            labels[i, n - L :] = torch.where(torch.tensor(e.loss_mask), ids, IGNORE_INDEX)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": positions_from_mask(attention_mask),
            "labels": labels,
        }
        if any(e.loss_weights is not None for e in examples):
            weights = torch.zeros((B, n))
            for i, e in enumerate(examples):
                L = len(e.input_ids)
                weights[i, n - L :] = torch.tensor(e.loss_weights) if e.loss_weights is not None else 1.0
            batch["loss_weights"] = weights
        return batch

    def pad_prompts(self, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
        """Left-pad prompts for generation (input_ids, attention_mask, position_ids)."""
        batch = self.collate([Example(p, [False] * len(p), len(p)) for p in prompts])
        batch.pop("labels")
        return batch

    # -- parsing --------------------------------------------------------------------------
    def parse_image(self, ids: list[int] | torch.Tensor, h: int | None = None, w: int | None = None) -> torch.Tensor:
        """The code grid of the first image in `ids` (a completion), checked against the format.

        `h, w` if given must match the header. Raises `LayoutError` naming what is wrong.
        """
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        v = self.vocab
        try:
            start = ids.index(v.boi)
        except ValueError:
            raise LayoutError("no <boi> token: the output contains no image") from None
        try:
            img = ids.index(v.img, start)
        except ValueError:
            raise LayoutError("image header has no <img> token") from None
        hdr = self.tok.decode(ids[start + 1 : img]).replace(" ", "")
        hh, _, ww = hdr.partition("*")
        if not (hh.isdigit() and ww.isdigit()):
            raise LayoutError(f"image header {hdr!r} is not of the form H*W")
        hh, ww = int(hh), int(ww)
        if (h is not None and hh != h) or (w is not None and ww != w):
            raise LayoutError(f"image header says {hh}*{ww}, expected {h}*{w}")
        pos, rows = img + 1, []
        for r in range(hh):
            row = ids[pos : pos + ww + 1]
            if len(row) < ww + 1:
                raise LayoutError(f"image truncated in row {r} of {hh}")
            if row[-1] != v.eol:
                raise LayoutError(f"row {r} is not {ww} image tokens followed by <eol>")
            codes = torch.tensor(row[:-1])
            if not bool(v.is_image(codes).all()):
                raise LayoutError(f"row {r} holds a non-image token")
            rows.append(codes - v.image_offset)
            pos += ww + 1
        if ids[pos : pos + 2] != [v.eof, v.eoi]:
            raise LayoutError("image does not end with <eof> <eoi>")
        return torch.stack(rows)

    def parse_thinking(self, ids: list[int] | torch.Tensor) -> str | None:
        """The text between <think> and </think>, or None if the output has no thinking block."""
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        if self.think_format == "cot_text":
            head = ids[: ids.index(self.vocab.boi)] if self.vocab.boi in ids else ids
            text = self.tok.decode(head, skip_special_tokens=True)
            open_at = text.find(COT_OPEN.strip())
            if open_at < 0:
                return None
            return text[open_at + len(COT_OPEN.strip()):].split(COT_CLOSE)[0].strip()
        if self.ids.think_start not in ids:
            return None
        s = ids.index(self.ids.think_start) + 1
        e = ids.index(self.ids.think_end, s) if self.ids.think_end in ids[s:] else len(ids)
        return self.tok.decode(ids[s:e], skip_special_tokens=True).strip()

    def to_dict(self) -> dict:
        return {"image_vocab": self.vocab.to_dict(), "text_ids": self.ids.to_dict(), "prompt_order": self.prompt_order,
                "think_format": self.think_format}


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def build_layout_for_tokenizer(text_tokenizer, codebook_size: int) -> EditLayout:
    """Layout for earl's own tokenizers (`earl.text`): image ids follow the text vocabulary."""
    conv = text_tokenizer.convert_tokens_to_ids
    vocab = ImageVocab(
        codebook_size=codebook_size,
        image_offset=len(text_tokenizer),
        boi=conv(T.BOI), img=conv(T.IMG), eol=conv(T.EOL), eof=conv(T.EOF), eoi=conv(T.EOI),
    )
    ids = TextIds(bos=conv(T.BOS), eos=conv(T.EOS), pad=conv(T.PAD), think_start=conv(T.THINK_START),
                  think_end=conv(T.THINK_END))
    return EditLayout(text_tokenizer, vocab, ids)
