"""`earl serve judge` over earl's own reward model: requests it cannot take are 400s naming the field,
checked before they reach the model (never a 500 from inside a batch); it samples like any
OpenAI-compatible engine (temperature, top_p, n, seed), and a seeded request writes the traces the
same seeds write in process."""

import httpx
import pytest
from PIL import Image

from earl.rrm.chat import rrm_messages
from earl.rrm.principles import EvalPoint
from earl.rrm.serving import rrm_engine
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
    from earl.rrm.prompt import judge_prompt

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


def test_a_request_of_the_wrong_shape_is_refused_alone_and_each_row_keeps_its_budget():
    """One image and a text with no `Request (JSON)` part, sent with 7 good requests: it is a 400 from the
    validation before batching, the 7 are answered. Each row stops at its own max_tokens ("length"),
    and usage counts tokens."""
    import concurrent.futures
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / BUNDLED_RRM
    server = JudgeServer(("127.0.0.1", 0), rrm_engine(str(path), max_new_tokens=8), model_name="rrm", max_batch=8,
                         max_wait=0.3).start()
    img = Image.new("RGB", (64, 64), "white")
    bad = to_openai([{"role": "user", "content": [{"type": "image", "image": img},
                                                  {"type": "text", "text": "Is the circle blue?"}]}])
    try:
        alone = ask(server, "Make the red circle blue.", max_tokens=8).json()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda k: ask(server, "Make the red circle blue.", max_tokens=8 - k % 2 * 5,
                                                  messages=bad if k == 0 else None), range(8)))
        r = ask(server, "Make the red circle blue.", max_tokens=8)
    finally:
        server.close()
    assert replies[0].status_code == 400 and replies[0].json()["error"]["param"] == "messages"
    assert "1 image(s)" in replies[0].json()["error"]["message"]
    assert [x.status_code for x in replies[1:]] == [200] * 7
    full = alone["choices"][0]
    for k, reply in enumerate(replies[1:], 1):
        body = reply.json()
        assert body["usage"]["prompt_tokens"] == alone["usage"]["prompt_tokens"] > 100  # tokens, not 0
        if k % 2 == 0:  # max_tokens 8: the answer written alone
            assert body["choices"][0] == full
        else:  # max_tokens 3: cut after 3 tokens
            assert body["usage"]["completion_tokens"] <= 3
            if full["finish_reason"] == "length" or alone["usage"]["completion_tokens"] > 3:
                assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3
    assert r.json()["choices"][0] == full


def _body():
    img = Image.new("RGB", (64, 64), "white")
    points = [EvalPoint("Is the circle blue?", "instruction")]
    return {"messages": to_openai(rrm_messages(img, img, "Make the red circle blue.", points)), "max_tokens": 8}


def test_avg_at_k_over_http_equals_avg_at_k_in_process_for_the_same_seeds():
    """Two ShapesEdit test edits, k = 3 sampled verdicts each: a request with n = 3 and seed s gets the
    traces `sample_verdicts` writes in process from `verdict_generators([s], 3)`, hence the same Avg@k;
    the k traces differ (the temperature is honoured), another seed changes them, and top_p is honoured
    (a nucleus of one token writes the greedy reply)."""
    from pathlib import Path

    from earl.model import UnifiedEditor
    from earl.rrm.principles import shapes_points
    from earl.rrm.scoring import sample_verdicts, verdict_generators
    from earl.rrm.trace import parse_trace
    from earl.shapes.dataset import generate_samples
    from earl.shapes.render import render

    path = str(Path(__file__).resolve().parents[2] / BUNDLED_RRM)
    k, budget, temperature = 3, 320, 1.0
    editor = UnifiedEditor.from_pretrained(path)
    edits = [(render(s.source_scene), render(s.target_scene), s.instruction,
              shapes_points(s.source_scene, s.target_scene, seed=i))
             for i, s in enumerate(generate_samples("simple", 2, seed=0, part="test"))]

    def avg(texts, points):
        scores = [v.score for v in (parse_trace(t, len(points)) for t in texts) if v is not None]
        return sum(scores) / len(scores) if scores else None

    local = []
    for (src, edt, ins, pts), seed in zip(edits, (11, 12)):
        codes = [editor.encode_images([editor.preprocess(im)[0]]) for im in (src, edt)]
        (texts,) = sample_verdicts(editor, [ins], [pts], codes[0], codes[1], k, temperature, budget, k,
                                   verdict_generators([seed], k, editor.device))
        local.append(texts)
    server = JudgeServer(("127.0.0.1", 0), rrm_engine(path, max_new_tokens=budget), model_name="rrm", max_batch=k,
                         max_wait=0.5).start()
    try:
        with httpx.Client(timeout=300) as c:
            def post(edit, **fields):
                body = {"messages": to_openai(rrm_messages(*edit)), "max_tokens": budget, **fields}
                reply = c.post(server.url + "/chat/completions", json=body)
                assert reply.status_code == 200, reply.text
                return [ch["message"]["content"] for ch in reply.json()["choices"]]

            remote = [post(e, temperature=temperature, n=k, seed=s) for e, s in zip(edits, (11, 12))]
            other_seed = post(edits[0], temperature=temperature, n=k, seed=99)
            nucleus = post(edits[0], temperature=1.0, top_p=1e-6, max_tokens=24)
            greedy = post(edits[0], temperature=0, max_tokens=24)
    finally:
        server.close()
    assert remote == local
    averages = [avg(t, e[3]) for t, e in zip(local, edits)]
    assert [avg(t, e[3]) for t, e in zip(remote, edits)] == averages and None not in averages, averages
    assert all(len(set(t)) > 1 for t in remote), remote  # sampled, not k copies of one greedy trace
    assert other_seed != remote[0]
    assert nucleus == greedy
