"""Judge transports: one small async interface, two implementations, one retry loop.

`ChatBackend.chat(messages, max_tokens, temperature) -> str` sends one conversation (internal
form, see `earl.verify.messages`) and returns the reply text, or raises `JudgeError` saying
whether trying again could help. Backends make a single attempt; retrying lives in one place,
`chat_with_retries`, because one reason to retry (a reply that does not parse) is only known to
the caller that parses it.

- `OpenAIChatBackend`: any OpenAI-compatible chat-completions server (vLLM, SGLang,
  `earl serve judge`), over httpx, with bounded concurrency and a per-request timeout.
- `LocalVLMBackend`: a transformers model in this process; concurrent calls are batched into
  one `generate` on a worker thread, so the event loop never blocks on the model.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from earl.errors import ConfigError, EarlError
from earl.verify.local_vlm import ChatRequest, LocalVLM, MicroBatcher
from earl.verify.messages import to_openai

log = logging.getLogger(__name__)


class JudgeError(EarlError):
    """One judge call failed. `retriable`: a timeout, a 5xx or 429, a dropped connection."""

    def __init__(self, message: str, retriable: bool):
        super().__init__(message)
        self.retriable = retriable


@runtime_checkable
class ChatBackend(Protocol):
    name: str

    async def chat(self, messages: list[dict], max_tokens: int, temperature: float) -> str: ...

    async def aclose(self) -> None:
        """Release per-event-loop resources (HTTP connections); the backend stays usable."""
        ...


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible servers.


def _env(*names: str) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


class OpenAIChatBackend:
    """Chat completions over HTTP. Settings fall back to the environment:

    base_url: EARL_JUDGE_BASE_URL, e.g. http://127.0.0.1:8000/v1 ("/v1" is appended if missing).
    model: EARL_JUDGE_MODEL; if neither is set, the first model the server lists at /v1/models.
    api_key: EARL_JUDGE_API_KEY, then EARL_API_KEY (what `earl serve judge` requires), then OPENAI_API_KEY;
        sent as `Authorization: Bearer <key>`, never logged or shown. A 401 is not retried.
    timeout: seconds per request (connect + wait for the whole reply).
    max_connections: requests in flight at once from this backend (an asyncio.Semaphore per loop).
    """

    name = "openai"

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0, max_connections: int = 32):
        base_url = base_url or _env("EARL_JUDGE_BASE_URL")
        if not base_url:
            raise ConfigError("OpenAI judge backend: no base_url; pass base_url=... or set EARL_JUDGE_BASE_URL "
                              "(e.g. http://127.0.0.1:8000/v1)")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"OpenAI judge backend: base_url must start with http:// or https://, got {base_url!r}")
        if timeout <= 0 or max_connections < 1:
            raise ConfigError(f"OpenAI judge backend: need timeout > 0 and max_connections >= 1, "
                              f"got {timeout} and {max_connections}")
        base_url = base_url.rstrip("/")
        self.base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
        self.model = model or _env("EARL_JUDGE_MODEL")
        self._api_key = api_key or _env("EARL_JUDGE_API_KEY", "EARL_API_KEY", "OPENAI_API_KEY")
        self.timeout, self.max_connections = timeout, max_connections
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"OpenAIChatBackend(base_url={self.base_url!r}, model={self.model!r}, api_key={key})"

    def _session(self):
        """The httpx client and semaphore of the running event loop (both are bound to one loop)."""
        import httpx

        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
            self._client = httpx.AsyncClient(headers=headers, timeout=self.timeout, limits=limits)
            self._sem, self._loop = asyncio.Semaphore(self.max_connections), loop
        return self._client, self._sem

    async def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        import httpx

        client, sem = self._session()
        url = self.base_url + path
        async with sem:
            try:
                resp = await client.request(method, url, json=payload)
            except httpx.TimeoutException:
                raise JudgeError(f"{url}: no reply within {self.timeout:g}s", retriable=True) from None
            except httpx.TransportError as e:
                raise JudgeError(f"{url}: connection failed ({type(e).__name__}: {e})", retriable=True) from None
        if resp.status_code != 200:
            retriable = resp.status_code == 429 or resp.status_code >= 500
            raise JudgeError(f"{url}: HTTP {resp.status_code}: {resp.text[:300]}", retriable=retriable)
        try:
            return resp.json()
        except ValueError:
            raise JudgeError(f"{url}: reply is not JSON: {resp.text[:200]!r}", retriable=True) from None

    async def _model_name(self) -> str:
        if self.model is None:
            listing = await self._request("GET", "/models")
            models = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)]
            if not models:
                raise JudgeError(f"{self.base_url}/models lists no models; set model= or EARL_JUDGE_MODEL", retriable=False)
            self.model = models[0]
            log.info("judge model: %s (first listed by %s)", self.model, self.base_url)
        return self.model

    async def chat(self, messages: list[dict], max_tokens: int, temperature: float) -> str:
        payload = {"model": await self._model_name(), "messages": to_openai(messages),
                   "max_tokens": max_tokens, "temperature": temperature}
        reply = await self._request("POST", "/chat/completions", payload)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"reply has no choices[0].message.content: {str(reply)[:200]}", retriable=True) from None
        return content or ""

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._client, self._sem, self._loop = None, None, None


# ---------------------------------------------------------------------------------------------
# A model in this process.


class LocalVLMBackend:
    """A local transformers image-text-to-text model (see `LocalVLM`); concurrent chats are batched.

    model_path: a local checkpoint directory (nothing is downloaded).
    max_batch / max_wait_ms: the batcher collects up to max_batch requests, waiting at most
        max_wait_ms after the first, and runs one `generate` for them.
    """

    name = "local"

    def __init__(self, model_path: str, max_batch: int = 8, max_wait_ms: float = 5.0, device: str | None = None,
                 dtype: str = "auto"):
        self.vlm = LocalVLM(model_path, device=device, dtype=dtype)
        self._batcher = MicroBatcher(self.vlm.generate, max_batch=max_batch, max_wait=max_wait_ms / 1000, name="judge")

    async def chat(self, messages: list[dict], max_tokens: int, temperature: float) -> str:
        fut = self._batcher.submit(ChatRequest(messages, max_tokens, temperature))
        try:
            return (await asyncio.wrap_future(fut)).text
        except Exception as e:  # a failure inside generate: the same input would fail again
            raise JudgeError(f"local judge model failed: {type(e).__name__}: {e}", retriable=False) from e

    async def aclose(self) -> None:
        """Nothing is bound to the event loop; `close()` stops the worker thread for good."""

    def close(self) -> None:
        self._batcher.close()


def build_chat_backend(backend: str = "openai", base_url: str | None = None, model: str | None = None,
                       api_key: str | None = None, timeout: float = 120.0, model_path: str | None = None,
                       max_batch: int = 8, device: str | None = None, max_connections: int = 16) -> ChatBackend:
    """A judge backend from flat options: "openai" (any OpenAI-compatible server: base_url, model,
    api_key, timeout; unset values come from the environment) or "local" (model_path, max_batch, device)."""
    if backend == "openai":
        return OpenAIChatBackend(base_url=base_url, model=model, api_key=api_key, timeout=timeout,
                                 max_connections=max_connections)
    if backend == "local":
        if not model_path:
            raise ConfigError("judge backend 'local' needs model_path (a local checkpoint directory)")
        return LocalVLMBackend(model_path, max_batch=max_batch, device=device)
    raise ConfigError(f"unknown judge backend {backend!r}; expected one of openai, local")


# ---------------------------------------------------------------------------------------------
# Retries.


@dataclass
class JudgeCall:
    """Outcome of `chat_with_retries`: the parsed value (None = failed), the last reply, what went wrong."""

    value: Any
    raw: str
    error: str | None
    attempts: int


async def chat_with_retries(backend: ChatBackend, messages: list[dict], parse: Callable[[str], Any], *,
                            max_tokens: int, temperature: float, retries: int, backoff: float,
                            max_backoff: float = 30.0) -> JudgeCall:
    """Ask until `parse(reply)` is not None, at most 1 + `retries` times.

    Retried: `JudgeError`s marked retriable (timeouts, 5xx, 429, dropped connections) and replies
    that do not parse; the wait before retry k (1-based) is min(backoff * 2**(k-1), max_backoff)
    seconds. Not retried: errors that would repeat (a 400, a 401, a local model crash). After the
    last attempt the call is failed: value None, with the last reply and error kept for the logs.
    """
    raw, error = "", None
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(min(backoff * 2 ** (attempt - 1), max_backoff))
        try:
            raw = await backend.chat(messages, max_tokens=max_tokens, temperature=temperature)
        except JudgeError as e:
            error = str(e)
            if not e.retriable:
                return JudgeCall(None, raw, error, attempt + 1)
            continue
        value = parse(raw)
        if value is not None:
            return JudgeCall(value, raw, None, attempt + 1)
        error = f"unparseable reply: {raw[:120]!r}"
    return JudgeCall(None, raw, f"{error} (after {retries + 1} attempts)", retries + 1)
