"""The ShapesEdit oracle as a verifier: exact, free and instant, for the synthetic domain.

It reads the edited image back into a scene and compares it with the target scene the request
carries in `meta` (see `earl.shapes.oracle.judge`). The reward, in [0, 1], is one of:
  "overall" (default): the oracle's sqrt(SC * PQ) / 10, a dense signal that gives partial credit
      for doing some of the required changes or drawing cleanly;
  "success": 1.0 when every principle passes, else 0.0 (the sparse exact-match reward);
  "sc": semantic consistency / 10 (ignores drawing quality).
Every result also carries sc, pq, overall (0-10) and success (0/1) as scores, and the principles.
"""

from __future__ import annotations

import json

from earl.errors import ConfigError, DataError
from earl.shapes.oracle import judge
from earl.shapes.scene import Scene
from earl.verify.base import EditRequest, RewardResult

REWARDS = ("overall", "success", "sc")


def scene_from_meta(meta: dict, key: str) -> Scene:
    """The scene stored under `key`: a `Scene`, its dict, or that dict as a JSON string."""
    if key not in meta:
        raise DataError(f"meta has no {key!r} (the oracle needs source_scene and target_scene)")
    value = meta[key]
    if isinstance(value, Scene):
        return value
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"meta[{key!r}]: not valid JSON ({e})") from None
    try:
        return Scene.from_dict(value)
    except DataError as e:
        raise DataError(f"meta[{key!r}]: {e}") from None


class OracleVerifier:
    """Verifier backed by the exact ShapesEdit oracle; `reward` picks the scalar (see module doc)."""

    name = "oracle"

    def __init__(self, reward: str = "overall"):
        if reward not in REWARDS:
            raise ConfigError(f"oracle verifier: unknown reward {reward!r}; expected one of {', '.join(REWARDS)}")
        self.reward = reward

    def score(self, requests: list[EditRequest]) -> list[RewardResult]:
        return [self._score_one(r) for r in requests]

    def _score_one(self, req: EditRequest) -> RewardResult:
        if not isinstance(req, EditRequest):
            raise TypeError(f"expected an EditRequest, got {type(req).__name__}")
        try:
            source, target = scene_from_meta(req.meta, "source_scene"), scene_from_meta(req.meta, "target_scene")
            j = judge(source, target, req.edited, req.instruction)
        except DataError as e:
            return RewardResult.failure(f"oracle: {e}")
        scores = {"sc": j.sc, "pq": j.pq, "overall": j.overall, "success": float(j.success)}
        reward = {"overall": j.overall / 10.0, "success": float(j.success), "sc": j.sc / 10.0}[self.reward]
        principles = [{"question": p.question, "category": p.category, "passed": p.passed, "reason": p.reason}
                      for p in j.principles]
        return RewardResult(reward=reward, scores=scores, principles=principles)
