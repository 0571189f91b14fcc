"""Decomposition agents: (source image, instruction) -> plan of `(action, subject, goal)` steps.

A `Decomposer` takes a batch of `DecomposeRequest`s and returns one `Decomposition` each: the
parsed plan, the raw text it came from, and on failure the failure's kind (`earl.agents.plan`:
empty, malformed, truncated, unknown_action, too_long; `error` for a decomposer that could not be
reached). Decomposers never raise for a bad plan or a dead server: a failure is a result, counted
by evaluations, exactly as verifiers treat failed judgements.

- `GroundTruthDecomposer`: the sample's own program as a plan (ShapesEdit), the reference.
- `ScriptedDecomposer`: fixed replies, for tests and for plans written by hand.
- `ChatDecomposer`: any chat VLM, over an OpenAI-compatible server (vLLM, SGLang, GPT-4.1) or a
  local transformers model (`earl.verify.chat` backends), asked for the triple format.
- `UnifiedDecomposer` (`earl.agents.unified`): earl's own model, trained with trl.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from earl.agents.plan import ACTIONS, MAX_STEPS, Plan, PlanError, parse_plan
from earl.agents.shapes import program_plan
from earl.errors import EarlError
from earl.seeds import sample_seed
from earl.shapes.program import EditProgram
from earl.shapes.scene import Scene
from earl.verify.chat import build_chat_backend, chat_with_retries


@dataclass
class DecomposeRequest:
    image: Image.Image
    instruction: str
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. the ShapesEdit scenes and program


@dataclass
class Decomposition:
    plan: Plan | None  # None when the decomposition failed
    raw: str = ""  # the text the plan was read from (or why there is none)
    failure: str | None = None  # a PlanError kind, or "error" (the decomposer itself failed)
    error: str | None = None

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict() if self.plan else None, "raw": self.raw, "failure": self.failure,
                "error": self.error}


def read_plan(text: str, finished: bool = True, max_steps: int = MAX_STEPS) -> Decomposition:
    """Parse a decomposer's text into a `Decomposition` (a failure, never an exception)."""
    try:
        return Decomposition(parse_plan(text, finished=finished, max_steps=max_steps), raw=text)
    except PlanError as e:
        return Decomposition(None, raw=text, failure=e.kind, error=str(e))


@runtime_checkable
class Decomposer(Protocol):
    name: str

    def decompose(self, requests: list[DecomposeRequest]) -> list[Decomposition]: ...


class GroundTruthDecomposer:
    """The plan the sample was generated from (ShapesEdit `program` + `source_scene` in `meta`)."""

    name = "ground_truth"

    def decompose(self, requests: list[DecomposeRequest]) -> list[Decomposition]:
        out = []
        for r in requests:
            if "program" not in r.meta or "source_scene" not in r.meta:
                raise EarlError("the ground-truth decomposer needs ShapesEdit samples (meta with program and source_scene)")
            scene, program = (json.loads(v) if isinstance(v, str) else v for v in (r.meta["source_scene"], r.meta["program"]))
            plan = program_plan(Scene.from_dict(scene), EditProgram.from_dict(program))
            out.append(Decomposition(plan, raw=plan.text()))
        return out


class ScriptedDecomposer:
    """Replies fixed in advance: a list (one per call, in order), or a function of the request."""

    name = "scripted"

    def __init__(self, replies: Sequence[str] | Callable[[DecomposeRequest], str]):
        self._replies = replies if callable(replies) else iter(list(replies))

    def decompose(self, requests: list[DecomposeRequest]) -> list[Decomposition]:
        if callable(self._replies):
            return [read_plan(self._replies(r)) for r in requests]
        return [read_plan(next(self._replies)) for _ in requests]


# The request a chat VLM gets. Written for this project; the ImageEdit-R1 paper's own prompt is not copied.
DECOMPOSE_PROMPT = """You plan image edits for an editing model that can only apply one simple edit at a time.
Read the image and the instruction below, and rewrite the instruction as a list of simple edits.
Write one edit per line, as: action | subject | goal
- action is one of: {actions}
- subject names the one thing to change, resolved on the image (no "the shape left of...", no "every ..."):
  describe it so that exactly one object in the image fits
- goal is what it becomes: a colour, a shape, a size, a place, "nothing" for remove; for add, the subject is
  the new object and the goal is where it goes
Write only the lines, in the order they should be applied, at most {max_steps} of them.

Instruction: {instruction}"""


def decompose_messages(image: Image.Image, instruction: str, max_steps: int = MAX_STEPS) -> list[dict]:
    text = DECOMPOSE_PROMPT.format(actions=", ".join(ACTIONS), max_steps=max_steps, instruction=instruction)
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


class ChatDecomposer:
    """A chat VLM as the decomposer. A reply that does not parse is retried (`retries`), then a failure;
    a server that times out or answers 5xx is retried, then the decomposition fails with kind "error"."""

    name = "chat"

    def __init__(self, backend, max_tokens: int = 256, temperature: float = 0.0, retries: int = 2,
                 backoff: float = 1.0, max_steps: int = MAX_STEPS):
        self.backend, self.max_tokens, self.temperature = backend, max_tokens, temperature
        self.retries, self.backoff, self.max_steps = retries, backoff, max_steps

    @classmethod
    def from_options(cls, backend: str = "openai", base_url: str | None = None, model: str | None = None,
                     model_path: str | None = None, timeout: float = 120.0, **kw) -> ChatDecomposer:
        return cls(build_chat_backend(backend, base_url=base_url, model=model, model_path=model_path, timeout=timeout), **kw)

    def decompose(self, requests: list[DecomposeRequest]) -> list[Decomposition]:
        return asyncio.run(self._decompose(requests))

    async def _decompose(self, requests):
        def parse(reply: str):
            d = read_plan(reply, max_steps=self.max_steps)
            return d if d.plan is not None else None

        calls = await asyncio.gather(*(
            chat_with_retries(self.backend, decompose_messages(r.image, r.instruction, self.max_steps), parse,
                              max_tokens=self.max_tokens, temperature=self.temperature, retries=self.retries,
                              backoff=self.backoff) for r in requests))
        out = []
        for call in calls:
            if call.value is not None:
                out.append(call.value)
            elif call.raw:  # the model answered, but not with a plan: keep the plan's own failure kind
                out.append(read_plan(call.raw, max_steps=self.max_steps))
            else:
                out.append(Decomposition(None, raw="", failure="error", error=call.error))
        return out


@runtime_checkable
class SamplingDecomposer(Protocol):
    """A decomposer that can also draw several plans per request at a temperature (`UnifiedDecomposer`)."""

    def sample(self, requests: list[DecomposeRequest], n: int, temperature: float,
               seeds: list[int]) -> list[list[Decomposition]]: ...


def plan_vote_key(plan: Plan) -> tuple:
    """What two plans must share to count as the same vote: their steps' normalised triples as a
    multiset (the order is the sequencer's business, as in F1 matching)."""
    return tuple(sorted(s.key() for s in plan.steps))


class VotingDecomposer:
    """Self-consistency over plans: the greedy plan and `votes` sampled ones, and the plan written most
    often wins (ties go to the greedy plan's group, then to the earliest sample). Still open loop: no
    image is edited or judged to choose; the cost is `votes` extra decodings of a short text.

    Why: the decomposer's wrong plans are mostly misread subjects and goals, and a misreading that is
    not the model's mode tends to differ from sample to sample, while the right plan recurs.
    Failed samples (unparseable) do not vote; when every candidate fails, the greedy failure is returned.
    Each request's samples come from a seed of (`seed`, request id), so a result never depends on
    which other requests share its batch (resumed evaluations write the same plans)."""

    def __init__(self, base: SamplingDecomposer, votes: int = 8, temperature: float = 1.0, seed: int = 0):
        if votes < 1:
            raise EarlError(f"votes must be >= 1, got {votes}")
        if temperature <= 0:
            raise EarlError(f"plan voting samples plans: temperature must be > 0, got {temperature}")
        if not isinstance(base, SamplingDecomposer):
            raise EarlError(f"{type(base).__name__} cannot sample plans, so it cannot vote")
        self.base, self.votes, self.temperature, self.seed = base, votes, temperature, seed
        self.name = f"{getattr(base, 'name', 'decomposer')}+vote{votes}"

    def decompose(self, requests: list[DecomposeRequest]) -> list[Decomposition]:
        return [ranked[0] for ranked in self.candidates(requests)]

    def candidates(self, requests: list[DecomposeRequest]) -> list[list[Decomposition]]:
        """Per request, its distinct plans, most-voted first (`rank`)."""
        greedy = self.base.decompose(requests)
        samples = self.base.sample(requests, self.votes, self.temperature, self.sample_seeds(requests))
        return [self.rank(g, s, r) for g, s, r in zip(greedy, samples, requests)]

    def sample_seeds(self, requests: list[DecomposeRequest]) -> list[int]:
        """One seed per request, from (`seed`, request id)."""
        return [sample_seed(self.seed, r.meta.get("id", i)) for i, r in enumerate(requests)]

    def rank(self, greedy: Decomposition, samples: list[Decomposition], request: DecomposeRequest) -> list[Decomposition]:
        """A request's distinct plans, most-written first (`rank_plans`)."""
        return rank_plans(greedy, samples)


def rank_plans(greedy: Decomposition, samples: list[Decomposition]) -> list[Decomposition]:
    """The distinct plans among `greedy` and `samples`, most-written first; ties go to the greedy plan's
    group, then to the earliest sample. Unparseable ones do not count; if all are, `[greedy]`.

    >>> a, b = read_plan("remove | the red circle | nothing"), read_plan("remove | the blue circle | nothing")
    >>> [d.plan == b.plan for d in rank_plans(a, [b, b, a, read_plan("oops")])]  # 2 votes each: greedy's first
    [False, True]
    >>> rank_plans(a, [b, b, b])[0].plan == b.plan
    True
    """
    groups: dict[tuple, list[Decomposition]] = {}
    for d in [greedy, *samples]:
        if d.plan is not None:
            groups.setdefault(plan_vote_key(d.plan), []).append(d)
    if not groups:
        return [greedy]
    # sorted() is stable and dicts keep insertion order, so equal counts keep the greedy group first
    return [g[0] for g in sorted(groups.values(), key=len, reverse=True)]
