"""The reasoning reward model as earl's own unified token model (the case trainable on a CPU).

It reads one sequence and writes the verdict text of `earl.rrm.trace`:

    <bos> "judge : {instruction} points : 1 . {question} 2 . {question} ..." [source image] [edited image]
      ->  "1 . yes - {reason} ... <score> 7 </score>" <eos>

with the images in the editor's own format (the same `EditLayout`), so the reward model is an
editor directory like any other (`UnifiedEditor`), trained by `earl train rrm-sft`.

`RRMVerifier` (the `rrm` backend of `earl.verify`) judges edits with such a model: points from the
ShapesEdit oracle when the request carries scene graphs (each cached per source and instruction),
greedy decoding of the verdicts, then `parse_trace`; a reply that does not parse is a failure
(masked and counted), never a zero. Word-level tokenizers drop newlines and split `<score>` into
pieces, so decoded text is normalised back to the contract before parsing (`normalise_decoded`).
"""

from __future__ import annotations

import hashlib
import re

import torch

from earl.layout import Example
from earl.rrm.principles import EvalPoint
from earl.rrm.trace import parse_trace


def points_text(points: list[EvalPoint]) -> str:
    return " ".join(f"{i}. ({p.category}) {p.question}" for i, p in enumerate(points, 1))


def judge_prompt(layout, instruction: str, points: list[EvalPoint], source_codes, edited_codes) -> list[int]:
    text = f"judge : {instruction} points : {points_text(points)}"
    return [layout.ids.bos, *layout.encode_text(text), *layout.image_tokens(source_codes),
            *layout.image_tokens(edited_codes)]


def judge_example(layout, instruction: str, points: list[EvalPoint], source_codes, edited_codes,
                  trace: str) -> Example:
    prompt = judge_prompt(layout, instruction, points, source_codes, edited_codes)
    completion = [*layout.encode_text(trace), layout.ids.eos]
    return Example(prompt + completion, [False] * len(prompt) + [True] * len(completion), len(prompt))


def normalise_decoded(text: str) -> str:
    """Undo what a word-level tokenizer does to the contract: '< / score >', '7 . 5', one long line."""
    text = re.sub(r"<\s*(/?)\s*score\s*>", r"<\1score>", text, flags=re.I)
    text = re.sub(r"(<score>\s*\d+)\s*\.\s*(\d+)", r"\1.\2", text)
    text = re.sub(r"\s+(?=\d{1,2}\s*[.)]\s*(?:yes|no)\b)", "\n", text, flags=re.I)
    return re.sub(r"\s*(<score>)", r"\n\1", text)


@torch.no_grad()
def generate_verdicts(editor, instructions: list[str], points: list[list[EvalPoint]], source_codes, edited_codes,
                      max_new_tokens: int = 200, batch_size: int = 16) -> list[str]:
    """Greedy verdict texts (normalised to the contract) for code grids of sources and edits."""
    texts = []
    layout = editor.layout
    for s in range(0, len(instructions), batch_size):
        seqs = [judge_prompt(layout, ins, pts, a.cpu(), b.cpu()) for ins, pts, a, b in
                zip(instructions[s : s + batch_size], points[s : s + batch_size],
                    source_codes[s : s + batch_size], edited_codes[s : s + batch_size])]
        batch = {k: v.to(editor.device) for k, v in layout.pad_prompts(seqs).items()}
        gen = editor.backbone.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, top_k=None,
                                       eos_token_id=layout.ids.eos, pad_token_id=layout.ids.pad)
        new = gen[:, batch["input_ids"].shape[1]:]
        texts += [normalise_decoded(t) for t in editor.text_tokenizer.batch_decode(new, skip_special_tokens=True)]
    return texts


class RRMVerifier:
    """Rewards from a trained reasoning reward model (an editor directory written by `earl train rrm-sft`)."""

    name = "rrm"

    def __init__(self, model_path: str | None = None, max_new_tokens: int = 200, batch_size: int = 16,
                 device: str = "cpu", base_url: str | None = None, concurrency: int = 16, retries: int = 2,
                 timeout: float = 120.0):
        """In process (`model_path`) or through `earl serve judge --model RRM_DIR` (`base_url`)."""
        from earl.errors import ConfigError

        if (model_path is None) == (base_url is None):
            raise ConfigError("rrm verifier: give exactly one of model_path (in process) or base_url (a server)")
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.editor = self.backend = None
        if model_path is not None:
            from earl.model import UnifiedEditor

            self.editor = UnifiedEditor.from_pretrained(model_path, device=device)
        else:
            from earl.verify.chat import OpenAIChatBackend

            self.backend = OpenAIChatBackend(base_url=base_url, timeout=timeout, max_connections=concurrency)
        self.concurrency, self.retries = concurrency, retries

    def points_for(self, req) -> list[EvalPoint]:
        import json

        from earl.rrm.principles import shapes_points
        from earl.shapes.scene import Scene

        meta = req.meta or {}
        if not meta.get("source_scene") or not meta.get("target_scene"):
            raise ValueError("the rrm verifier needs principles: on ShapesEdit the request's scene graphs")
        seed = int(hashlib.sha256(f"{meta.get('id', '')}|{req.instruction}".encode()).hexdigest()[:8], 16)
        return shapes_points(Scene.from_dict(json.loads(meta["source_scene"])),
                             Scene.from_dict(json.loads(meta["target_scene"])), seed=seed)

    def judge(self, instructions, points, source_images, edited_images) -> list[str]:
        if self.backend is not None:
            return self._judge_http(instructions, points, source_images, edited_images)
        ed = self.editor
        src = ed.encode_images([ed.preprocess(im)[0] for im in source_images])
        out_codes = ed.encode_images([ed.preprocess(im)[0] for im in edited_images])
        return generate_verdicts(ed, instructions, points, src, out_codes, self.max_new_tokens, self.batch_size)

    def _judge_http(self, instructions, points, source_images, edited_images) -> list[str]:
        import asyncio

        from earl.rrm.serving import rrm_messages
        from earl.verify.chat import chat_with_retries

        async def run():
            sem = asyncio.Semaphore(self.concurrency)

            async def one(args):
                n = len(args[1])
                async with sem:
                    call = await chat_with_retries(
                        self.backend, rrm_messages(args[2], args[3], args[0], args[1]),
                        lambda t: t if parse_trace(t, n) is not None else None,
                        max_tokens=self.max_new_tokens, temperature=0.0, retries=self.retries, backoff=0.5)
                    return call.raw

            try:
                return await asyncio.gather(*(one(a) for a in zip(instructions, points, source_images, edited_images)))
            finally:
                await self.backend.aclose()

        return list(asyncio.run(run()))

    def score(self, requests):
        from earl.verify.base import RewardResult

        points = [self.points_for(r) for r in requests]
        texts = self.judge([r.instruction for r in requests], points, [r.source for r in requests],
                           [r.edited for r in requests])
        out = []
        for text, pts in zip(texts, points):
            v = parse_trace(text, len(pts))
            if v is None:
                out.append(RewardResult.failure("unparseable verdicts", raw=text))
                continue
            out.append(RewardResult(reward=v.score / 10.0, scores={"score": v.score, "point_average": v.point_average},
                                    principles=[{"question": p.question, "category": p.category, "passed": ok,
                                                 "reason": why} for p, ok, why in zip(pts, v.passed, v.reasons)],
                                    raw=text))
        return out
