"""`earl serve judge` over earl's own reward model: requests it cannot take are 400s naming the field,
checked before they reach the model (never a 500 from inside a batch)."""

import httpx
import pytest
from PIL import Image

from earl.rrm.principles import EvalPoint
from earl.rrm.serving import rrm_engine, rrm_messages
from earl.serve.judge import JudgeServer
from earl.verify.messages import to_openai

BUNDLED_RRM = "checkpoints/shapes-rrm-lenient"


@pytest.fixture(scope="module")
def server():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / BUNDLED_RRM
    s = JudgeServer(("127.0.0.1", 0), rrm_engine(str(path), max_new_tokens=8), model_name="rrm").start()
    yield s
    s.close()


def ask(server, instruction, max_tokens=8, messages=None):
    img = Image.new("RGB", (64, 64), "white")
    points = [EvalPoint("Is the circle blue?", "instruction")]
    messages = messages or to_openai(rrm_messages(img, img, instruction, points))
    with httpx.Client(timeout=120) as c:
        return c.post(server.url + "/chat/completions", json={"messages": messages, "max_tokens": max_tokens,
                                                               "temperature": 0})


def test_too_long_instruction_is_a_400_naming_messages(server):
    r = ask(server, "Make the red circle blue and " * 345)  # 10,005 characters
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "messages" and "864 tokens" in err["message"] and "the prompt is" in err["message"], err


def test_room_only_without_the_reply_budget_names_max_tokens(server):
    import torch

    from earl.model import UnifiedEditor
    from earl.rrm.model import judge_prompt

    path = str(__import__("pathlib").Path(__file__).resolve().parents[2] / BUNDLED_RRM)
    layout = UnifiedEditor.from_pretrained(path).layout
    blank = torch.zeros(8, 8, dtype=torch.long)
    points = [EvalPoint("Is the circle blue?", "instruction")]
    words = 1
    while len(judge_prompt(layout, " ".join(["blue"] * words), points, blank, blank)) < 860:
        words += 1
    r = ask(server, " ".join(["blue"] * words))  # the prompt fits, the 8-token reply does not
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "max_tokens" and "lower max_tokens to at most" in err["message"]


def test_unreadable_request_is_a_400_and_a_normal_one_is_answered(server):
    r = ask(server, "", messages=[{"role": "user", "content": "just text, no images"}])
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    r = ask(server, "Make the red circle blue.")
    assert r.status_code == 200, r.text
    assert server.batcher.batches == 1  # the refused requests never reached the model
