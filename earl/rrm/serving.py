"""The reasoning reward model over HTTP: `earl serve judge --model RRM_DIR` and the `rrm` verifier's client.

A training job (or several, sharing one server) asks for verdicts with an OpenAI chat request:
one user message holding the source image, the edited image, and a JSON text part
{"instruction": ..., "points": [{"question", "category"}, ...]}. The server's engine runs the
model on batched requests and replies with the verdict text of `earl.rrm.trace`, which the client
parses exactly as the in-process verifier does (an unparseable reply is a failure, after retries).
"""

from __future__ import annotations

import json

from earl.errors import DataError
from earl.rrm.principles import EvalPoint


def rrm_messages(source, edited, instruction: str, points: list[EvalPoint]) -> list[dict]:
    text = json.dumps({"instruction": instruction, "points": [p.public() for p in points]})
    return [{"role": "user", "content": [{"type": "image", "image": source}, {"type": "image", "image": edited},
                                         {"type": "text", "text": text}]}]


def _unpack(messages: list[dict]):
    parts = [p for m in messages if m["role"] == "user" and isinstance(m["content"], list) for p in m["content"]]
    images = [p["image"] for p in parts if p["type"] == "image"]
    texts = [p["text"] for p in parts if p["type"] == "text"]
    if len(images) != 2 or len(texts) != 1:
        raise DataError("a reward-model request needs two images (source, edited) and one JSON text part")
    try:
        body = json.loads(texts[0])
        points = [EvalPoint(p["question"], p["category"]) for p in body["points"]]
        return images[0], images[1], str(body["instruction"]), points
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"the text part must be JSON {{instruction, points: [{{question, category}}]}} ({e})") from None


def rrm_engine(model_dir: str, max_new_tokens: int = 200, device: str = "cpu"):
    """A `JudgeServer` engine: list[ChatRequest] -> list[Completion], one batched generation per call."""
    from earl.model import UnifiedEditor
    from earl.rrm.model import generate_verdicts
    from earl.verify.local_vlm import Completion

    editor = UnifiedEditor.from_pretrained(model_dir, device=device)

    def engine(requests):
        unpacked = [_unpack(r.messages) for r in requests]
        src = editor.encode_images([editor.preprocess(u[0])[0] for u in unpacked])
        edt = editor.encode_images([editor.preprocess(u[1])[0] for u in unpacked])
        budget = min(max_new_tokens, max(r.max_tokens for r in requests))
        texts = generate_verdicts(editor, [u[2] for u in unpacked], [u[3] for u in unpacked], src, edt,
                                  max_new_tokens=budget)
        return [Completion(t, 0, len(t.split()), "stop") for t in texts]

    return engine


def is_rrm_dir(path) -> bool:
    """An earl editor directory (editor.json): served by `rrm_engine`, not as a transformers VLM."""
    from pathlib import Path

    return (Path(path) / "editor.json").is_file()
