"""Plans: what a decomposition agent writes, and the strict parser that reads it.

A plan is a short list of steps, each an `(action, subject, goal)` triple, as in ImageEdit-R1:

    recolour | the small orange square in row 4, column 1 | yellow
    remove | the large red circle in row 2, column 3 | nothing

One step per line (or separated by `;`, for tokenizers that have no newline), fields separated by
`|`, an optional `1.` / `1)` numbering in front. The parser is strict on purpose: a plan that does
not follow the format is a *failure* with a named kind (`PlanError.kind`), counted by evaluations
and rewarded 0 by the format reward, never silently repaired. The only normalisation is of
spelling that carries no meaning: case, runs of whitespace, spaces before punctuation (what a
word-level tokenizer's decode inserts) and the American spelling `recolor`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from earl.errors import EarlError

# The actions a step may take. Domain-neutral verbs: a real-scale decomposer (a chat VLM) is asked
# for exactly these, and ShapesEdit's seven simple operations map one to one onto them.
ACTIONS = ("recolour", "add", "remove", "replace", "move", "resize", "background")
SPELLINGS = {"recolor": "recolour"}  # same word, other spelling; anything else is an unknown action
MAX_STEPS = 8  # a plan longer than this is refused (a looping decomposer must not cost 100 edits)

FAILURE_KINDS = ("empty", "malformed", "truncated", "unknown_action", "too_long", "unapplicable")


class PlanError(EarlError):
    """A plan that cannot be used; `kind` is one of FAILURE_KINDS, counted in evaluation results."""

    def __init__(self, kind: str, message: str):
        assert kind in FAILURE_KINDS, kind
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def normalise(text: str) -> str:
    """Lower case, single spaces, no space before `,` `.` `;` `:` and none around `-`, so that a plan
    decoded by a word-level tokenizer (`row 4 , column 1`, `the bottom - right corner`) reads as written."""
    text = " ".join(text.lower().split())
    text = re.sub(r"\s*-\s*", "-", text)
    return re.sub(r"\s+([,.;:])", r"\1", text).strip(" .")


@dataclass(frozen=True)
class Step:
    action: str  # one of ACTIONS
    subject: str  # what the step changes, named explicitly (e.g. "the small red circle in row 2, column 3")
    goal: str  # what it becomes (a colour, a shape, a size, a place; "nothing" for remove)

    def text(self) -> str:
        return f"{self.action} | {self.subject} | {self.goal}"

    def key(self) -> tuple[str, str, str]:
        """The normalised triple that F1 matching compares."""
        return (self.action, normalise(self.subject), normalise(self.goal))


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]

    def __len__(self) -> int:
        return len(self.steps)

    def text(self, separator: str = "\n") -> str:
        return separator.join(s.text() for s in self.steps)

    def to_dict(self) -> dict:
        return {"steps": [{"action": s.action, "subject": s.subject, "goal": s.goal} for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(tuple(Step(**s) for s in d["steps"]))


_NUMBERING = re.compile(r"^\s*(?:step\s*)?\d+\s*[.):]\s*")


def parse_plan(text: str, finished: bool = True, max_steps: int = MAX_STEPS) -> Plan:
    """Read a plan or raise `PlanError` naming what is wrong.

    `finished=False` says the writer stopped on its length budget rather than on its end token:
    the plan is then `truncated`, whatever it looks like (a cut plan can look complete).
    """
    if not finished:
        raise PlanError("truncated", "the decomposer hit its token budget before ending the plan")
    lines = [line for line in re.split(r"[\n;]", text or "") if line.strip()]
    if not lines:
        raise PlanError("empty", "the plan has no steps")
    if len(lines) > max_steps:
        raise PlanError("too_long", f"{len(lines)} steps, more than the limit of {max_steps}")
    steps = []
    for i, line in enumerate(lines, 1):
        fields = [f.strip() for f in _NUMBERING.sub("", line).split("|")]
        if len(fields) != 3 or not all(fields):
            what = f"step {i} {line.strip()!r} is not 'action | subject | goal'"
            raise PlanError("truncated" if i == len(lines) and len(fields) < 3 else "malformed", what)
        action = normalise(fields[0])
        action = SPELLINGS.get(action, action)
        if action not in ACTIONS:
            raise PlanError("unknown_action", f"step {i}: {fields[0]!r} is not one of {', '.join(ACTIONS)}")
        steps.append(Step(action, normalise(fields[1]), normalise(fields[2])))
    return Plan(tuple(steps))


def step_instruction(step: Step) -> str:
    """The simple instruction an editor gets for one step ("Make the red circle blue.")."""
    s, g = step.subject, step.goal
    text = {
        "recolour": f"make {s} {g}",
        "add": f"add {s} in {g}",
        "remove": f"remove {s}",
        "replace": f"replace {s} with a {g}",
        "move": f"move {s} {g}" if g.startswith("one cell ") else f"move {s} to {g}",
        "resize": f"make {s} {g}",
        "background": f"change the background to {g}",
    }[step.action]
    return text[:1].upper() + text[1:] + "."


def plan_f1(predicted: Plan | None, gold: Plan) -> float:
    """F1 of the predicted steps against the gold steps, as ImageEdit-R1 rewards a decomposition.

    Matching: a predicted step matches a gold step when all three fields are equal after
    `normalise` (exact triples; no partial credit per field), one to one (multiset intersection),
    ignoring order, since the sequencer owns order. An unparseable plan (None) scores 0.

    >>> g = Plan((Step("remove", "the red circle in row 1, column 1", "nothing"), Step("add", "a small red square", "row 2, column 2")))
    >>> plan_f1(Plan(g.steps[:1]), g)  # precision 1, recall 1/2
    0.6666666666666666
    """
    if predicted is None or not predicted.steps or not gold.steps:
        return 0.0
    matched = sum((Counter(s.key() for s in predicted.steps) & Counter(s.key() for s in gold.steps)).values())
    if matched == 0:
        return 0.0
    precision, recall = matched / len(predicted.steps), matched / len(gold.steps)
    return 2 * precision * recall / (precision + recall)
