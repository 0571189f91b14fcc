"""The VIEScore judge end to end: a real `earl serve judge` server on loopback, stub engines for the
wire and failure paths, and a tiny random VLM whose gibberish must come back as failed rewards."""

from __future__ import annotations

import asyncio
import json
import math
import time

import httpx
import pytest
from PIL import Image

from earl.errors import ConfigError
from earl.serve.judge import JudgeServer
from earl.verify import EditRequest, Verifier
from earl.verify.chat import JudgeError, LocalVLMBackend, OpenAIChatBackend, chat_with_retries
from earl.verify.local_vlm import Completion, LocalVLM
from earl.verify.messages import data_url_to_image, image_to_data_url
from earl.verify.viescore import VIEScoreVerifier, parse_scores, probe_failed_rate

RED, BLUE = Image.new("RGB", (32, 32), (220, 40, 40)), Image.new("RGB", (32, 32), (40, 80, 220))


def _requests(n: int) -> list[EditRequest]:
    return [EditRequest(RED, "Make the image blue.", BLUE, {"id": f"s{i}"}) for i in range(n)]


def _prompt_text(messages) -> str:
    return "".join(p["text"] for m in messages if isinstance(m["content"], list) for p in m["content"]
                   if p["type"] == "text")


def echo_engine(requests):
    """Semantic queries (two images) score [8, 6], perceptual ones [9, 7]; checks the images arrived."""
    out = []
    for r in requests:
        images = [p["image"] for m in r.messages if isinstance(m["content"], list) for p in m["content"]
                  if p["type"] == "image"]
        assert all(im.size == (32, 32) for im in images)
        score = [8, 6] if len(images) == 2 else [9, 7]
        out.append(Completion(json.dumps({"score": score, "reasoning": "stub"}), 10, 5, "stop"))
    return out


@pytest.fixture
def serve():
    servers = []

    def start(engine, **kw) -> JudgeServer:
        servers.append(JudgeServer(("127.0.0.1", 0), engine, model_name="stub-judge", **kw).start())
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_roundtrip_stub_server(serve):
    server = serve(echo_engine)
    backend = OpenAIChatBackend(base_url=server.url.removesuffix("/v1"), api_key="sk-secret", timeout=10)
    assert "sk-secret" not in repr(backend)
    v = VIEScoreVerifier(backend, concurrency=4, retries=1, backoff=0.01)
    assert isinstance(v, Verifier)
    results = v.score(_requests(3))
    assert backend.model == "stub-judge"  # discovered from /v1/models
    for r in results:
        assert not r.failed and r.error is None
        assert r.scores["sc"] == 6.0 and r.scores["pq"] == 7.0 and r.scores["edit_success"] == 8.0
        assert r.reward == pytest.approx(math.sqrt(6 * 7) / 10)
        assert '"reasoning": "stub"' in r.raw
    assert v.stats == {"requests": 3, "failed": 0, "queries": 6, "retries": 0}


def test_wire_format_and_bad_requests(serve):
    server = serve(echo_engine)
    base = server.url.removesuffix("/v1")
    with httpx.Client(base_url=base, timeout=10) as c:
        assert c.get("/health").json()["status"] == "ok"
        assert c.get("/v1/models").json()["data"][0]["id"] == "stub-judge"
        ok = c.post("/v1/chat/completions", json={
            "model": "anything", "n": 2, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_to_data_url(RED)}},
                                                      {"type": "text", "text": "rate"}]}]})
        body = ok.json()
        assert ok.status_code == 200 and body["object"] == "chat.completion" and len(body["choices"]) == 2
        assert json.loads(body["choices"][1]["message"]["content"])["score"] == [9, 7]
        assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}
        user = {"role": "user", "content": "hi"}
        bad = [
            (b"{not json", None),
            (json.dumps({"messages": []}), "messages"),
            (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}), "messages"),
            (json.dumps({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]}), "messages"),
            (json.dumps({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}), "messages"),
            (json.dumps({"messages": [user], "max_tokens": 0}), "max_tokens"),
            (json.dumps({"messages": [user], "temperature": "hot"}), "temperature"),
            (json.dumps({"messages": [user], "n": 99}), "n"),
            (json.dumps({"messages": [user], "stream": True}), "stream"),
        ]
        for payload, param in bad:
            r = c.post("/v1/chat/completions", content=payload, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, payload
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
        assert c.get("/v1/nothing").status_code == 404


def test_data_urls_roundtrip():
    assert data_url_to_image(image_to_data_url(RED)).getpixel((3, 3)) == (220, 40, 40)


def test_server_error_is_retried_then_failed(serve):
    def broken(requests):
        raise RuntimeError("CUDA out of memory (pretend)")

    server = serve(broken)
    v = VIEScoreVerifier(OpenAIChatBackend(base_url=server.url, model="stub-judge", timeout=10),
                         retries=2, backoff=0.01)
    results = v.score(_requests(2))
    assert all(r.failed and r.reward is None for r in results)
    assert "HTTP 500" in results[0].error and "out of memory" in results[0].error and "3 attempts" in results[0].error
    assert v.stats == {"requests": 2, "failed": 2, "queries": 4, "retries": 8}  # 2 retries x 4 queries


def test_timeout_is_retried_then_failed(serve):
    def slow(requests):
        time.sleep(0.4)
        return echo_engine(requests)

    server = serve(slow, max_batch=16)
    v = VIEScoreVerifier(OpenAIChatBackend(base_url=server.url, model="stub-judge", timeout=0.1),
                         retries=1, backoff=0.01)
    (r,) = v.score(_requests(1))
    assert r.failed and r.reward is None and "no reply within 0.1s" in r.error
    assert v.stats["retries"] == 2 and v.stats["failed"] == 1


def test_connection_refused_is_a_failed_result():
    v = VIEScoreVerifier(OpenAIChatBackend(base_url="http://127.0.0.1:9", model="m", timeout=2), retries=1, backoff=0)
    (r,) = v.score(_requests(1))
    assert r.failed and "connection failed" in r.error and v.stats["retries"] == 2


class ScriptedBackend:
    """Replies from a script, one per call; JudgeErrors in the script are raised."""

    name = "scripted"

    def __init__(self, replies):
        self.replies, self.calls = list(replies), 0

    async def chat(self, messages, max_tokens, temperature):
        self.calls += 1
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def aclose(self):
        pass


def test_retry_policy():
    kw = dict(max_tokens=8, temperature=0.0, retries=3, backoff=0.0)
    b = ScriptedBackend(["no idea", JudgeError("HTTP 503", retriable=True), '{"score": [5, 6]}'])
    call = asyncio.run(chat_with_retries(b, [], parse_scores, **kw))
    assert call.value == [5.0, 6.0] and call.attempts == 3 and call.error is None
    b = ScriptedBackend([JudgeError("HTTP 401: bad key", retriable=False), "[1, 2]"])
    call = asyncio.run(chat_with_retries(b, [], parse_scores, **kw))
    assert call.value is None and call.attempts == 1 and "401" in call.error
    b = ScriptedBackend(["?"] * 4)
    call = asyncio.run(chat_with_retries(b, [], parse_scores, **kw))
    assert call.value is None and call.attempts == 4 and "unparseable" in call.error and call.raw == "?"


def test_score_inside_running_loop_and_bad_input():
    v = VIEScoreVerifier(ScriptedBackend(['{"score": [10, 10]}', "[4, 9]"]), retries=0)

    async def inside():
        return v.score(_requests(1))

    (r,) = asyncio.run(inside())
    assert not r.failed and r.reward == pytest.approx(math.sqrt(10 * 4) / 10)
    (empty,) = v.score([EditRequest(RED, " ", BLUE)])
    assert empty.failed and "empty instruction" in empty.error
    with pytest.raises(TypeError):
        v.score([("not", "a", "request")])


def test_backend_config(monkeypatch):
    monkeypatch.delenv("EARL_JUDGE_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="EARL_JUDGE_BASE_URL"):
        OpenAIChatBackend()
    monkeypatch.setenv("EARL_JUDGE_BASE_URL", "http://judge:8000")
    monkeypatch.setenv("EARL_JUDGE_MODEL", "qwen-vl")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    b = OpenAIChatBackend()
    assert (b.base_url, b.model) == ("http://judge:8000/v1", "qwen-vl") and "sk-from-env" not in repr(b)


# ---------------------------------------------------------------------------------------------
# A real (tiny, random) VLM.


@pytest.fixture(scope="module")
def tiny_vlm(tiny_vlm_dir):
    return LocalVLM(tiny_vlm_dir, device="cpu")


def test_tiny_vlm_through_server_fails_cleanly_under_load(serve, tiny_vlm, one_thread):
    server = serve(tiny_vlm.generate, max_batch=16, max_wait=0.01)
    with httpx.Client(timeout=60) as c:  # the raw wire: n choices, usage, finish reason
        body = c.post(server.url + "/chat/completions", json={
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_to_data_url(RED)}},
                                                      {"type": "text", "text": "Rate it."}]}],
            "max_tokens": 5, "temperature": 0, "n": 2}).json()
    assert len(body["choices"]) == 2 and body["usage"]["completion_tokens"] <= 10
    assert body["choices"][0]["finish_reason"] in ("stop", "length")

    v = VIEScoreVerifier(OpenAIChatBackend(base_url=server.url, timeout=60), concurrency=64, retries=1,
                         backoff=0.01, max_tokens=6)
    report = probe_failed_rate(v, n=64)
    # Gibberish never parses: every request answered, every reward failed (none guessed), all counted.
    assert report["answered"] == 64 and report["failed"] == 64 and report["failed_rate"] == 1.0
    assert v.stats == {"requests": 64, "failed": 64, "queries": 128, "retries": 128}
    assert server.batcher.batches < 256  # 256 generations were batched
    print(f"\nload probe against the tiny VLM server: {report}, batches: {server.batcher.batches}")


def test_tiny_vlm_in_process_backend(tiny_vlm_dir, one_thread):
    backend = LocalVLMBackend(str(tiny_vlm_dir), max_batch=4, device="cpu")
    try:
        v = VIEScoreVerifier(backend, retries=0, max_tokens=6)
        results = v.score(_requests(2))
        assert all(r.failed and r.reward is None and r.raw.startswith("[semantic]") for r in results)
        assert v.stats["failed"] == 2 and v.stats["queries"] == 4
    finally:
        backend.close()


def test_too_long_prompt_is_a_400_naming_the_field(serve, tiny_vlm_dir, one_thread):
    """`earl serve judge` over a local VLM (4096 positions): a prompt longer than the model takes is a 400
    naming `messages`, one that leaves too little room for max_tokens a 400 naming `max_tokens`; never a 500."""
    vlm = LocalVLM(tiny_vlm_dir, device="cpu")
    assert vlm.context_limit == 4096
    server = serve(vlm.generate, validate=vlm.check_request)

    def ask(text, max_tokens):
        with httpx.Client(timeout=60) as c:
            return c.post(server.url + "/chat/completions", json={
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": image_to_data_url(RED)}},
                    {"type": "text", "text": text}]}], "max_tokens": max_tokens, "temperature": 0})

    r = ask("x" * 10_000, 5)  # one token per byte
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "messages" and err["type"] == "invalid_request_error"
    assert "4096 tokens" in err["message"] and "the prompt is 10" in err["message"], err
    r = ask("x" * 3_900, 400)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.json()
    assert "lower max_tokens to at most" in r.json()["error"]["message"]
    assert ask("x" * 3_900, 5).status_code == 200
    assert server.batcher.batches == 1  # the refused requests never reached the model


# ---------------------------------------------------------------------------------------------
# The server's contract: validation before batching, per-row parameters, cancellation, errors, keys.


def _png_claiming(width: int, height: int) -> str:
    """A data URL of a PNG whose header claims width x height (its pixel data is a 1x1 image's)."""
    import base64
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return "data:image/png;base64," + base64.b64encode(bytes(data)).decode()


def _chat(text="rate", image=None, **kw) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": image or image_to_data_url(RED)}}, {"type": "text", "text": text}]
    return {"messages": [{"role": "user", "content": parts}], **kw}


def test_image_bombs_and_deep_json_are_400s_and_big_bodies_413(serve):
    from earl.errors import DataError

    with pytest.raises(DataError, match="DecompressionBombError"):
        data_url_to_image(_png_claiming(30000, 30000), max_pixels=10**9)  # past PIL's own bomb limit
    with pytest.raises(DataError, match="more than the 100 allowed"):
        data_url_to_image(image_to_data_url(RED), max_pixels=100)  # 32x32: refused from the header
    server = serve(echo_engine, max_body_bytes=2**20)
    with httpx.Client(timeout=30) as c:
        r = c.post(server.url + "/chat/completions", json=_chat(image=_png_claiming(30000, 30000)))
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages" and "DecompressionBomb" in r.text
        r = c.post(server.url + "/chat/completions", json=_chat(image=_png_claiming(6000, 6000)))  # under PIL's limit
        assert r.status_code == 400 and "more than the 33554432 allowed" in r.text
        for depth in (100, 100_000):  # under and far over the interpreter's recursion limit
            r = c.post(server.url + "/chat/completions", content=b"[" * depth + b"]" * depth)
            assert r.status_code == 400 and "nests more than 64" in r.json()["error"]["message"], depth
        r = c.post(server.url + "/chat/completions", content=b"x" * (2**20 + 1))
        assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"

        def chunks():  # no Content-Length: counted as it streams
            for _ in range(3):
                yield b" " * 2**19

        r = c.post(server.url + "/chat/completions", content=chunks())
        assert r.status_code == 413
        assert c.post(server.url + "/chat/completions", json=_chat()).status_code == 200  # same connection, still fine
    assert server.batcher.batches == 1


def test_every_route_and_method_answers_json_errors(serve):
    server = serve(echo_engine)
    base = server.url.removesuffix("/v1")
    with httpx.Client(base_url=base, timeout=10) as c:
        for method, path, status in [("PUT", "/v1/chat/completions", 405), ("DELETE", "/v1/chat/completions", 405),
                                     ("GET", "/v1/chat/completions", 405), ("POST", "/v1/models", 405),
                                     ("GET", "/nothing", 404), ("POST", "/v1/completions", 404),
                                     ("PATCH", "/health", 405)]:
            r = c.request(method, path, content=b"{}")
            assert r.status_code == status and r.headers["content-type"] == "application/json", (method, path)
            err = r.json()["error"]
            assert err["code"] == status and err["message"] and err["type"], (method, path, err)


def test_api_key_is_required_and_sent_by_the_backend(serve, monkeypatch, caplog):
    server = serve(echo_engine, api_key="sk-right")
    with httpx.Client(timeout=10) as c:
        assert c.get(server.url.removesuffix("/v1") + "/health").status_code == 200  # open, as in vLLM
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-right"}):
            r = c.post(server.url + "/chat/completions", json=_chat(), headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert c.get(server.url + "/models", headers={"Authorization": "Bearer sk-right"}).status_code == 200
    for var in ("EARL_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EARL_API_KEY", "sk-right")  # the server's variable works for the client too

    async def ask(backend):
        try:
            return await backend.chat([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)
        finally:
            await backend.aclose()

    assert "score" in asyncio.run(ask(OpenAIChatBackend(base_url=server.url, model="m", timeout=10)))
    with pytest.raises(JudgeError, match="HTTP 401") as e:
        asyncio.run(ask(OpenAIChatBackend(base_url=server.url, model="m", api_key="sk-wrong", timeout=10)))
    assert not e.value.retriable and "sk-right" not in caplog.text


def test_unsupported_fields_are_refused_not_ignored(serve):
    server = serve(echo_engine)
    with httpx.Client(timeout=10) as c:
        for extra, param in [({"logprobs": True}, "logprobs"), ({"tools": [{"type": "function"}]}, "tools"),
                             ({"response_format": {"type": "json_object"}}, "response_format"),
                             ({"presence_penalty": 0.5}, "presence_penalty"), ({"stop": ["a"] * 5}, "stop"),
                             ({"seed": "7"}, "seed"), ({"top_p": 0}, "top_p")]:
            r = c.post(server.url + "/chat/completions", json=_chat(**extra))
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (extra, r.text)
        neutral = _chat(logprobs=False, presence_penalty=0, response_format={"type": "text"}, seed=3, stop="x")
        assert c.post(server.url + "/chat/completions", json=neutral).status_code == 200


def test_a_request_the_engine_chokes_on_fails_alone(serve):
    """Defence in depth: a batch that fails is answered again one request at a time."""
    import concurrent.futures

    def engine(requests):
        if any("poison" in _prompt_text(r.messages) for r in requests):
            raise RuntimeError("engine crashed")
        return echo_engine(requests)

    server = serve(engine, max_batch=8, max_wait=0.2)

    def post(text):
        with httpx.Client(timeout=30) as c:
            return c.post(server.url + "/chat/completions", json=_chat(text)).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(post, ["poison"] + ["fine"] * 7))
    assert codes == [500] + [200] * 7


def test_disconnected_clients_work_is_cancelled(serve):
    """A client that gives up: its running rows see the cancel flag, its queued rows never run."""
    seen = []

    def engine(requests):  # "generates" until its caller goes away (or 20 s)
        seen.append([_prompt_text(r.messages) for r in requests])
        deadline = time.monotonic() + 20
        while not all(r.cancel.is_set() for r in requests) and time.monotonic() < deadline:
            if any("quick" in _prompt_text(r.messages) for r in requests):
                return echo_engine(requests)
            time.sleep(0.01)
        return echo_engine(requests)

    server = serve(engine, max_batch=1)

    async def main():
        async with httpx.AsyncClient(timeout=30) as c:
            url = server.url + "/chat/completions"
            running = asyncio.create_task(c.post(url, json=_chat("slow")))
            await asyncio.sleep(0.3)
            queued = asyncio.create_task(c.post(url, json=_chat("queued")))
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            running.cancel(), queued.cancel()  # both clients killed mid-request
            r = await c.post(url, json=_chat("quick"))
            return r.status_code, time.monotonic() - t0

    status, waited = asyncio.run(main())
    assert status == 200 and waited < 5, waited  # not the 20 s the abandoned generation would take
    assert seen == [["slow"], ["quick"]]  # the queued request never reached the engine
    assert server.stats["cancelled"] == 2


def test_sigint_and_sigterm_drain_in_flight_requests_and_exit_cleanly(tmp_path):
    import signal
    import subprocess
    import sys
    import threading

    script = tmp_path / "serve.py"
    script.write_text(
        "import sys, time\n"
        "from earl.serve.judge import JudgeServer\n"
        "from earl.verify.local_vlm import Completion\n"
        "def engine(rs):\n"
        "    time.sleep(1.5)\n"
        "    return [Completion('done', 1, 1, 'stop') for _ in rs]\n"
        "s = JudgeServer(('127.0.0.1', 0), engine, model_name='m')\n"
        "print(s.url, flush=True)\n"
        "s.serve_forever()\n"
        "print('exited', flush=True)\n")
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            url = proc.stdout.readline().strip()
            result = {}

            def ask(url, result):
                with httpx.Client(timeout=30) as c:
                    result["r"] = c.post(url + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})

            t = threading.Thread(target=ask, args=(url, result))
            t.start()
            time.sleep(0.7)  # the request is in the engine
            proc.send_signal(sig)
            t.join(30)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert result["r"].status_code == 200 and result["r"].json()["choices"][0]["message"]["content"] == "done"
        assert proc.returncode == 0 and "exited" in out, (sig, proc.returncode, err[-2000:])


def test_tiny_vlm_honours_each_requests_parameters_in_a_shared_batch(serve, tiny_vlm, one_thread):
    """temperature, n, seed, max_tokens and stop, per request, while the requests share batches."""
    import concurrent.futures

    server = serve(tiny_vlm.generate, validate=tiny_vlm.check_request, max_batch=8, max_wait=0.2)

    def post(payload):
        with httpx.Client(timeout=60) as c:
            r = c.post(server.url + "/chat/completions", json=payload)
            assert r.status_code == 200, r.text
            return r.json()

    def texts(body):
        return [ch["message"]["content"] for ch in body["choices"]]

    alone = post(_chat("Rate it.", max_tokens=12, temperature=0))
    greedy = texts(alone)[0]
    stop = next(ch for ch in greedy[1:] if ch.isascii() and ch.isalnum())
    payloads = [_chat("Rate it.", max_tokens=12, temperature=0), _chat("Rate it.", max_tokens=3, temperature=0),
                _chat("Rate it.", n=4, temperature=1.0, max_tokens=12), _chat("Rate it.", n=2, seed=7, max_tokens=12),
                _chat("Rate it.", n=2, seed=7, max_tokens=12), _chat("Rate it.", max_tokens=12, temperature=0, stop=stop)]
    batches = server.batcher.batches
    with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        full, short, sampled, seeded, seeded_again, stopped = pool.map(post, payloads)
    assert server.batcher.batches - batches < len(payloads)  # they did share batches
    assert texts(full) == [greedy] and full["choices"][0]["finish_reason"] == "length"
    assert full["usage"]["completion_tokens"] == 12 and full["usage"]["prompt_tokens"] == alone["usage"]["prompt_tokens"] > 4
    assert short["usage"]["completion_tokens"] == 3 and short["choices"][0]["finish_reason"] == "length"
    assert greedy.startswith(texts(short)[0])  # its own budget, not the batch's largest
    assert len(set(texts(sampled))) > 1 and len(texts(sampled)) == 4  # four samples, not one greedy answer four times
    assert texts(seeded) == texts(seeded_again) and texts(seeded)[0] != texts(seeded)[1]  # seed: repeatable
    assert texts(stopped) == [greedy[:greedy.index(stop)]] and stopped["choices"][0]["finish_reason"] == "stop"
