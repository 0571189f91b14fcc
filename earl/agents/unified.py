"""The decomposer on ShapesEdit: earl's unified model writing a plan after the image tokens.

The same sequence as an edit, with text where the edited image would be:

    <bos> instruction <boi> 8*8 <img> codes ... <eof> <eoi> <think>  |  plan text <eos>
    \\________________________ prompt (a plain string) ___________/     \\__ completion __/

so the bundled editor, which already reads instructions and image tokens, is its starting point.
To train it with trl as any text policy, its tokenizer exposes every image code as a token of its
own (`<|code_17|>` is id image_offset + 17), as Emu3's vocabulary does with its visual tokens: a
prompt is then an ordinary string that tokenizes to exactly the ids the layout builds, and
`SFTTrainer` / `GRPOTrainer` need no image plumbing. The one new text token is the field
separator `|`; steps are separated by ` ; ` because a word-level tokenizer has no newline.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from transformers import AddedToken

from earl.agents.decomposer import DecomposeRequest, Decomposition, read_plan
from earl.agents.plan import Plan
from earl.errors import EarlError
from earl.generate import Generators, TextSampling, TextStops, decode_text
from earl.model import CODE_TOKEN, KINDS, UnifiedEditor, WrongKindError, has_code_tokens
from earl.seeds import sample_seed

FIELD_SEPARATOR = "|"
STEP_SEPARATOR = " ; "
MAX_PLAN_TOKENS = 96


def add_plan_tokens(editor: UnifiedEditor) -> UnifiedEditor:
    """Give `editor`'s tokenizer one token per image code (at the ids the layout already uses) and
    the `|` separator, and grow the backbone's embeddings for `|` (initialised to the mean row)."""
    tok, vocab = editor.text_tokenizer, editor.layout.vocab
    if not has_code_tokens(tok, vocab.image_offset):
        if len(tok) != vocab.image_offset:
            raise EarlError(f"image codes start at id {vocab.image_offset} but the tokenizer has {len(tok)} tokens; "
                            "codes can be exposed as tokens only when they follow the text vocabulary")
        tok.add_tokens([AddedToken(CODE_TOKEN.format(i), special=True, normalized=False)
                        for i in range(vocab.codebook_size)], special_tokens=True)
    if tok.convert_tokens_to_ids(FIELD_SEPARATOR) in (None, tok.unk_token_id):
        tok.add_tokens([AddedToken(FIELD_SEPARATOR, normalized=False)])
    assert has_code_tokens(tok, vocab.image_offset)
    emb = editor.backbone.get_input_embeddings().weight
    if len(tok) > emb.shape[0]:
        editor.backbone.resize_token_embeddings(len(tok), mean_resizing=True)
    editor.config = replace(editor.config, kind="decomposer")
    return editor


def prompt_ids(editor: UnifiedEditor, instruction: str, codes: torch.Tensor) -> list[int]:
    return [*editor.layout.prompt(instruction, codes), editor.layout.ids.think_start]


def prompt_text(editor: UnifiedEditor, instruction: str, codes: torch.Tensor) -> str:
    """The prompt as a string that the code-token tokenizer maps back to exactly `prompt_ids`."""
    return editor.text_tokenizer.decode(prompt_ids(editor, instruction, codes))


def plan_text(plan: Plan) -> str:
    return plan.text(STEP_SEPARATOR)


class UnifiedDecomposer:
    """`Decomposer` backed by an earl editor directory whose tokenizer has the plan tokens."""

    name = "unified"

    def __init__(self, editor: UnifiedEditor, max_new_tokens: int = MAX_PLAN_TOKENS):
        if not has_code_tokens(editor.text_tokenizer, editor.layout.vocab.image_offset):
            kind = KINDS.get(editor.kind if editor.kind != "decomposer" else "editor")
            raise WrongKindError(f"this model's tokenizer has no image-code tokens: it is {kind}, not a decomposer "
                                 "(train one with `earl train decomposer-sft`)")
        self.editor = editor.eval()
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu") -> UnifiedDecomposer:
        return cls(UnifiedEditor.from_pretrained(Path(path), device=device, kind="decomposer",
                                                 purpose="the agent's decomposer"))

    @torch.no_grad()
    def write(self, images: list[Image.Image], instructions: list[str], temperature: float = 0.0,
              generator: Generators = None) -> list[tuple[str, bool]]:
        """(plan text, finished) per request: greedy at temperature 0, else sampled (`generator`: one
        for the batch, or one per row so that a row's text depends on its own seed alone)."""
        ed = self.editor
        codes = ed.encode_images([ed.preprocess(im)[0] for im in images])
        batch = ed.layout.pad_prompts([prompt_ids(ed, ins, c) for ins, c in zip(instructions, codes)])
        batch = {k: v.to(ed.device) for k, v in batch.items()}
        eos = ed.layout.ids.eos
        got = decode_text(ed.backbone, batch, TextStops(eos, ed.layout.ids.pad, self.max_new_tokens),
                          TextSampling(temperature, 1.0, generator))
        out = []
        for i in range(len(images)):
            row, finished = got.row(i), got.finished[i]
            row = row[:-1] if finished else row
            out.append((ed.text_tokenizer.decode(row, skip_special_tokens=False), finished))
        return out

    def decompose(self, requests: list[DecomposeRequest]) -> list[Decomposition]:
        texts = self.write([r.image for r in requests], [r.instruction for r in requests])
        return [read_plan(text, finished=finished) for text, finished in texts]

    def sample(self, requests: list[DecomposeRequest], n: int, temperature: float,
               seeds: list[int]) -> list[list[Decomposition]]:
        """`n` sampled decompositions per request; request i's come from `seeds[i]` alone."""
        generators = [torch.Generator().manual_seed(sample_seed(s, j)) for s in seeds for j in range(n)]
        texts = self.write([r.image for r in requests for _ in range(n)],
                           [r.instruction for r in requests for _ in range(n)], temperature, generators)
        plans = [read_plan(text, finished=finished) for text, finished in texts]
        return [plans[i * n:(i + 1) * n] for i in range(len(requests))]
