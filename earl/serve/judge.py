"""`earl serve judge`: a local image-text-to-text model behind an OpenAI-compatible API.

The same wire format as vLLM and SGLang, so `OpenAIChatBackend` (and any OpenAI client) talks
to it unchanged; useful where those servers do not run (CPU, a laptop, CI) or for a model they
do not support. Standard library only: a `ThreadingHTTPServer` with one thread per connection,
all feeding one `MicroBatcher`, so concurrent requests that arrive within `max_wait` of each
other are answered by one batched `generate`.

Endpoints:
  POST /v1/chat/completions  messages whose content is a string or a list of parts
                             {"type": "text", "text"} / {"type": "image_url", "image_url": {"url":
                             "data:image/png;base64,..."}}; max_tokens (or max_completion_tokens),
                             temperature (0 = greedy), n. Streaming is not supported. The `model`
                             field is not checked: the server has one model and names it in replies.
  GET  /v1/models            the one served model.
  GET  /health               {"status": "ok", ...}.
Malformed requests get 400 with an OpenAI-style {"error": {"message", "type", "param", "code"}},
and so do requests the engine's `validate` refuses before they are queued: a prompt plus max_tokens
longer than the model's positions (param "messages", or "max_tokens" when lowering it would fit).
A failure inside generation gets 500 in the same shape.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from earl.errors import DataError, EarlError
from earl.verify.local_vlm import ChatRequest, Completion, LocalVLM, MicroBatcher
from earl.verify.messages import from_openai

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 2**20  # a request with a few large PNGs fits easily
MAX_N = 16


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _number(body: dict, key: str, default, kind, lo, hi):
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or not lo <= value <= hi:
        raise BadRequest(f"'{key}' must be {'a number' if kind is float else 'an integer'} in [{lo}, {hi}], got {value!r}",
                         key)
    return kind(value)


def parse_chat_request(body, max_tokens_limit: int) -> tuple[ChatRequest, int]:
    """A validated request body -> (the request, n); raises BadRequest naming the offending field."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if body.get("stream"):
        raise BadRequest("streaming is not supported; send stream=false", "stream")
    try:
        messages = from_openai(body.get("messages"))
    except DataError as e:
        raise BadRequest(str(e), "messages") from None
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, 256, int, 1, max_tokens_limit)
    temperature = _number(body, "temperature", 1.0, float, 0.0, 2.0)
    n = _number(body, "n", 1, int, 1, MAX_N)
    return ChatRequest(messages, max_tokens, temperature), n


class JudgeServer(ThreadingHTTPServer):
    """HTTP front end; `engine(list[ChatRequest]) -> list[Completion]` does the work, batched."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # listen backlog: a burst of clients must not see refused connections

    def __init__(self, address: tuple[str, int], engine: Callable[[list[ChatRequest]], list[Completion]],
                 model_name: str, max_batch: int = 8, max_wait: float = 0.005, request_timeout: float = 600.0,
                 max_tokens_limit: int = 4096, validate: Callable[[ChatRequest], None] | None = None):
        """`validate(request)` (default: the engine's `validate` attribute, if any) runs before a request is
        queued; a `DataError` it raises is a 400 naming its `param` (default "messages")."""
        super().__init__(address, _Handler)
        self.model_name, self.request_timeout, self.max_tokens_limit = model_name, request_timeout, max_tokens_limit
        self.validate = validate if validate is not None else getattr(engine, "validate", None)
        self.batcher = MicroBatcher(engine, max_batch=max_batch, max_wait=max_wait, name="judge-server")
        self.started = int(time.time())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> JudgeServer:
        """Serve on a daemon thread (for tests and notebooks); `close()` stops it."""
        self._thread = threading.Thread(target=self.serve_forever, name="earl-judge-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        self.batcher.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    server: JudgeServer

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its timeout)
            self.close_connection = True

    def _error(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": param, "code": status}})

    def do_GET(self):
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/health":
            self._send(200, {"status": "ok", "model": self.server.model_name})
        elif path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model",
                                                         "created": self.server.started, "owned_by": "earl"}]})
        else:
            self._error(404, f"no route GET {path}", "not_found_error")

    def _read_json(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise BadRequest("a Content-Length header is required")
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would be taken for the next request
            raise BadRequest(f"request body of {length} bytes exceeds the limit of {MAX_BODY_BYTES}")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON ({e})") from None

    def do_POST(self):
        path = urlsplit(self.path).path.rstrip("/")
        try:
            body = self._read_json()
            if path != "/v1/chat/completions":
                return self._error(404, f"no route POST {path}", "not_found_error")
            request, n = parse_chat_request(body, self.server.max_tokens_limit)
            if self.server.validate is not None:
                self.server.validate(request)
        except BadRequest as e:
            return self._error(400, str(e), "invalid_request_error", e.param)
        except DataError as e:  # the engine's own check: the request cannot be answered as asked
            return self._error(400, str(e), "invalid_request_error", getattr(e, "param", "messages"))
        futures = [self.server.batcher.submit(request) for _ in range(n)]
        try:
            completions = [f.result(timeout=self.server.request_timeout) for f in futures]
        except concurrent.futures.TimeoutError:
            return self._error(504, f"generation took longer than {self.server.request_timeout:g}s", "server_error")
        except Exception as e:
            log.warning("generation failed: %s: %s", type(e).__name__, e)
            return self._error(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
        completion_tokens = sum(c.completion_tokens for c in completions)
        prompt_tokens = completions[0].prompt_tokens
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.server.model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason, "logprobs": None} for i, c in enumerate(completions)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })


def serve_judge(model_dir: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
                max_wait_ms: float = 5.0, device: str | None = None) -> None:
    """Load the model in `model_dir` and serve it until interrupted (the `earl serve judge` command).

    A transformers image-text-to-text model is served as a chat model; an earl reasoning reward
    model (an editor directory from `earl train rrm-sft`) through `earl.rrm.serving.rrm_engine`.
    """
    from earl.rrm.serving import is_rrm_dir, rrm_engine

    if is_rrm_dir(model_dir):
        engine = rrm_engine(model_dir, device=device or "cpu")  # carries its own `validate`
        validate = None
    else:
        vlm = LocalVLM(model_dir, device=device)
        engine, validate = vlm.generate, vlm.check_request
    try:  # like vLLM, the model is named by the path it was given
        server = JudgeServer((host, port), engine, model_name=str(model_dir), max_batch=max_batch,
                             max_wait=max_wait_ms / 1000, validate=validate)
    except OSError as e:
        raise EarlError(f"cannot listen on {host}:{port} ({e})") from None
    print(f"serving {model_dir} on {server.url} (max batch {max_batch}); Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
