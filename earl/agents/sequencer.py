"""Sequencing agents: put a plan's steps in the order the editor should apply them.

- `KeepOrder` (default): the decomposer's order. Decomposers are asked to write steps in order,
  and ShapesEdit's ground-truth plans are ordered (each subject is described on the scene its
  step applies to), so reordering them can only break them.
- `DependencyOrder`: rule-based. A step that puts something at a place (add, move to) goes after
  every step that empties that place (remove or move of the object named there); otherwise the
  decomposer's order is kept (a stable topological sort). A cycle is reported, not broken.
- `ChatSequencer`: a chat LLM asked for the order as a permutation (`2, 1, 3`); a reply that is not a
  permutation of the steps is a failure, reported, not repaired. Any OpenAI-compatible server
  (`from_options`: its URL and model, else $EARL_SEQUENCER_BASE_URL and $EARL_SEQUENCER_MODEL).

`SEQUENCERS` names them for `AgentOptions.sequencer` (`earl.agents.build`).
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass

from earl.agents.plan import Plan, normalise
from earl.errors import ConfigError
from earl.verify.chat import build_chat_backend, chat_with_retries

_PLACE = re.compile(r"(row \d+, column \d+|the (?:top|bottom)-(?:left|right) corner)")


@dataclass
class Ordering:
    plan: Plan | None
    error: str | None = None


class KeepOrder:
    name = "keep"

    def order(self, plans: list[Plan], instructions: list[str] | None = None) -> list[Ordering]:
        return [Ordering(p) for p in plans]


def _places(text: str) -> set[str]:
    return set(_PLACE.findall(normalise(text)))


class DependencyOrder:
    name = "dependency"

    def order(self, plans: list[Plan], instructions: list[str] | None = None) -> list[Ordering]:
        return [self._order(p) for p in plans]

    @staticmethod
    def _order(plan: Plan) -> Ordering:
        steps = list(plan.steps)
        frees = [(_places(s.subject) if s.action in ("remove", "move") else set()) for s in steps]
        fills = [(_places(s.goal) if s.action in ("add", "move") else set()) for s in steps]
        after = {j: {i for i in range(len(steps)) if i != j and fills[j] & frees[i]} for j in range(len(steps))}
        done: list[int] = []
        while len(done) < len(steps):
            ready = [j for j in range(len(steps)) if j not in done and after[j] <= set(done)]
            if not ready:
                return Ordering(None, error="the steps' places depend on each other in a cycle")
            done.append(ready[0])
        return Ordering(Plan(tuple(steps[j] for j in done)))


ORDER_PROMPT = """These edits will be applied one at a time, each to the result of the previous one.
Give the order in which to apply them so that each edit still makes sense when its turn comes.
Instruction they come from: {instruction}
Edits:
{steps}
Answer with the edit numbers in order, separated by commas (for example: 2, 1, 3), and nothing else."""


def parse_permutation(text: str, n: int) -> list[int] | None:
    """'2, 1, 3' -> [1, 0, 2] when it is a permutation of 1..n, else None."""
    nums = [int(x) for x in re.findall(r"\d+", text or "")]
    return [x - 1 for x in nums] if sorted(nums) == list(range(1, n + 1)) else None


class ChatSequencer:
    name = "chat"

    def __init__(self, backend, retries: int = 2, backoff: float = 1.0):
        self.backend, self.retries, self.backoff = backend, retries, backoff

    @classmethod
    def from_options(cls, base_url: str | None = None, model: str | None = None, timeout: float = 120.0,
                     **kw) -> ChatSequencer:
        """Over an OpenAI-compatible server: `base_url` and `model`, else $EARL_SEQUENCER_BASE_URL and
        $EARL_SEQUENCER_MODEL (no model: the first the server lists)."""
        base_url = base_url or os.environ.get("EARL_SEQUENCER_BASE_URL")
        if not base_url:
            raise ConfigError("sequencer 'chat': no server; give its base URL (AgentOptions.sequencer_base_url, "
                              "e.g. http://127.0.0.1:8000/v1) or set $EARL_SEQUENCER_BASE_URL")
        model = model or os.environ.get("EARL_SEQUENCER_MODEL")
        return cls(build_chat_backend("openai", base_url=base_url, model=model, timeout=timeout), **kw)

    def order(self, plans: list[Plan], instructions: list[str] | None = None) -> list[Ordering]:
        return asyncio.run(self._order(plans, instructions or [""] * len(plans)))

    async def _order(self, plans, instructions):
        async def one(plan: Plan, instruction: str) -> Ordering:
            if len(plan) < 2:
                return Ordering(plan)
            steps = "\n".join(f"{i}. {s.text()}" for i, s in enumerate(plan.steps, 1))
            messages = [{"role": "user", "content": ORDER_PROMPT.format(instruction=instruction, steps=steps)}]
            call = await chat_with_retries(self.backend, messages, lambda t: parse_permutation(t, len(plan)),
                                           max_tokens=32, temperature=0.0, retries=self.retries, backoff=self.backoff)
            if call.value is None:
                return Ordering(None, error=f"sequencer: {call.error}")
            return Ordering(Plan(tuple(plan.steps[i] for i in call.value)))

        return list(await asyncio.gather(*(one(p, i) for p, i in zip(plans, instructions))))


SEQUENCERS = {"keep": KeepOrder, "dependency": DependencyOrder, "chat": ChatSequencer}
