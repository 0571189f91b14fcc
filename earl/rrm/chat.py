"""The reasoning reward model's chat request, as a client sends it and earl's server reads it.

One user message holding the source image, the edited image, and a text part that states the task
and the output contract in words (so a general VLM served by vLLM, or one loaded locally, can
follow it) and ends with the request as one JSON line {"instruction", "points": [{"question",
"category"}, ...]}, which earl's own server (`earl.rrm.serving`) reads instead of the words. Kept apart
from the server so that a client builds requests without loading a model.
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


def unpack_request(messages: list[dict]):
    """(source image, edited image, instruction, points) of a request `rrm_messages` built; `DataError`
    naming what is missing or malformed otherwise."""
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
