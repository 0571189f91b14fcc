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

from earl.errors import DataError
from earl.rrm.principles import EvalPoint

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
        raise DataError("a reward-model request needs two images (source, edited) and one text part")
    body = texts[0].rpartition(REQUEST_TAG)[2]  # the JSON line at the end (or a bare JSON text)
    try:
        body = json.loads(body)
        points = [EvalPoint(p["question"], p["category"]) for p in body["points"]]
        return images[0], images[1], str(body["instruction"]), points
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"the text part must end with {REQUEST_TAG}{{instruction, points: [{{question, category}}]}} "
                        f"({e})") from None


def rrm_engine(model_dir: str, max_new_tokens: int = 320, device: str = "cpu"):
    """A `JudgeServer` engine: list[ChatRequest] -> list[Completion], one batched generation per call.

    Its `validate(request)` (which the server calls before queueing a request) raises `DataError` for
    a request that cannot be read, and `RequestTooLong` for one whose prompt and reply budget exceed
    the backbone's `max_position_embeddings`."""
    import torch

    from earl.generate import context_limit
    from earl.model import UnifiedEditor
    from earl.rrm.model import generate_verdicts, judge_prompt
    from earl.verify.local_vlm import Completion, check_fits

    editor = UnifiedEditor.from_pretrained(model_dir, device=device)
    limit = context_limit(editor.backbone)
    blank = torch.zeros(tuple(editor.config.grid), dtype=torch.long)  # the grid's token count, not its content

    def validate(request) -> None:
        _src, _edt, instruction, points = _unpack(request.messages)
        prompt_tokens = len(judge_prompt(editor.layout, instruction, points, blank, blank))
        check_fits(prompt_tokens, min(max_new_tokens, request.max_tokens), limit)

    def engine(requests):
        unpacked = [_unpack(r.messages) for r in requests]
        src = editor.encode_images([editor.preprocess(u[0])[0] for u in unpacked])
        edt = editor.encode_images([editor.preprocess(u[1])[0] for u in unpacked])
        budget = min(max_new_tokens, max(r.max_tokens for r in requests))
        texts = generate_verdicts(editor, [u[2] for u in unpacked], [u[3] for u in unpacked], src, edt,
                                  max_new_tokens=budget)
        return [Completion(t, 0, len(t.split()), "stop") for t in texts]

    engine.validate = validate
    return engine


def is_rrm_dir(path) -> bool:
    """An earl editor directory (editor.json): served by `rrm_engine`, not as a transformers VLM."""
    from pathlib import Path

    return (Path(path) / "editor.json").is_file()
