"""A local Hugging Face image-text-to-text model as a judge engine, with request batching.

`LocalVLM` loads any `AutoModelForImageTextToText` checkpoint with its `AutoProcessor` from a local
directory (`trust_remote_code=False`: only architectures transformers ships) and answers a batch
of chat requests with one `generate` call, each row with its own sampling parameters (temperature,
top_p, seed, max_tokens, stop strings) and its own cancellation flag: a row whose caller went away
stops at the next step, and a batch whose rows all stopped ends. The prompt comes from the
processor's own chat template, so each model gets its image markers and turn format.

`MicroBatcher` turns many concurrent single requests into batched calls: a worker thread takes
the first waiting request, collects more for up to `max_wait` seconds or until `max_batch`, runs
the batch function once and hands each caller its own result through a `concurrent.futures.Future`
(which asyncio code awaits with `asyncio.wrap_future`). Both the in-process judge backend and
`earl serve judge` use it; only the worker thread ever touches the model. With `isolate_failures`,
a batch that fails is run again one item at a time, so only an item that fails alone gets the error
(a request the engine chokes on cannot fail its batch-mates). A cancelled future's item is dropped
from its batch if the batch has not started.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from earl.errors import ConfigError, DataError
from earl.verify.messages import split_images

log = logging.getLogger(__name__)


@dataclass
class ChatRequest:
    """One completion to write (a request with n choices is n of these, seeds `seed`, `seed + 1`, ...)."""

    messages: list[dict]  # internal form (see earl.verify.messages)
    max_tokens: int
    temperature: float  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh random seed (sampled rows only)
    stop: tuple[str, ...] = ()  # the reply ends before the first of these (finish_reason "stop")
    cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)  # set: caller gone
    prepared: Any = field(default=None, repr=False, compare=False)  # an engine's `validate` may leave its work here


class RequestTooLong(DataError):
    """A request whose prompt and completion budget do not fit in the model's positions; `param` names
    the request field to change ("messages" when the prompt alone leaves no room, else "max_tokens")."""

    def __init__(self, prompt_tokens: int, max_tokens: int, limit: int):
        self.param = "messages" if prompt_tokens >= limit else "max_tokens"
        room = f"; lower max_tokens to at most {limit - prompt_tokens}" if self.param == "max_tokens" else ""
        super().__init__(f"the prompt is {prompt_tokens} tokens and the reply may take up to {max_tokens} more, "
                         f"{prompt_tokens + max_tokens} in all, but the model takes at most {limit} tokens{room}")


def check_fits(prompt_tokens: int, max_tokens: int, limit: int | None) -> None:
    """Raise `RequestTooLong` unless prompt + reply budget fit in `limit` positions (None: no limit known)."""
    if limit is not None and prompt_tokens + max_tokens > limit:
        raise RequestTooLong(prompt_tokens, max_tokens, limit)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn) | "length" (ran into max_tokens)


# ---------------------------------------------------------------------------------------------
# Batching.

_STOP = object()


class MicroBatcher:
    """Run `fn(list_of_items) -> list_of_results` on batches of concurrently submitted items."""

    def __init__(self, fn: Callable[[list], list], max_batch: int = 8, max_wait: float = 0.005, name: str = "batcher",
                 isolate_failures: bool = False):
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        self.fn, self.max_batch, self.max_wait, self.isolate_failures = fn, max_batch, max_wait, isolate_failures
        self.batches = 0  # batches run so far (a counter for tests and logs)
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"earl-{name}", daemon=True)
        self._thread.start()

    def submit(self, item) -> concurrent.futures.Future:
        if self._closed:
            raise RuntimeError("MicroBatcher is closed")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((item, fut))
        return fut

    def _collect(self, first) -> tuple[list, bool]:
        """The batch that starts with `first`, and whether a stop request was seen while collecting."""
        batch, deadline = [first], time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt is _STOP:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _run(self, batch: list) -> None:
        live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.fn([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        except Exception as e:  # every caller of the batch gets the error; the worker lives on
            self.batches += 1
            if self.isolate_failures and len(live) > 1:
                log.warning("batch of %d failed (%s: %s); running its items one at a time", len(live),
                            type(e).__name__, e)
                for one in live:
                    self._run_alone(*one)
                return
            log.exception("batch of %d failed", len(live))
            for _, fut in live:
                fut.set_exception(e)
            return
        self.batches += 1
        for (_, fut), res in zip(live, results):
            fut.set_result(res)

    def _run_alone(self, item, fut: concurrent.futures.Future) -> None:
        if fut.cancelled():
            return
        try:
            (res,) = self.fn([item])
        except Exception as e:
            log.exception("an item failed on its own")
            fut.set_exception(e)
            return
        finally:
            self.batches += 1
        fut.set_result(res)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._collect(first)
            self._run(batch)
            if stop:
                break
        self._fail_pending()

    def _fail_pending(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item[1].set_running_or_notify_cancel():
                item[1].set_exception(RuntimeError("MicroBatcher closed before this request ran"))

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop after the batch in progress; requests still queued fail with RuntimeError."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)


# ---------------------------------------------------------------------------------------------
# The model.


class LocalVLM:
    """An image-text-to-text model and its processor, loaded from a local directory."""

    def __init__(self, path: str | Path, device: str | None = None, dtype: str = "auto"):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: not a model directory (no config.json); expected a local "
                              "image-text-to-text checkpoint saved with save_pretrained")
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.path = path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=False)
            model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=False, dtype=dtype)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"{path}: cannot load an image-text-to-text model and processor ({e})") from None
        self.model = model.to(self.device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None or not getattr(self.processor, "chat_template", None):
            raise ConfigError(f"{path}: the processor needs a tokenizer and a chat template (chat_template.jinja)")
        self.tokenizer.padding_side = "left"  # batched generation appends after the prompt
        self._eos = self._eos_ids()
        cfg = getattr(model.config, "text_config", None) or model.config
        self.context_limit = getattr(cfg, "max_position_embeddings", None) or getattr(
            model.config, "max_position_embeddings", None)
        self._encode_lock = threading.Lock()  # a fast tokenizer must not encode on two threads at once

    def _encode(self, conversations: list[list[dict]]):
        texts, images = [], []
        for messages in conversations:
            hf_messages, imgs = split_images(messages)
            texts.append(self.processor.apply_chat_template(hf_messages, add_generation_prompt=True, tokenize=False))
            images.extend(imgs)
        with self._encode_lock:
            return self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")

    def check_request(self, request: ChatRequest) -> None:
        """Refuse (`RequestTooLong`) a request whose prompt and max_tokens exceed the model's positions;
        `earl serve judge` calls it before queueing, so such a request gets a 400, not a failed batch."""
        if self.context_limit is None:
            return
        prompt_tokens = int(self._encode([request.messages])["input_ids"].shape[1])
        check_fits(prompt_tokens, request.max_tokens, self.context_limit)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        """One completion per request, all rows in one `generate` call, each with its own sampling
        parameters, reply budget, stop strings and cancellation flag."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        enc = self._encode([r.messages for r in requests]).to(self.device)
        start = enc["input_ids"].shape[1]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self._eos), 0)
        stops = RowStops(requests, start, self.tokenizer)
        with torch.inference_mode():
            seqs = self.model.generate(
                **enc, max_new_tokens=max(r.max_tokens for r in requests), pad_token_id=pad, do_sample=False,
                logits_processor=LogitsProcessorList([RowSampler(requests)]),
                stopping_criteria=StoppingCriteriaList([stops]))
        prompt_lens = enc["attention_mask"].sum(1).tolist()
        return [self._completion(row[:length], int(n_prompt), r) for row, n_prompt, r, length in
                zip(seqs[:, start:].tolist(), prompt_lens, requests, stops.lengths)]

    def _completion(self, row: list[int], prompt_tokens: int, request: ChatRequest) -> Completion:
        end = next((k for k, t in enumerate(row) if t in self._eos), None)
        kept = row if end is None else row[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = stop_at(text, request.stop)
        if cut is not None:  # generation stopped on the token that completed the stop string
            return Completion(text[:cut], prompt_tokens, len(kept), "stop")
        return Completion(text, prompt_tokens, len(kept) + (end is not None), "length" if end is None else "stop")


def stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where `text` is cut for the first stop string it contains (None: it contains none)."""
    cuts = [k for k in (text.find(s) for s in stops if s) if k >= 0]
    return min(cuts) if cuts else None


def row_seed(seed: int | None) -> int:
    return secrets.randbits(63) if seed is None else seed % 2**63


class RowSampler:
    """A logits processor that samples each row with its own temperature, top_p and seeded generator.

    Used with `generate(do_sample=False)`: a sampled row's scores become 0 at the drawn token and -inf
    elsewhere, so the greedy pick is the draw; greedy rows (temperature 0) pass through untouched."""

    def __init__(self, requests: list[ChatRequest]):
        import torch

        self.requests = requests
        self.generators = [torch.Generator().manual_seed(row_seed(r.seed)) if r.temperature > 0 else None
                           for r in requests]

    def __call__(self, input_ids, scores):
        import torch

        if all(g is None for g in self.generators):
            return scores
        scores = scores.clone()
        for i, (r, g) in enumerate(zip(self.requests, self.generators)):
            if g is None:
                continue
            probs = torch.softmax(scores[i].float().cpu() / r.temperature, dim=-1)
            if r.top_p < 1.0:  # the smallest set of most likely tokens whose mass reaches top_p
                sorted_p, order = probs.sort(descending=True)
                drop = sorted_p.cumsum(0) - sorted_p >= r.top_p
                probs[order[drop]] = 0.0
            token = int(torch.multinomial(probs, 1, generator=g))
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


class RowStops:
    """A stopping criterion, row by row: its own max_tokens, its stop strings, or its caller gone."""

    def __init__(self, requests: list[ChatRequest], start: int, tokenizer):
        self.requests, self.start, self.tokenizer = requests, start, tokenizer
        self.lengths = [r.max_tokens for r in requests]  # tokens each row wrote before it stopped

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        n = input_ids.shape[1] - self.start
        done = []
        for i, r in enumerate(self.requests):
            stop = n >= r.max_tokens or r.cancel.is_set()
            if not stop and r.stop:
                text = self.tokenizer.decode(input_ids[i, self.start:].tolist(), skip_special_tokens=True)
                stop = stop_at(text, r.stop) is not None
            if stop and n < self.lengths[i]:
                self.lengths[i] = n
            done.append(stop)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
