"""The reasoning reward model with no answer anywhere: principles written by a model, then verdicts.

`RRMVerifier` takes its ShapesEdit principles from the scene graphs of the source and the target
whenever a request carries them, which states the answer in the questions. `LearnedRRMVerifier` is
the same reward model (`model_path`, greedy verdicts, E[points] by default) whose principles come
from a `PrincipleWriter` (`earl.rrm.writer`) reading only the source image and the instruction; the
request's `meta` is never read. A request whose principles cannot be written fails, its failure kind
counted in `principle_failures`, never scored.
"""

from __future__ import annotations

from collections import Counter

from earl.rrm.principles import EvalPoint
from earl.rrm.verifier import RRMVerifier
from earl.rrm.writer import PrincipleCache, PrincipleFailure, UnifiedPrincipleWriter
from earl.verify.base import RewardResult

PRINCIPLES_FAILED = "principles:"  # how a request whose principles could not be written fails (its error's start)


class LearnedRRMVerifier(RRMVerifier):
    name = "learned"
    reads_answer = False  # the firewall's mark (`earl.agents.firewall`): it sees (source, instruction, edit) only

    def __init__(self, model_path: str, writer, expected_points: bool = True, max_new_tokens: int = 320,
                 batch_size: int = 16, device: str = "cpu"):
        super().__init__(model_path=model_path, expected_points=expected_points, principle_cache=None,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, device=device)
        self.writer = UnifiedPrincipleWriter.from_pretrained(writer) if isinstance(writer, str) else writer
        self.principle_failures: Counter = Counter()
        self._written: dict[str, list[EvalPoint] | PrincipleFailure] = {}

    def points_for(self, req) -> list[EvalPoint] | None:
        got = self._written[PrincipleCache.key(req.source, req.instruction)]
        return got if isinstance(got, list) else None

    def score(self, requests) -> list[RewardResult]:
        """Write the principles of every (source, instruction) not yet written (once each, so every
        candidate of a prompt is judged against the same points), then judge as `RRMVerifier` does."""
        keys = [PrincipleCache.key(r.source, r.instruction) for r in requests]
        todo = {k: r for k, r in zip(keys, requests) if k not in self._written}
        if todo:
            written = self.writer.write([r.source for r in todo.values()], [r.instruction for r in todo.values()])
            for k, w in zip(todo, written):
                self._written[k] = w
                if isinstance(w, PrincipleFailure):
                    self.principle_failures[w.kind] += 1
        out = super().score(requests)
        for i, k in enumerate(keys):
            if isinstance(w := self._written[k], PrincipleFailure):
                out[i] = RewardResult.failure(f"{PRINCIPLES_FAILED} {w.kind} ({w.detail})", raw=w.raw)
        return out
