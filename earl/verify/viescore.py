"""VIEScore-style zero-shot judging with a multimodal LLM, as EARL scores edits in RL.

Two queries per edit, each asking for two 0-10 scores in a fixed JSON reply:
  semantic   [source, edited] + instruction -> [edit success, over-editing]
             (over-editing is scored so that higher = less over-editing, i.e. better)
  perceptual [edited]                       -> [naturalness, artifacts]  (higher = better)
SC = min(semantic scores), PQ = min(perceptual scores) and overall = sqrt(SC * PQ), all 0-10
as in VIEScore and GEdit-Bench. The reward is overall / 10, which puts it in [0, 1] like the
oracle's reward, so recipes can swap verifiers without retuning anything scaled by the reward.

Replies are parsed by `parse_scores`, which accepts the JSON the prompt asks for and the usual
near-misses, and refuses anything it would have to guess at. A query whose reply does not parse
is asked again (see `chat_with_retries`); if it still fails, the edit's result is failed with
`reward=None`, never a default score.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import re
import time
from dataclasses import asdict, dataclass

from PIL import Image

from earl.errors import ConfigError, DataError
from earl.io import load_image
from earl.verify.base import EditRequest, RewardResult
from earl.verify.chat import ChatBackend, build_chat_backend, chat_with_retries

# ---------------------------------------------------------------------------------------------
# Prompts.

SYSTEM_PROMPT = """\
You are a careful, impartial rater of images made by AI image-editing software. You will be \
shown one or two images and asked for two scores on a 0 to 10 scale, following the rules given. \
Use the whole scale: 0 means the criterion is not met at all and 10 means it is met perfectly. \
Judge only what you can see in the images. Reply with a single JSON object and nothing else, \
in exactly this form:
{"score": [<first score>, <second score>], "reasoning": "<one or two short sentences>"}"""

SEMANTIC_PROMPT = """\
The first image is the ORIGINAL. The second image is the EDITED version, made from the original \
by an AI editor that was given this instruction:

Instruction: {instruction}

Give two scores from 0 to 10.
First score, edit success: how completely and correctly the edited image carries out the \
instruction. 0 = the instruction was not carried out at all; 10 = it was carried out fully and exactly.
Second score, over-editing: how well the edited image keeps everything the instruction did not \
ask to change. 0 = the edited image has little left of the original; 10 = only what the \
instruction asked for has changed, as a minimal edit of the original.
The two scores are independent: an edited image identical to the original scores 0 and 10.

Reply with only: {{"score": [<edit success>, <over-editing>], "reasoning": "..."}}"""

PERCEPTUAL_PROMPT = """\
The image was produced by an AI image editor. Judge only how it looks, not what it shows or \
whether it follows any instruction.

Give two scores from 0 to 10.
First score, naturalness: does the image look coherent and plausible for its kind, with \
consistent lighting, shadows, perspective and proportions? A clean flat drawing or diagram is \
natural if it is consistent. 0 = very unnatural; 10 = entirely natural.
Second score, artifacts: is the image free of distortions, smears, blur, noise, broken edges, \
garbled regions or watermarks? 0 = heavy artifacts everywhere; 10 = no artifacts.

Reply with only: {"score": [<naturalness>, <artifacts>], "reasoning": "..."}"""


def semantic_messages(source: Image.Image, edited: Image.Image, instruction: str) -> list[dict]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image", "image": source}, {"type": "image", "image": edited},
                                     {"type": "text", "text": SEMANTIC_PROMPT.format(instruction=instruction.strip())}]},
    ]


def perceptual_messages(edited: Image.Image) -> list[dict]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image", "image": edited}, {"type": "text", "text": PERCEPTUAL_PROMPT}]},
    ]


# ---------------------------------------------------------------------------------------------
# Parsing.

_NUM = r"[-+]?\d+(?:\.\d+)?"
_LIST = rf"{_NUM}(?:\s*,\s*{_NUM})*"
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)
# `score: [7, 8]`, `"scores" = 7, 8`, and the head of a truncated `{"score": [7, 8], "reasoning": "...`
_KEYED = re.compile(rf"""["']?\bscores?["']?\s*[:=]\s*(\[\s*{_LIST}\s*\]|{_LIST})""", re.I)
_BARE = re.compile(rf"^\s*\[?\s*({_LIST})\s*\]?\s*\.?\s*$")  # the whole reply is `7, 8` or `[7,8]`
_BRACKETED = re.compile(rf"\[\s*({_LIST})\s*\]")


def _check(values, n: int) -> list[float] | None:
    """`values` as n floats in [0, 10], or None (wrong type, wrong count, out of range)."""
    if not isinstance(values, list) or len(values) != n:
        return None
    out = []
    for v in values:
        if isinstance(v, str) and re.fullmatch(_NUM, v.strip()):
            v = float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 10:
            return None
        out.append(float(v))
    return out


def _json_objects(text: str):
    """Every JSON object in `text`: inside ``` fences first, then scanning from each '{'."""
    decoder = json.JSONDecoder()
    for chunk in [m.group(1) for m in _FENCE.finditer(text)] + [text]:
        for start in (m.start() for m in re.finditer(r"\{", chunk)):
            try:
                obj, _ = decoder.raw_decode(chunk, start)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                yield obj


def parse_scores(text: str, n: int = 2) -> list[float] | None:
    """The n scores (each 0-10) in a judge's reply, or None if they cannot be read without guessing.

    Accepted, in order of preference: a JSON object with "score" (or "scores") anywhere in the text,
    also inside ```json fences; a keyed list `score: [7, 8]` (which also rescues a reply cut off
    after the scores); a reply that is only the list, `7, 8` or `[7,8]`; a single bracketed list of
    numbers in prose. Wrong count or a value outside 0-10 gives None, even if another pattern in
    the text would match.

    >>> parse_scores('```json\\n{"score": [7, 8.5], "reasoning": "ok"}\\n```')
    [7.0, 8.5]
    >>> parse_scores('{"score": [7, 8], "reasoning": "the edit wa')
    [7.0, 8.0]
    >>> parse_scores("score: [7, 11]") is None
    True
    """
    if not isinstance(text, str) or not text.strip():
        return None
    for obj in _json_objects(text):
        keys = {k.lower(): k for k in obj if isinstance(k, str)}
        key = keys.get("score", keys.get("scores"))
        if key is not None:
            return _check(obj[key], n)
    numbers = lambda s: [float(x) for x in re.findall(_NUM, s)]  # noqa: E731
    m = _KEYED.search(text)
    if m:
        return _check(numbers(m.group(1)), n)
    m = _BARE.match(text)
    if m:
        return _check(numbers(m.group(1)), n)
    lists = _BRACKETED.findall(text)
    if len(lists) == 1:
        return _check(numbers(lists[0]), n)
    return None


# ---------------------------------------------------------------------------------------------
# The verifier.


@dataclass
class JudgeStats:
    requests: int = 0  # edits scored
    failed: int = 0  # edits whose result is failed
    queries: int = 0  # judge conversations (2 per edit)
    retries: int = 0  # extra attempts beyond the first, over all queries


class VIEScoreVerifier:
    """Score edits with a multimodal LLM judge behind any `ChatBackend`.

    concurrency: judge queries in flight at once (each edit makes two).
    retries / backoff: extra attempts per query and the base of the exponential wait between them.
    max_tokens / temperature: generation settings sent with every query (0 = greedy).
    Not thread-safe: call `score` from one thread at a time.
    """

    name = "viescore"

    def __init__(self, backend: ChatBackend, concurrency: int = 16, retries: int = 2, backoff: float = 1.0,
                 max_tokens: int = 512, temperature: float = 0.0):
        if not isinstance(backend, ChatBackend):
            raise ConfigError(f"viescore: backend must have async chat() and aclose(), got {type(backend).__name__}")
        if concurrency < 1 or retries < 0 or backoff < 0 or max_tokens < 1 or temperature < 0:
            raise ConfigError("viescore: need concurrency >= 1, retries >= 0, backoff >= 0, max_tokens >= 1 and "
                              f"temperature >= 0; got {concurrency}, {retries}, {backoff}, {max_tokens}, {temperature}")
        self.backend = backend
        self.concurrency, self.retries, self.backoff = concurrency, retries, backoff
        self.max_tokens, self.temperature = max_tokens, temperature
        self._stats = JudgeStats()

    @classmethod
    def from_options(cls, backend: str = "openai", base_url: str | None = None, model: str | None = None,
                     api_key: str | None = None, timeout: float = 120.0, model_path: str | None = None,
                     max_batch: int = 8, device: str | None = None, concurrency: int = 16, retries: int = 2,
                     backoff: float = 1.0, max_tokens: int = 512, temperature: float = 0.0) -> VIEScoreVerifier:
        """Build from flat options (what a recipe holds). backend "openai" uses base_url, model,
        api_key, timeout; backend "local" uses model_path, max_batch, device."""
        chat = build_chat_backend(backend, base_url=base_url, model=model, api_key=api_key, timeout=timeout,
                                  model_path=model_path, max_batch=max_batch, device=device,
                                  max_connections=concurrency)
        return cls(chat, concurrency=concurrency, retries=retries, backoff=backoff, max_tokens=max_tokens,
                   temperature=temperature)

    @property
    def stats(self) -> dict[str, int]:
        return asdict(self._stats)

    def score(self, requests: list[EditRequest]) -> list[RewardResult]:
        """Synchronous entry point; works with or without an event loop running in this thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ascore(requests))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # inside a loop (e.g. Jupyter): use a fresh one
            return pool.submit(asyncio.run, self.ascore(requests)).result()

    async def ascore(self, requests: list[EditRequest]) -> list[RewardResult]:
        for r in requests:
            if not isinstance(r, EditRequest):
                raise TypeError(f"expected EditRequest items, got {type(r).__name__}")
        sem = asyncio.Semaphore(self.concurrency)
        try:
            return list(await asyncio.gather(*(self._score_one(r, sem) for r in requests)))
        finally:
            await self.backend.aclose()

    async def _ask(self, messages: list[dict], sem: asyncio.Semaphore):
        async with sem:
            call = await chat_with_retries(self.backend, messages, parse_scores, max_tokens=self.max_tokens,
                                           temperature=self.temperature, retries=self.retries, backoff=self.backoff)
        self._stats.queries += 1
        self._stats.retries += call.attempts - 1
        return call

    async def _score_one(self, req: EditRequest, sem: asyncio.Semaphore) -> RewardResult:
        self._stats.requests += 1
        try:
            if not req.instruction or not req.instruction.strip():
                raise DataError("empty instruction")
            source = load_image(req.source, what="source image")
            edited = load_image(req.edited, what="edited image")
        except DataError as e:
            self._stats.failed += 1
            return RewardResult.failure(f"viescore: {e}")
        sem_call, per_call = await asyncio.gather(self._ask(semantic_messages(source, edited, req.instruction), sem),
                                                  self._ask(perceptual_messages(edited), sem))
        raw = f"[semantic]\n{sem_call.raw}\n[perceptual]\n{per_call.raw}"
        scores = {}
        if sem_call.value is not None:
            scores.update(edit_success=sem_call.value[0], over_editing=sem_call.value[1], sc=min(sem_call.value))
        if per_call.value is not None:
            scores.update(naturalness=per_call.value[0], artifacts=per_call.value[1], pq=min(per_call.value))
        errors = [f"{what} query: {c.error}" for what, c in (("semantic", sem_call), ("perceptual", per_call))
                  if c.value is None]
        if errors:
            self._stats.failed += 1
            return RewardResult.failure("; ".join(errors), raw=raw, scores=scores)
        scores["overall"] = math.sqrt(scores["sc"] * scores["pq"])
        return RewardResult(reward=scores["overall"] / 10.0, scores=scores, raw=raw)


def probe_failed_rate(verifier: VIEScoreVerifier, n: int = 64, size: int = 64) -> dict:
    """Fire `n` edits at once through `verifier` and report how many came back failed.

    A load check for a judge deployment: every request must be answered (scored or failed, never
    an exception or a hang). The edits are plain colour swaps, so a competent judge scores them.
    """
    colours = [(220, 40, 40), (40, 80, 220), (40, 170, 60), (240, 210, 40)]
    reqs = [EditRequest(Image.new("RGB", (size, size), colours[i % 4]), "Change the colour of the image to blue.",
                        Image.new("RGB", (size, size), colours[1]), {"id": f"probe-{i}"}) for i in range(n)]
    before = verifier.stats
    t0 = time.perf_counter()
    results = verifier.score(reqs)
    seconds = time.perf_counter() - t0
    failed = sum(r.failed for r in results)
    return {"n": n, "answered": len(results), "failed": failed, "failed_rate": failed / n if n else 0.0,
            "retries": verifier.stats["retries"] - before["retries"], "seconds": round(seconds, 3)}
