"""`RRMVerifier`, the `rrm` backend of `earl.verify`: rewards from a reasoning reward model.

It judges edits with earl's own model in process, with any OpenAI-compatible server (`earl serve
judge`, vLLM), or with a transformers VLM: points from the ShapesEdit oracle when the request carries
scene graphs (each cached per source and instruction), else from a multimodal LLM; greedy verdicts
(or Avg@k, or a logit readout: `earl.rrm.scoring`), then `parse_trace`; a reply that does not parse
is a failure (masked and counted), never a zero.
"""

from __future__ import annotations

import asyncio

import torch

from earl.errors import ConfigError
from earl.model import UnifiedEditor
from earl.rrm.chat import rrm_messages
from earl.rrm.principles import EvalPoint, PrincipleCache, llm_points, shapes_points
from earl.rrm.scoring import generate_verdicts, sample_verdicts
from earl.rrm.trace import parse_trace
from earl.seeds import derive_seed
from earl.verify.base import RewardResult
from earl.verify.chat import build_chat_backend, chat_with_retries
from earl.verify.oracle import scene_from_meta


class RRMVerifier:
    """Rewards from a reasoning reward model, one of three ways:

    - `model_path`: earl's own unified token model (written by `earl train rrm-sft` / `rrm-gcpo`), in process;
    - `base_url` (+ `model`): any OpenAI-compatible server: `earl serve judge --model RRM_DIR`, or vLLM
      serving a Qwen2.5-VL-style model (the real-scale case);
    - `vlm_path`: a transformers image-text-to-text checkpoint from a local directory, in process.

    Principles: from the ShapesEdit oracle when the request carries scene graphs; otherwise from a
    multimodal LLM (`principles_base_url` + `principles_model`, or else the verdict backend itself
    when that is a chat model), cached per (source image, instruction) under `principle_cache`, so
    every candidate of a prompt is judged against the same 10 points. A request whose principles
    cannot be had fails (counted), like a reply that does not parse.

    `samples` = k > 1 gives Avg@k self-consistency (earl's model only): the reward is the mean score of
    the k sampled traces that parse, which breaks the ties a greedy verdict leaves between candidates;
    the edit fails only when none of the k parses.

    `expected_score` (earl's model, greedy): the reward is the greedy trace's score read as the
    expectation of the integer after `<score>` (`score_expectation`): it breaks the same ties at the
    cost of one greedy trace, not k sampled ones. The trace must still parse. `expected_points`: the
    same with E[points], 10 x the mean P(yes) at its verdict words (`point_expectation`), which ranks
    pairs better than E[score] on ShapesEdit (docs/REWARD_MODELS.md) but ignores deductions beyond the
    points.
    """

    name = "rrm"

    def __init__(self, model_path: str | None = None, max_new_tokens: int = 320, batch_size: int = 16,
                 samples: int = 1, temperature: float = 1.0, seed: int = 0,
                 device: str = "cpu", base_url: str | None = None, model: str | None = None,
                 vlm_path: str | None = None, concurrency: int = 16, retries: int = 2, timeout: float = 120.0,
                 principles_base_url: str | None = None, principles_model: str | None = None,
                 principle_cache: str | None = "runs/principles", expected_score: bool = False,
                 expected_points: bool = False):
        if sum(x is not None for x in (model_path, base_url, vlm_path)) != 1:
            raise ConfigError("rrm verifier: give exactly one of model_path (earl's model, in process), base_url "
                              "(a server) or vlm_path (a transformers image-text-to-text model, in process)")
        if samples < 1 or (samples > 1 and temperature <= 0):
            raise ConfigError(f"rrm verifier: samples must be >= 1 and temperature > 0 when sampling, got samples="
                              f"{samples}, temperature={temperature}")
        if samples > 1 and model_path is None:
            raise ConfigError("rrm verifier: samples > 1 (Avg@k) is built for earl's own model (model_path); a "
                              "server or a transformers VLM is judged greedily")
        if expected_score and expected_points:
            raise ConfigError("rrm verifier: give at most one of expected_score and expected_points (one readout)")
        readout = "expected_score" if expected_score else "expected_points" if expected_points else None
        if readout and (model_path is None or samples > 1):
            raise ConfigError(f"rrm verifier: {readout} reads the logits of earl's own model (model_path) on a "
                              "greedy trace; it does not combine with a server, a transformers VLM or samples > 1")
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.samples, self.temperature, self.readout = samples, temperature, readout
        self.generator = torch.Generator().manual_seed(seed)  # one stream for the verifier's life: calls differ
        self.editor = self.backend = None
        if model_path is not None:
            self.editor = UnifiedEditor.from_pretrained(model_path, device=device)
        elif base_url is not None:
            self.backend = build_chat_backend("openai", base_url=base_url, model=model, timeout=timeout,
                                              max_connections=concurrency)
        else:
            self.backend = build_chat_backend("local", model_path=vlm_path, max_batch=batch_size, device=device)
        self.principles_backend = self.backend
        if principles_base_url is not None:
            self.principles_backend = build_chat_backend("openai", base_url=principles_base_url, model=principles_model,
                                                         timeout=timeout, max_connections=concurrency)
        self.principle_cache = PrincipleCache(principle_cache) if principle_cache else None
        self.concurrency, self.retries = concurrency, retries

    def points_for(self, req) -> list[EvalPoint] | None:
        """The request's principles; None when the LLM decomposition failed on every try."""
        meta = req.meta or {}
        if meta.get("source_scene") and meta.get("target_scene"):
            seed = derive_seed(meta.get("id", ""), req.instruction, sep="|", bits=32)
            return shapes_points(scene_from_meta(meta, "source_scene"), scene_from_meta(meta, "target_scene"), seed=seed)
        if self.principles_backend is None:
            raise ConfigError("rrm verifier: this request has no ShapesEdit scene graphs, so its principles must "
                              "come from a multimodal LLM: set principles_base_url (and principles_model)")
        return llm_points(self.principles_backend, req.source, req.instruction, self.principle_cache,
                          retries=self.retries)

    def judge(self, instructions, points, source_images, edited_images) -> list[list[str]]:
        """`samples` verdict texts per edit (one when greedy)."""
        return self._judge(instructions, points, source_images, edited_images)[0]

    def _judge(self, instructions, points, source_images, edited_images):
        """(verdict texts per edit, each greedy trace's E[score] or E[points], or None without a readout)."""
        if self.backend is not None:
            return [[t] for t in self._judge_http(instructions, points, source_images, edited_images)], None
        ed = self.editor
        src = ed.encode_images([ed.preprocess(im)[0] for im in source_images])
        out_codes = ed.encode_images([ed.preprocess(im)[0] for im in edited_images])
        if self.readout:
            texts, values = generate_verdicts(ed, instructions, points, src, out_codes, self.max_new_tokens,
                                              self.batch_size, readouts=(self.readout,))
            return [[t] for t in texts], values[self.readout]
        if self.samples == 1:
            return [[t] for t in generate_verdicts(ed, instructions, points, src, out_codes, self.max_new_tokens,
                                                   self.batch_size)], None
        return sample_verdicts(ed, instructions, points, src, out_codes, self.samples, self.temperature,
                               self.max_new_tokens, self.batch_size * self.samples, self.generator), None

    def _judge_http(self, instructions, points, source_images, edited_images) -> list[str]:
        async def run():
            sem = asyncio.Semaphore(self.concurrency)

            async def one(args):
                n = len(args[1])
                async with sem:
                    call = await chat_with_retries(
                        self.backend, rrm_messages(args[2], args[3], args[0], args[1]),
                        lambda t: t if parse_trace(t, n) is not None else None,
                        max_tokens=self.max_new_tokens, temperature=0.0, retries=self.retries, backoff=0.5)
                    return call.raw

            try:
                return await asyncio.gather(*(one(a) for a in zip(instructions, points, source_images, edited_images)))
            finally:
                await self.backend.aclose()

        return list(asyncio.run(run()))

    def score(self, requests):
        points = [self.points_for(r) for r in requests]
        ok = [i for i, p in enumerate(points) if p is not None]
        if not ok:  # nothing to judge (an empty batch, or no principles anywhere): no model call
            return [RewardResult.failure("no principles: the decomposition failed on every try") for _ in points]
        judged, expectations = self._judge([requests[i].instruction for i in ok], [points[i] for i in ok],
                                           [requests[i].source for i in ok], [requests[i].edited for i in ok])
        texts = dict(zip(ok, judged))
        expected = dict(zip(ok, expectations)) if expectations is not None else {}
        out = []
        for i, pts in enumerate(points):
            if pts is None:
                out.append(RewardResult.failure("no principles: the decomposition failed on every try"))
                continue
            parsed = [(t, v) for t in texts[i] if (v := parse_trace(t, len(pts))) is not None]
            if not parsed:
                out.append(RewardResult.failure("unparseable verdicts" + (f" (all {len(texts[i])} samples)"
                                                                          if len(texts[i]) > 1 else ""),
                                                raw=texts[i][0]))
                continue
            text, v = parsed[0]  # the first parsed trace stands for the edit's principles and raw reply
            if self.readout and expected.get(i) is None:  # parsed, yet the readout's words are not where expected
                out.append(RewardResult.failure(f"{self.readout}: not readable from the trace's logits", raw=text))
                continue
            score = sum(pv.score for _, pv in parsed) / len(parsed)
            scores = {"score": score, "point_average": sum(pv.point_average for _, pv in parsed) / len(parsed)}
            if self.readout:
                scores["written_score"], score = score, expected[i]
                scores["score"] = score
            if len(texts[i]) > 1:
                scores["parsed_samples"] = float(len(parsed))
            out.append(RewardResult(reward=score / 10.0, scores=scores,
                                    principles=[{"question": p.question, "category": p.category, "passed": ok,
                                                 "reason": why} for p, ok, why in zip(pts, v.passed, v.reasons)],
                                    raw=text))
        return out
