"""The verifier contract: a batch of edits in, one auditable reward per edit out.

A verifier is anything with a `name` and `score(requests) -> results` (one `RewardResult` per
`EditRequest`, same order). Judging can fail (a judge server times out, a model replies with
something that is not a score); a verifier never raises for that and never makes a score up: it
returns a result with `failed=True`, `reward=None` and the reason in `error`, so training can mask
the sample out of the loss and count it. Exceptions are for the caller's own mistakes (a bad
option, a request that is not an `EditRequest`).

Verifiers are chosen by name, as recipes do: `build_verifier("viescore", backend="openai", ...)`.
The registry maps a name to the dotted path of a factory, imported on first use, so picking the
oracle never imports an HTTP client and picking a judge never imports the ShapesEdit renderer.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from earl.errors import ConfigError


@dataclass
class EditRequest:
    """One edit to judge: the source image, the instruction and the model's edited image.

    `meta` carries whatever a verifier needs beyond the pixels: the ShapesEdit oracle reads the
    scenes under `source_scene` / `target_scene` (a `Scene`, its `to_dict()`, or that as a JSON
    string, as the dataset stores it); `id` names the sample in logs.
    """

    source: Image.Image
    instruction: str
    edited: Image.Image
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardResult:
    """A verifier's verdict on one edit.

    reward: the scalar in [0, 1] that RL uses; None when `failed`.
    scores: named sub-scores (e.g. sc, pq, overall on the 0-10 VIEScore scale), for logging.
    principles: per-question verdicts {question, category, passed, reason}, or None if the
        verifier does not judge by principles.
    raw: the judge's raw reply text ("" for verifiers that have none), so every reward can be audited.
    failed / error: the explicit failed state and its reason.
    """

    reward: float | None
    scores: dict[str, float] = field(default_factory=dict)
    principles: list[dict] | None = None
    raw: str = ""
    failed: bool = False
    error: str | None = None

    @classmethod
    def failure(cls, error: str, raw: str = "", scores: dict[str, float] | None = None) -> RewardResult:
        return cls(reward=None, scores=dict(scores or {}), principles=None, raw=raw, failed=True, error=error)

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Verifier(Protocol):
    name: str

    def score(self, requests: list[EditRequest]) -> list[RewardResult]:
        """One result per request, in order; a judge failure is a failed result, never an exception."""
        ...


# name -> "module:factory"; the factory takes keyword options and returns a Verifier.
VERIFIERS: dict[str, str] = {
    "oracle": "earl.verify.oracle:OracleVerifier",
    "viescore": "earl.verify.viescore:VIEScoreVerifier.from_options",
    "rrm": "earl.rrm.verifier:RRMVerifier",  # a reasoning reward model trained by `earl train rrm-sft`
    "learned": "earl.rrm.learned:LearnedRRMVerifier",  # the same, its principles written by a model (no answer)
    "scalar": "earl.rrm.scalar:ScalarVerifier",  # the holistic baseline of `earl train rm-scalar`
}


def _resolve(path: str):
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def build_verifier(name: str, **options) -> Verifier:
    """Build a registered verifier by name; unknown names and options fail with the valid choices.

    >>> build_verifier("oracle", reward="success").name
    'oracle'
    """
    if name not in VERIFIERS:
        raise ConfigError(f"unknown verifier {name!r}; expected one of {', '.join(VERIFIERS)}")
    factory = _resolve(VERIFIERS[name])
    params = inspect.signature(factory).parameters
    valid = [p for p, spec in params.items() if spec.kind in (spec.KEYWORD_ONLY, spec.POSITIONAL_OR_KEYWORD)]
    for key in options:
        if key not in valid:
            raise ConfigError(f"verifier {name!r}: unknown option {key!r}; valid options: {', '.join(valid) or 'none'}")
    return factory(**options)
