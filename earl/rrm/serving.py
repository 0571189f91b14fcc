"""The reasoning reward model over HTTP: `earl serve judge --model RRM_DIR` and the `rrm` verifier's client.

A training job (or several, sharing one server) asks for verdicts with an OpenAI chat request:
one user message holding the source image, the edited image, and a text part that states the task
and the output contract in words (so a general VLM served by vLLM, or one loaded locally, can
follow it) and ends with the request as one JSON line {"instruction", "points": [{"question",
"category"}, ...]}, which earl's own server reads instead of the words. Either replies with the
verdict text of `earl.rrm.trace`, which the client parses exactly as the in-process verifier does
(an unparseable reply is a failure, after retries).
"""

from __future__ import annotations

import json
from pathlib import Path

from earl.errors import DataError
from earl.rrm.principles import EvalPoint
from earl.verify.local_vlm import Completion, check_fits, stop_at

RRM_PROMPT = """You verify an image edit. The first image is the source, the second is the edited result.
Instruction: {instruction}
Check the edited image against each evaluation point:
{points}
Answer every point in order, one line each, as "N. yes - short reason" or "N. no - short reason" \
(answer no when unsure). Then give an overall score from 0 to 10 (decimals allowed) as <score>X</score>. \
The score may deduct more than the failed points: for changes the instruction did not ask for, \
and an edited image nearly identical to the source scores 0.
"""
REQUEST_TAG = "Request (JSON): "


def rrm_messages(source, edited, instruction: str, points: list[EvalPoint]) -> list[dict]:
    listed = "\n".join(f"{i}. {p.question}" for i, p in enumerate(points, 1))
    request = json.dumps({"instruction": instruction, "points": [p.public() for p in points]})
    text = RRM_PROMPT.format(instruction=instruction, points=listed) + REQUEST_TAG + request
    return [{"role": "user", "content": [{"type": "image", "image": source}, {"type": "image", "image": edited},
                                         {"type": "text", "text": text}]}]


def _unpack(messages: list[dict]):
    parts = [p for m in messages if m["role"] == "user" and isinstance(m["content"], list) for p in m["content"]]
    images = [p["image"] for p in parts if p["type"] == "image"]
    texts = [p["text"] for p in parts if p["type"] == "text"]
    if len(images) != 2 or len(texts) != 1:
        raise DataError(f"a reward-model request needs two images (source, edited) and one text part, got "
                        f"{len(images)} image(s) and {len(texts)} text part(s)")
    body = texts[0].rpartition(REQUEST_TAG)[2]  # the JSON line at the end (or a bare JSON text)
    try:
        body = json.loads(body)
        points = [EvalPoint(p["question"], p["category"]) for p in body["points"]]
        if not isinstance(body["instruction"], str) or not all(
                isinstance(p.question, str) and isinstance(p.category, str) for p in points):
            raise TypeError("instruction, question and category must be strings")
        return images[0], images[1], body["instruction"], points
    except (json.JSONDecodeError, RecursionError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"the text part must end with {REQUEST_TAG}{{instruction, points: [{{question, category}}]}} "
                        f"({type(e).__name__}: {e})") from None


def rrm_engine(model_dir: str, max_new_tokens: int = 320, device: str = "cpu"):
    """A `JudgeServer` engine: list[ChatRequest] -> list[Completion], one batched greedy generation per call.

    Its `validate(request)` (which the server calls before queueing a request) does all the per-request
    work: it reads the request (`DataError` for one it cannot read), preprocesses both images and counts
    the prompt (`RequestTooLong` when prompt and reply budget exceed the backbone's
    `max_position_embeddings`), and leaves the result on `request.prepared`; a batch then only encodes
    the images and generates. Each row stops at its own `max_tokens` (finish_reason "length") or at the
    end of its verdict ("stop"), or when its caller is gone; usage is counted in tokens. It is greedy
    only (`engine.greedy_only`): the server refuses a temperature above 0."""
    import torch

    # here, not at the top: these load transformers, and earl.rrm.verifier imports this module
    from earl.generate import context_limit, open_decoder
    from earl.model import UnifiedEditor
    from earl.rrm.verifier import judge_prompt, normalise_decoded

    editor = UnifiedEditor.from_pretrained(model_dir, device=device)
    layout = editor.layout
    limit = context_limit(editor.backbone)
    blank = torch.zeros(tuple(editor.config.grid), dtype=torch.long)  # the grid's token count, not its content

    def validate(request) -> None:
        src, edt, instruction, points = _unpack(request.messages)
        try:
            prompt_tokens = len(judge_prompt(layout, instruction, points, blank, blank))
            images = [editor.preprocess(src)[0], editor.preprocess(edt)[0]]
        except (TypeError, ValueError, AttributeError) as e:
            raise DataError(f"cannot read the reward-model request ({type(e).__name__}: {e})") from None
        check_fits(prompt_tokens, min(max_new_tokens, request.max_tokens), limit)
        request.prepared = (images, instruction, points)

    @torch.no_grad()
    def engine(requests):
        for r in requests:
            if r.prepared is None:
                validate(r)
        src = editor.encode_images([r.prepared[0][0] for r in requests])
        edt = editor.encode_images([r.prepared[0][1] for r in requests])
        seqs = [judge_prompt(layout, r.prepared[1], r.prepared[2], a.cpu(), b.cpu())
                for r, a, b in zip(requests, src, edt)]
        batch = {k: v.to(editor.device) for k, v in layout.pad_prompts(seqs).items()}
        budgets = torch.tensor([min(max_new_tokens, r.max_tokens) for r in requests], device=editor.device)
        eos, pad = layout.ids.eos, layout.ids.pad
        dec = open_decoder(editor.backbone, batch, int(budgets.max()))
        done = torch.zeros(len(requests), dtype=torch.bool, device=editor.device)
        ids = []
        for step in range(int(budgets.max())):  # greedy_text's loop, each row with its own budget
            nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), dec.logits.float().argmax(-1))
            ids.append(nxt)
            cancelled = torch.tensor([r.cancel.is_set() for r in requests], device=editor.device)
            done = done | (nxt == eos) | (budgets <= step + 1) | cancelled
            if bool(done.all()):
                break
            dec.feed(nxt[:, None])
        out = []
        for r, seq, row in zip(requests, seqs, torch.stack(ids, dim=1).tolist()):
            row = row[:min(max_new_tokens, r.max_tokens)]
            end = row.index(eos) if eos in row else None
            kept = row if end is None else row[:end]
            text = normalise_decoded(editor.text_tokenizer.decode(kept, skip_special_tokens=True))
            cut = stop_at(text, r.stop)
            if cut is not None:
                out.append(Completion(text[:cut], len(seq), len(kept), "stop"))
            else:
                out.append(Completion(text, len(seq), len(kept) + (end is not None), "stop" if end is not None else "length"))
        return out

    engine.validate = validate
    engine.greedy_only = True
    return engine


def is_rrm_dir(path) -> bool:
    """An earl editor directory (editor.json): served by `rrm_engine`, not as a transformers VLM."""
    return (Path(path) / "editor.json").is_file()
