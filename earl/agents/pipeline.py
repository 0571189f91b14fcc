"""`AgentPipeline`: ImageEdit-R1's multi-agent editing, with an optional closed loop.

    from earl.agents import AgentPipeline
    agent = AgentPipeline.from_pretrained()          # bundled decomposer + bundled editor
    result = agent("in.png", "Remove all the red shapes and make the circle blue.")
    result.images[0].save("out.png"); print(result.plan.text())

The flow, for a batch of requests (`run`):

    decompose   Decomposer: (image, instruction) -> plan of (action, subject, goal) steps
    order       Sequencer: the plan's steps in the order to apply them
    edit        Editor: step k's simple instruction applied to step k-1's output, for every request
                that has a step k (batched across requests)
    [check]     StepCheck: did the step do what it says? If not, resample it (temperature > 0, a
                fresh seed per attempt) up to `attempts` tries; keep the first that passes, else the
                best-scored one. Not in the paper: the closed loop.
    [choose]    With `plans=m` and a `plan_judge` (any `earl.verify` verifier): the decomposer's
                distinct candidate plans (`VotingDecomposer.candidates`, most-written first) are
                carried out one after another until the judge passes the final image against the
                whole instruction (reward >= `plan_threshold`), at most m of them; else the
                best-judged one is kept. Also not in the paper: the decomposer is the agent that loses
                most (its greedy plan is exact on ~60% of complex edits, one of 16 samples on ~80%).

A request whose plan fails (empty, malformed, truncated, unknown action, too long, a decomposer
that errs) or whose editor call fails is a named failure in its result. With `fallback=True` the
original instruction is then given to the editor directly (the result still names the failure).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from PIL import Image

from earl.agents.build import AgentOptions, agent_parts, default_decomposer  # noqa: F401 (re-exported)
from earl.agents.checks import StepVerdict
from earl.agents.decomposer import DecomposeRequest, Decomposition, ScriptedDecomposer
from earl.agents.plan import Plan, Step, step_instruction
from earl.agents.repair import RepairingPipeline
from earl.agents.sequencer import KeepOrder
from earl.errors import EarlError
from earl.io import load_image
from earl.seeds import derive_seed
from earl.verify.base import EditRequest


@dataclass
class StepRecord:
    step: Step
    instruction: str
    image: Image.Image | None  # the image after this step (None: the editor failed)
    attempts: int = 1
    passed: bool | None = None  # the step check's verdict (None without a check)
    reason: str = ""

    def to_dict(self) -> dict:
        return {"step": self.step.text(), "instruction": self.instruction, "attempts": self.attempts,
                "passed": self.passed, "reason": self.reason}


@dataclass
class AgentResult:
    images: list[Image.Image]  # [final image], the shape of `EditResult.images`
    plan: Plan | None
    steps: list[StepRecord] = field(default_factory=list)
    decomposition: Decomposition | None = None
    failure: str | None = None  # plan failure kind, "sequencer", or "editor"
    error: str | None = None
    fallback: bool = False  # the instruction went to the editor directly after a failure
    editor_calls: int = 0
    check_calls: int = 0  # verifier calls: step checks and plan judgements
    plans_tried: int = 1
    plan_reward: float | None = None  # the plan judge's reward for the kept plan
    repairs: int = 0  # critique-and-repair rounds whose result was kept (`earl.agents.repair`)

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict() if self.plan else None, "n_steps": len(self.steps),
                "steps": [s.to_dict() for s in self.steps], "failure": self.failure, "error": self.error,
                "fallback": self.fallback, "decomposer_raw": self.decomposition.raw if self.decomposition else None,
                "editor_calls": self.editor_calls, "check_calls": self.check_calls, "plans_tried": self.plans_tried,
                "plan_reward": self.plan_reward, "repairs": self.repairs}


def attempt_seed(seed: int, key: str, step: int, attempt: int) -> int:
    """A resample's seed from (run seed, request id, step, attempt): never from batch position."""
    return derive_seed(seed, key, step, attempt, sep="|", bits=60)


class AgentPipeline:
    def __init__(self, decomposer, editor, sequencer=None, check=None, attempts: int = 1, temperature: float = 1.0,
                 fallback: bool = False, seed: int = 0, plans: int = 1, plan_judge=None, plan_threshold: float = 1.0):
        if attempts < 1:
            raise EarlError(f"attempts must be >= 1, got {attempts}")
        if attempts > 1 and check is None:
            raise EarlError("attempts > 1 resamples a step that fails its check: give a step check")
        if plans < 1:
            raise EarlError(f"plans must be >= 1, got {plans}")
        if plans > 1 and (plan_judge is None or not hasattr(decomposer, "candidates")):
            raise EarlError("plans > 1 tries the decomposer's candidate plans in turn: give a plan judge and a "
                            "decomposer with candidates (a VotingDecomposer)")
        self.plans, self.plan_judge, self.plan_threshold = plans, plan_judge, plan_threshold
        self.decomposer, self.editor = decomposer, editor
        self.sequencer = sequencer or KeepOrder()
        self.check, self.attempts, self.temperature = check, attempts, temperature
        self.fallback, self.seed = fallback, seed

    @classmethod
    def from_pretrained(cls, decomposer: str | None = None, editor: str | None = None, device: str = "cpu",
                        seed: int = 0, **options) -> AgentPipeline:
        """The bundled decomposer and editor (or the given directories), open loop unless `options` (the
        fields of `AgentOptions`, as `earl agent edit` takes them) close it:

            AgentPipeline.from_pretrained(plans=8, plan_judge="rrm", check="rrm")

        samples 16 plans besides the greedy one (`plan_votes`: twice `plans` unless given, the ratio of
        every measured run), carries out up to 8 distinct ones until the reasoning reward model passes the
        final image, and has the same model check each step (4 tries). On ShapesEdit the reward model
        writes its principles from the request's scene graphs (`DecomposeRequest.meta`, as
        `earl.agents.evaluate` builds it)."""
        if options.get("plans", 1) > 1:
            options.setdefault("plan_votes", 2 * options["plans"])
        try:
            opts = AgentOptions(**options)
        except TypeError:
            unknown = sorted(set(options) - {f.name for f in fields(AgentOptions)})
            raise EarlError(f"AgentPipeline.from_pretrained: unknown option(s) {', '.join(unknown)}; valid: "
                            f"{', '.join(f.name for f in fields(AgentOptions))}") from None
        return build_agent_pipeline(decomposer, editor, opts, seed=seed, device=device)

    def __call__(self, image, instruction: str) -> AgentResult:
        if not isinstance(instruction, str) or not instruction.strip():
            raise EarlError("instruction is empty")
        image = load_image(image) if not isinstance(image, Image.Image) else image
        return self.run([DecomposeRequest(image, instruction, meta={"id": "0"})])[0]

    def run(self, requests: list[DecomposeRequest]) -> list[AgentResult]:
        """Decompose, order and execute a batch of requests; one `AgentResult` each, in order."""
        if self.plans > 1:
            results = self._choose_plans(requests)
        else:
            results = self._carry_out(requests, self.decomposer.decompose(requests))
        if self.fallback:
            failed = [i for i, r in enumerate(results) if r.failure is not None]
            if failed:
                edited = self.editor.edit([requests[i].image for i in failed], [requests[i].instruction for i in failed])
                for i, im in zip(failed, edited):
                    results[i].fallback = True
                    results[i].editor_calls += 1
                    if im is not None:
                        results[i].images = [im]
        return results

    def _carry_out(self, requests: list[DecomposeRequest], decs: list[Decomposition]) -> list[AgentResult]:
        """Order and execute one decomposition per request."""
        results = [AgentResult([r.image], d.plan, decomposition=d, failure=d.failure, error=d.error)
                   for r, d in zip(requests, decs)]
        ok = [i for i, r in enumerate(results) if r.plan is not None]
        for i, o in zip(ok, self.sequencer.order([results[i].plan for i in ok], [requests[i].instruction for i in ok])):
            if o.plan is None:
                results[i].plan, results[i].failure, results[i].error = None, "sequencer", o.error
            else:
                results[i].plan = o.plan
        self._execute(requests, results)
        return results

    def _choose_plans(self, requests: list[DecomposeRequest]) -> list[AgentResult]:
        """Carry out each request's candidate plans in turn (round r: the r-th most-written plan of
        every request not yet passed) and keep the first the plan judge passes, else the best-judged."""
        ranked = self.decomposer.candidates(requests)
        best: list[AgentResult | None] = [None] * len(requests)
        calls = [[0, 0, 0] for _ in requests]  # editor calls, verifier calls, plans tried
        pending = list(range(len(requests)))
        for rnd in range(self.plans):
            rows = [i for i in pending if rnd < len(ranked[i])]
            if not rows:
                break
            tried = self._carry_out([requests[i] for i in rows], [ranked[i][rnd] for i in rows])
            judged = [(i, res) for i, res in zip(rows, tried) if res.failure is None]
            verdicts = self.plan_judge.score([EditRequest(requests[i].image, requests[i].instruction, res.images[0],
                                                          meta=requests[i].meta) for i, res in judged])
            reward = {i: (None if v.failed else float(v.reward)) for (i, _), v in zip(judged, verdicts)}
            still = []
            for i, res in zip(rows, tried):
                calls[i][0] += res.editor_calls
                calls[i][1] += res.check_calls + (i in reward)
                calls[i][2] += 1
                res.plan_reward = reward.get(i)
                prev = best[i]
                if prev is None or (res.plan_reward is not None
                                    and (prev.plan_reward is None or res.plan_reward > prev.plan_reward)):
                    best[i] = res
                if res.plan_reward is None or res.plan_reward < self.plan_threshold:
                    still.append(i)
            pending = still
        for res, (editor_calls, verifier_calls, tried) in zip(best, calls):
            res.editor_calls, res.check_calls, res.plans_tried = editor_calls, verifier_calls, tried
        return best

    def _execute(self, requests, results: list[AgentResult]) -> None:
        longest = max((len(r.plan) for r in results if r.plan is not None), default=0)
        for k in range(longest):
            rows = [i for i, r in enumerate(results) if r.plan is not None and r.failure is None and len(r.plan) > k]
            if not rows:
                break
            steps = [results[i].plan.steps[k] for i in rows]
            befores = [results[i].images[0] for i in rows]
            instructions = [step_instruction(s) for s in steps]
            afters = self.editor.edit(befores, instructions)
            records = [StepRecord(s, ins, im) for s, ins, im in zip(steps, instructions, afters)]
            for i in rows:
                results[i].editor_calls += 1
            if self.check is not None:
                self._closed_loop(requests, results, rows, k, steps, befores, instructions, records)
            for i, rec in zip(rows, records):
                results[i].steps.append(rec)
                if rec.image is None:
                    results[i].failure, results[i].error = "editor", f"step {k + 1}: the editor returned no image"
                else:
                    results[i].images = [rec.image]

    def _closed_loop(self, requests, results, rows, k, steps, befores, instructions, records) -> None:
        """Check each step's edit; resample the failing ones, keeping the first pass or the best score."""
        pending = list(range(len(rows)))
        best: dict[int, StepVerdict] = {}
        for attempt in range(self.attempts):
            pending = [j for j in pending if records[j].image is not None]
            if not pending:
                break
            if attempt:
                seeds = [attempt_seed(self.seed, str(requests[rows[j]].meta.get("id", rows[j])), k, attempt)
                         for j in pending]
                images = self.editor.edit([befores[j] for j in pending], [instructions[j] for j in pending],
                                          temperature=self.temperature, seeds=seeds)
                for j in pending:
                    results[rows[j]].editor_calls += 1
            else:
                images = [records[j].image for j in pending]
            verdicts = self.check.check([befores[j] for j in pending], [steps[j] for j in pending], images)
            still = []
            for j, im, v in zip(pending, images, verdicts):
                results[rows[j]].check_calls += 1
                records[j].attempts = attempt + 1
                if im is not None and (j not in best or v.passed or v.score > best[j].score):
                    best[j] = v
                    records[j].image, records[j].passed, records[j].reason = im, v.passed, v.reason
                if not v.passed and v.retry:
                    still.append(j)
            pending = still


def build_agent_pipeline(decomposer: str | None, editor: str | None, options: AgentOptions,
                         seed: int = 0, device: str = "cpu") -> AgentPipeline | RepairingPipeline:
    """The pipeline `options` describe (`earl agent`, `earl eval shapes --agent`, `earl study`, the demo,
    `AgentPipeline.from_pretrained`); with `repairs`, wrapped in critique-and-repair rounds."""
    parts = agent_parts(decomposer, editor, options, seed=seed, device=device)
    pipe = AgentPipeline(**parts)
    if not options.repairs:
        return pipe
    judge = parts["plan_judge"] if parts["plan_judge"] is not None else parts["check"].verifier
    return RepairingPipeline(pipe, judge, repairs=options.repairs, threshold=options.rrm_threshold)


def execute_plans(editor, sources: list[Image.Image], plans: list[Plan | None]) -> list[Image.Image | None]:
    """Open-loop execution of given plans (None for a plan that failed): the final images."""
    pipe = AgentPipeline(ScriptedDecomposer(lambda r: ""), editor)
    results = [AgentResult([im], p) for im, p in zip(sources, plans)]
    pipe._execute([DecomposeRequest(im, "") for im in sources], results)
    return [r.images[0] if r.plan is not None and r.failure is None else None for r in results]
