"""Fuzz and load test of `earl serve judge` (loopback only, bounded in count and time).

A few hundred mixed requests at once against the server around the tiny random VLM, with an API key:
good ones (greedy, n > 1, stop strings, seeded sampling) through the official `openai` client and raw
httpx, bad ones of every kind the server must refuse (malformed and 100,000-deep JSON, a PNG claiming
30000x30000, a 70 MB body, bad fields, a prompt too long for the model, no or a wrong key, unknown
routes and methods), and clients killed mid-request. Asserted: no dropped connection, every bad request
refused with its own 4xx (never a 5xx), every good request answered exactly as when it was sent alone
(so no bad neighbour failed or changed it), killed clients' work cancelled, and the server alive at
the end."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import statistics
import time

import httpx
import pytest
from PIL import Image

from earl.serve.judge import JudgeServer
from earl.verify.local_vlm import LocalVLM
from earl.verify.messages import image_to_data_url

openai = pytest.importorskip("openai")

KEY = "sk-load-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
COLOURS = [(220, 40, 40), (40, 80, 220), (30, 200, 60), (250, 250, 250)]


def _png_claiming(width: int, height: int) -> str:
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return "data:image/png;base64," + base64.b64encode(bytes(data)).decode()


def _messages(text: str, colour=COLOURS[0], image: str | None = None) -> list[dict]:
    url = image or image_to_data_url(Image.new("RGB", (32, 32), colour))
    return [{"role": "system", "content": "You rate images."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def good_payloads() -> list[dict]:
    """Distinct well-formed requests: temperature 0 (one or several choices, stop strings) and seeded sampling."""
    out = []
    for k in range(16):
        p = {"model": "tiny", "messages": _messages(f"Rate edit {k}.", COLOURS[k % 4]), "max_tokens": 1 + k % 8,
             "temperature": 0}
        if k % 5 == 1:
            p["n"] = 3
        if k % 4 == 2:
            p["stop"] = ["e", "a"]
        out.append(p)
    for k in range(3):  # sampled, seeded: reproducible too
        out.append({"model": "tiny", "messages": _messages(f"Describe {k}.", COLOURS[k]), "max_tokens": 6,
                    "temperature": 1.0, "seed": 100 + k, "n": 2})
    return out


def bad_requests() -> list[tuple[str, str, dict, bytes | None, dict, int]]:
    """(name, method, headers, raw body or None, json body, expected status)."""
    good = {"messages": _messages("Rate it."), "max_tokens": 4}
    j = {"Content-Type": "application/json", **AUTH}
    out = [
        ("malformed json", "POST", j, b'{"messages": [', {}, 400),
        ("deep json", "POST", j, b"[" * 100_000 + b"]" * 100_000, {}, 400),
        ("not an object", "POST", j, b"[1, 2]", {}, 400),
        ("png bomb", "POST", j, None, {**good, "messages": _messages("x", image=_png_claiming(30000, 30000))}, 400),
        ("too many pixels", "POST", j, None, {**good, "messages": _messages("x", image=_png_claiming(6000, 6000))}, 400),
        ("bad base64", "POST", j, None, {**good, "messages": _messages("x", image="data:image/png;base64,!!")}, 400),
        ("not an image", "POST", j, None,
         {**good, "messages": _messages("x", image="data:image/png;base64," + base64.b64encode(b"hello").decode())}, 400),
        ("remote url", "POST", j, None, {**good, "messages": _messages("x", image="http://example.com/a.png")}, 400),
        ("max_tokens 0", "POST", j, None, {**good, "max_tokens": 0}, 400),
        ("temperature str", "POST", j, None, {**good, "temperature": "hot"}, 400),
        ("n 99", "POST", j, None, {**good, "n": 99}, 400),
        ("stream", "POST", j, None, {**good, "stream": True}, 400),
        ("logprobs", "POST", j, None, {**good, "logprobs": True}, 400),
        ("bad role", "POST", j, None, {**good, "messages": [{"role": "robot", "content": "hi"}]}, 400),
        ("no messages", "POST", j, None, {"max_tokens": 3}, 400),
        ("prompt too long", "POST", j, None, {**good, "messages": _messages("x" * 5000)}, 400),
        ("no key", "POST", {"Content-Type": "application/json"}, None, good, 401),
        ("wrong key", "POST", {"Content-Type": "application/json", "Authorization": "Bearer sk-nope"}, None, good, 401),
        ("put", "PUT", j, None, good, 405),
        ("delete", "DELETE", j, None, {}, 405),
        ("unknown route", "POST", j, None, good, 404),
    ]
    return out


def _choices(body: dict) -> list:
    return [(c["message"]["content"], c["finish_reason"]) for c in body["choices"]]


def _usage(body: dict) -> tuple:
    return tuple(body["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens"))


@pytest.fixture(scope="module")
def server(tiny_vlm_dir):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    vlm = LocalVLM(tiny_vlm_dir, device="cpu")
    s = JudgeServer(("127.0.0.1", 0), vlm.generate, validate=vlm.check_request, model_name="tiny", max_batch=8,
                    max_wait=0.01, api_key=KEY).start()
    yield s
    s.close()
    torch.set_num_threads(threads)


def test_fuzz_and_load(server, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    rng = random.Random(0)
    goods = good_payloads()
    url = server.url + "/chat/completions"

    # One at a time first: the reference answers.
    with httpx.Client(timeout=60, headers=AUTH) as c:
        expected = []
        for p in goods:
            r = c.post(url, json=p)
            assert r.status_code == 200, r.text
            expected.append((_choices(r.json()), _usage(r.json())))
    batches_alone = server.batcher.batches

    # The mix: good x 12 (half via openai, half raw), bad x 4 (+ one 70 MB body), killed x 30.
    jobs = [("good", i, rng.random() < 0.5) for i in range(len(goods)) for _ in range(12)]
    jobs += [("bad", i, False) for i in range(len(bad_requests())) for _ in range(4)]
    jobs += [("huge", 0, False)]
    jobs += [("killed", i % len(goods), False) for i in range(30)]
    rng.shuffle(jobs)
    bads = bad_requests()
    huge = b"x" * (70 * 10**6)
    results = []

    async def main():
        oa = openai.AsyncOpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        sem = asyncio.Semaphore(48)
        async with httpx.AsyncClient(timeout=120, limits=limits) as raw, \
                httpx.AsyncClient(timeout=120, headers=AUTH) as killable:

            async def one(kind, i, use_openai):
                async with sem:
                    t0 = time.monotonic()
                    try:
                        if kind == "good" and use_openai:
                            p = dict(goods[i])
                            body = (await oa.chat.completions.create(**p)).model_dump()
                            results.append((kind, i, 200, body, time.monotonic() - t0))
                        elif kind == "good":
                            r = await raw.post(url, json=goods[i], headers=AUTH)
                            results.append((kind, i, r.status_code, r.json(), time.monotonic() - t0))
                        elif kind == "bad":
                            name, method, headers, content, payload, _ = bads[i]
                            path = url.replace("chat/completions", "nothing") if name == "unknown route" else url
                            r = await raw.request(method, path, headers=headers, content=content,
                                                  json=None if content is not None else payload)
                            results.append((kind, i, r.status_code, r.json(), time.monotonic() - t0))
                        elif kind == "huge":
                            r = await raw.post(url, content=huge, headers={"Content-Type": "application/json", **AUTH})
                            results.append((kind, i, r.status_code, r.json(), time.monotonic() - t0))
                        else:  # a client killed mid-request
                            p = {**goods[i], "max_tokens": 200}
                            try:
                                await asyncio.wait_for(killable.post(url, json=p), timeout=rng.uniform(0.01, 0.3))
                            except TimeoutError:
                                pass
                            results.append((kind, i, None, None, time.monotonic() - t0))
                    except (httpx.TransportError, openai.APIConnectionError) as e:
                        results.append((kind, i, "dropped", repr(e), time.monotonic() - t0))
                    except openai.APIStatusError as e:
                        results.append((kind, i, e.status_code, e.body, time.monotonic() - t0))

            await asyncio.gather(*(one(*job) for job in jobs))
        await oa.close()

    t0 = time.monotonic()
    asyncio.run(main())
    wall = time.monotonic() - t0

    dropped = [r for r in results if r[2] == "dropped"]
    assert not dropped, dropped[:5]
    five_hundreds = [(bads[i][0] if k == "bad" else k, s) for k, i, s, *_ in results if isinstance(s, int) and s >= 500]
    assert not five_hundreds, five_hundreds
    for kind, i, status, body, _ in results:
        if kind == "bad":
            assert status == bads[i][5], (bads[i][0], status, body)
            assert body["error"]["code"] == status and body["error"]["message"]
        elif kind == "huge":
            assert status == 413, body
    changed = [(i, _choices(body), expected[i][0]) for kind, i, status, body, _ in results
               if kind == "good" and (status != 200 or _choices(body) != expected[i][0]
                                      or _usage(body) != expected[i][1])]
    assert not changed, changed[:3]  # equal to one-at-a-time answers: no bad neighbour changed or failed one
    # Alive at the end, answering as before; the killed clients' rows were cancelled.
    with httpx.Client(timeout=60, headers=AUTH) as c:
        assert c.get(server.url.removesuffix("/v1") + "/health").json()["status"] == "ok"
        assert _choices(c.post(url, json=goods[0]).json()) == expected[0][0]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]  # nothing unhandled on the server side either
    good_latency = [r[4] for r in results if r[0] == "good"]
    report = {"requests": len(results), "good": len(good_latency), "bad": sum(r[0] in ("bad", "huge") for r in results),
              "killed": sum(r[0] == "killed" for r in results), "dropped": len(dropped), "5xx": len(five_hundreds),
              "changed": len(changed), "wall_s": round(wall, 1), "batches": server.batcher.batches - batches_alone,
              "cancelled_by_server": server.stats["cancelled"],
              "good_latency_p50_s": round(statistics.median(good_latency), 2),
              "good_latency_max_s": round(max(good_latency), 2)}
    print("\njudge server load test:", json.dumps(report))
    assert report["batches"] < len(good_latency)  # concurrent requests were batched
    assert report["cancelled_by_server"] > 0  # killed clients' requests were dropped or stopped
    assert wall < 60, report
