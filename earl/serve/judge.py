"""`earl serve judge`: a local image-text-to-text model behind an OpenAI-compatible API.

The same wire format as vLLM and SGLang, so `OpenAIChatBackend` (and any OpenAI client) talks
to it unchanged; useful where those servers do not run (CPU, a laptop, CI) or for a model they
do not support. FastAPI on uvicorn (what vLLM and SGLang run on): every request is read and
validated on its own, then its rows join one `MicroBatcher`, so concurrent requests that arrive
within `max_wait` of each other are answered by one batched engine call.

Endpoints:
  POST /v1/chat/completions  messages whose content is a string or a list of parts
                             {"type": "text", "text"} / {"type": "image_url", "image_url": {"url":
                             "data:image/png;base64,..."}}; max_tokens (or max_completion_tokens),
                             temperature (0 = greedy), top_p, n, seed, stop. Streaming is not
                             supported. The `model` field is not checked: the server has one model
                             and names it in replies.
  GET  /v1/models            the one served model.
  GET  /health               {"status": "ok", ...} (no key needed).

What the server guarantees:
- A request is validated completely before it joins a batch: the body (at most `max_body_bytes`,
  else 413), its JSON (nesting at most MAX_JSON_DEPTH, else 400), every field, every image (decoded,
  at most `max_image_pixels` each, checked from the header before decoding), and the engine's own
  `validate` (prompt length, the shape the engine reads). A request refused there gets 400 and never
  reaches the model, so it cannot fail its batch-mates. A batch that still fails is answered again
  one request at a time, so only the request that fails alone gets the 500.
- Each request's own max_tokens, temperature, top_p, n, seed and stop are honoured inside a shared
  batch (per-row sampling: a seeded request gets the same choices whatever shares its batch; choice j
  of a request with seed s is seeded s + j). Fields that would change the
  answer and are not implemented (logprobs, tools, response_format, penalties, logit_bias, ...) are
  400s naming the field when set to anything but their neutral value; they are never ignored.
- finish_reason is "length" when a choice ran into max_tokens, else "stop"; usage counts tokens.
- A client that disconnects (or times out) has its rows dropped from the queue, or stopped at the
  next decoding step if they are running.
- Every error, on every route and method (404, 405, 401, 413 included), is JSON in OpenAI's shape
  {"error": {"message", "type", "param", "code"}}.
- With an API key (`api_key=`, `--api-key` or $EARL_API_KEY) every /v1 route needs
  `Authorization: Bearer <key>` (401 otherwise), compared in constant time; the key is never logged.
- SIGINT/SIGTERM stop accepting connections, let in-flight requests finish (uvicorn's graceful
  shutdown), then the process exits normally; a second SIGINT forces the exit.
- It binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from earl.errors import DataError, EarlError
from earl.rrm.serving import is_rrm_dir, rrm_engine
from earl.verify.local_vlm import ChatRequest, Completion, LocalVLM, MicroBatcher, stop_at
from earl.verify.messages import MAX_IMAGE_PIXELS, from_openai

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 2**20  # a request with a few large PNGs fits easily
MAX_JSON_DEPTH = 64  # a chat request nests about 6 deep
MAX_N = 16
MAX_STOP = 4  # as OpenAI
API_KEY_ENV = "EARL_API_KEY"

# Fields that change the answer, which this server does not implement: allowed only at their neutral value.
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []), "functions": (None, []),
               "tool_choice": (None, "none", "auto"), "response_format": (None, {"type": "text"}),
               "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}),
               "best_of": (None, 1), "top_k": (None, 0, -1), "min_p": (None, 0, 0.0),
               "repetition_penalty": (None, 1, 1.0), "min_tokens": (None, 0), "echo": (None, False),
               "prediction": (None,), "audio": (None,), "modalities": (None, ["text"])}


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


def _number(body: dict, key: str, default, kind, lo, hi):
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or not lo <= value <= hi:
        raise BadRequest(f"'{key}' must be {'a number' if kind is float else 'an integer'} in [{lo}, {hi}], got {value!r}",
                         key)
    return kind(value)


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest(f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them", "stop")
    return tuple(stops)


def parse_chat_request(body, max_tokens_limit: int,
                       max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[ChatRequest, int]:
    """A validated request body -> (the request, n); raises BadRequest naming the offending field."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if body.get("stream"):
        raise BadRequest("streaming is not supported; send stream=false", "stream")
    for key, neutral in UNSUPPORTED.items():
        if key in body and not any(body[key] == v and type(body[key]) is type(v) or body[key] is v
                                   for v in neutral):
            raise BadRequest(f"'{key}' is not supported by this server (got {str(body[key])[:60]}); leave it out", key)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, min(256, max_tokens_limit), int, 1, max_tokens_limit)
    temperature = _number(body, "temperature", 1.0, float, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, float, 0.0, 1.0)
    if top_p <= 0:
        raise BadRequest("'top_p' must be above 0", "top_p")
    n = _number(body, "n", 1, int, 1, MAX_N)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(f"'seed' must be an integer, got {seed!r}", "seed")
    stop = _stop(body)
    try:
        messages = from_openai(body.get("messages"), max_pixels=max_pixels)
    except DataError as e:
        raise BadRequest(str(e), "messages") from None
    return ChatRequest(messages, max_tokens, temperature, top_p=top_p, seed=seed, stop=stop), n


def _check_depth(obj, limit: int) -> None:
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise BadRequest(f"the request body nests more than {limit} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, (dict, list)))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))


def load_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH):
    """A request body -> its JSON value; BadRequest if it is not JSON or nests deeper than `max_depth`."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"the request body nests more than {max_depth} levels deep") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON ({e})") from None
    _check_depth(body, max_depth)
    return body


def _error_body(status: int, message: str, kind: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 503: "server_error", 504: "server_error"}


class _Disconnected(Exception):
    pass


class JudgeServer:
    """HTTP front end; `engine(list[ChatRequest]) -> list[Completion]` does the work, batched.

    `validate(request)` (default: the engine's `validate` attribute, if any) runs before a request is
    queued; a `DataError` it raises is a 400 naming its `param` (default "messages"). `start()` serves on a thread (tests,
    notebooks), `serve_forever()` on this one until SIGINT/SIGTERM."""

    def __init__(self, address: tuple[str, int], engine: Callable[[list[ChatRequest]], list[Completion]],
                 model_name: str, max_batch: int = 8, max_wait: float = 0.005, request_timeout: float = 600.0,
                 max_tokens_limit: int = 4096, validate: Callable[[ChatRequest], None] | None = None,
                 api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 max_image_pixels: int = MAX_IMAGE_PIXELS, max_json_depth: int = MAX_JSON_DEPTH):
        self.engine, self.model_name, self.request_timeout = engine, model_name, request_timeout
        self.max_tokens_limit, self.max_body_bytes = max_tokens_limit, max_body_bytes
        self.max_image_pixels, self.max_json_depth = max_image_pixels, max_json_depth
        self.validate = validate if validate is not None else getattr(engine, "validate", None)
        self._api_key = api_key or None
        self.stats = {"requests": 0, "answered": 0, "refused": 0, "failed": 0, "cancelled": 0}
        self.started = int(time.time())
        host, port = address
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            raise
        self.server_address = self._sock.getsockname()[:2]
        self.batcher = MicroBatcher(engine, max_batch=max_batch, max_wait=max_wait, name="judge-server",
                                    isolate_failures=True)
        config = uvicorn.Config(self.app(), http="h11", ws="none", lifespan="off", log_config=None, log_level="warning",
                                access_log=False, timeout_keep_alive=75, backlog=2048,
                                timeout_graceful_shutdown=request_timeout + 5)
        self._server = _uvicorn_server()(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    # -- serving ---------------------------------------------------------------------------------

    def start(self) -> JudgeServer:
        """Serve on a daemon thread (for tests and notebooks); `close()` stops it."""
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="earl-judge-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise EarlError(f"the judge server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until SIGINT/SIGTERM, then drain in-flight requests and return."""
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._sock.close()
            self.batcher.close()

    def close(self) -> None:
        """Stop accepting, let in-flight requests finish, stop the batcher."""
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(self.request_timeout + 10)
            self._thread = None
        self._sock.close()
        self.batcher.close()

    # -- the application -------------------------------------------------------------------------

    def app(self) -> FastAPI:
        app = FastAPI(title="earl judge", openapi_url=None, docs_url=None, redoc_url=None)

        def error(status: int, message: str, param: str | None = None, kind: str | None = None, headers=None):
            return JSONResponse(_error_body(status, message, kind or ERROR_TYPES.get(status, "server_error"), param),
                                status_code=status, headers=headers)

        @app.exception_handler(HTTPException)
        async def http_error(request: Request, exc: HTTPException):  # 404, 405 and the like, as JSON
            message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
            if exc.status_code == 404:
                message = f"no route {request.method} {request.url.path}"
            elif exc.status_code == 405:
                message = f"method {request.method} is not allowed on {request.url.path}"
            return error(exc.status_code, message, headers=getattr(exc, "headers", None))

        @app.exception_handler(Exception)
        async def server_error(request: Request, exc: Exception):
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return error(500, f"internal error: {type(exc).__name__}")

        @app.get("/health")
        async def health():
            return {"status": "ok", "model": self.model_name}

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.started,
                                                "owned_by": "earl"}]}

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            self.stats["requests"] += 1
            try:
                rows = await self._read_request(request)
            except ClientDisconnect:  # gone while sending its body: nothing to answer
                self.stats["cancelled"] += 1
                return JSONResponse(_error_body(499, "client closed the request", "server_error"), status_code=499)
            except BadRequest as e:
                self.stats["refused"] += 1
                return error(e.status, str(e), e.param)
            try:
                completions = await self._answer(request, rows)
            except _Disconnected:
                self.stats["cancelled"] += 1
                log.info("client went away; its %d row(s) cancelled", len(rows))
                return JSONResponse(_error_body(499, "client closed the request", "server_error"), status_code=499)
            except TimeoutError:
                self.stats["failed"] += 1
                return error(504, f"generation took longer than {self.request_timeout:g}s")
            except _Closed:
                return error(503, "the server is shutting down")
            except Exception as e:
                self.stats["failed"] += 1
                log.warning("generation failed: %s: %s", type(e).__name__, e)
                return error(500, f"generation failed: {type(e).__name__}: {e}")
            self.stats["answered"] += 1
            return self._reply(rows[0], completions)

        app.add_middleware(_ApiKeyMiddleware, key=self._api_key)
        return app

    async def _read_body(self, request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            if not length.isdigit():
                raise BadRequest("invalid Content-Length header")
            raise BadRequest(f"request body of {length} bytes exceeds the limit of {self.max_body_bytes}",
                             status=413)  # uvicorn reads and drops the rest, so the connection stays usable
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BadRequest(f"request body exceeds the limit of {self.max_body_bytes} bytes", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, raw: bytes) -> list[ChatRequest]:
        """Everything a request needs before it may join a batch (runs on a worker thread)."""
        body = load_json(raw, self.max_json_depth)
        request, n = parse_chat_request(body, self.max_tokens_limit, max_pixels=self.max_image_pixels)
        if self.validate is not None:
            try:
                self.validate(request)
            except DataError as e:  # the engine's own check: the request cannot be answered as asked
                raise BadRequest(str(e), getattr(e, "param", "messages")) from None
            except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
                log.info("engine validate refused a request: %s: %s", type(e).__name__, e)
                raise BadRequest(f"the model cannot read this request ({type(e).__name__}: {e})", "messages") from None
        seeds = [None if request.seed is None else request.seed + i for i in range(n)]  # n different samples
        return [dataclasses.replace(request, seed=s) for s in seeds]  # one cancel flag, one prepared input

    async def _read_request(self, request: Request) -> list[ChatRequest]:
        raw = await self._read_body(request)
        return await run_in_threadpool(self._parse, raw)

    async def _answer(self, request, rows: list[ChatRequest]) -> list[Completion]:
        try:
            futures = [self.batcher.submit(r) for r in rows]
        except RuntimeError:
            raise _Closed() from None
        waiting = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        deadline = time.monotonic() + self.request_timeout
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=0.05)
                if done:
                    completions = waiting.result()
                    break
                if await request.is_disconnected():
                    raise _Disconnected()
                if time.monotonic() > deadline:
                    raise TimeoutError()
        finally:
            if not waiting.done():  # the caller is gone or gave up: drop queued rows, stop running ones
                rows[0].cancel.set()
                for f in futures:
                    f.cancel()
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await waiting
        return [_apply_stop(c, r) for c, r in zip(completions, rows)]

    def _reply(self, request: ChatRequest, completions: list[Completion]) -> dict:
        completion_tokens = sum(c.completion_tokens for c in completions)
        prompt_tokens = completions[0].prompt_tokens
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason, "logprobs": None} for i, c in enumerate(completions)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


class _Closed(Exception):
    pass


def _apply_stop(c: Completion, request: ChatRequest) -> Completion:
    """The stop strings, for an engine that does not apply them itself (earl's engines do)."""
    cut = stop_at(c.text, request.stop)
    return c if cut is None else dataclasses.replace(c, text=c.text[:cut], finish_reason="stop")


class _ApiKeyMiddleware:
    """vLLM's check: every /v1 route needs `Authorization: Bearer <key>`; constant-time compare."""

    def __init__(self, app, key: str | None):
        self.app = app
        self.expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send):
        if self.expected is not None and scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse(_error_body(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                                                    "authentication_error"), status_code=401,
                                        headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _uvicorn_server():
    class Server(uvicorn.Server):
        """uvicorn's server, but a signal ends `run` normally (after the graceful drain) instead of being
        raised again once it returns, so `earl serve judge` exits 0 after Ctrl-C or SIGTERM."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)
            if self._captured_signals:
                print("earl serve judge: stopped (in-flight requests were answered)", flush=True)

    return Server


def serve_judge(model_dir: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
                max_wait_ms: float = 5.0, device: str | None = None, api_key: str | None = None) -> None:
    """Load the model in `model_dir` and serve it until SIGINT/SIGTERM (the `earl serve judge` command).

    A transformers image-text-to-text model is served as a chat model; an earl reasoning reward
    model (an editor directory from `earl train rrm-sft`) through `earl.rrm.serving.rrm_engine`.
    `api_key` (default $EARL_API_KEY): required of clients as `Authorization: Bearer <key>`.
    """
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if is_rrm_dir(model_dir):
        engine = rrm_engine(model_dir, device=device or "cpu")  # carries its own `validate`
        validate = None
    else:
        vlm = LocalVLM(model_dir, device=device)
        engine, validate = vlm.generate, vlm.check_request
    try:  # like vLLM, the model is named by the path it was given
        server = JudgeServer((host, port), engine, model_name=str(model_dir), max_batch=max_batch,
                             max_wait=max_wait_ms / 1000, validate=validate, api_key=api_key)
    except OSError as e:
        raise EarlError(f"cannot listen on {host}:{port} ({e})") from None
    print(f"serving {model_dir} on {server.url} (max batch {max_batch}, API key "
          f"{'required' if api_key else 'not required'}); Ctrl-C to stop", flush=True)
    server.serve_forever()
