"""The agents alone and together: sequencers, chat decomposer failures, the pipeline's open and closed loop."""

import asyncio
import json

import pytest
from PIL import Image

from earl.agents.checks import OracleStepCheck, StepVerdict, VerifierStepCheck
from earl.agents.decomposer import (
    ChatDecomposer,
    DecomposeRequest,
    GroundTruthDecomposer,
    ScriptedDecomposer,
    VotingDecomposer,
)
from earl.agents.editor import PipelineEditor
from earl.agents.pipeline import AgentPipeline, attempt_seed
from earl.agents.plan import Plan, Step
from earl.agents.sequencer import ChatSequencer, DependencyOrder, KeepOrder, parse_permutation
from earl.errors import EarlError
from earl.shapes.dataset import generate_samples
from earl.shapes.oracle import judge
from earl.shapes.render import render
from earl.verify.chat import JudgeError


class TagEditor:
    """Returns a new image per call whose pixel encodes (call number); records what it was asked."""

    name = "tag"

    def __init__(self, fail_on: str | None = None):
        self.calls, self.fail_on = [], fail_on

    def edit(self, images, instructions, temperature=0.0, seeds=None):
        out = []
        for ins, seed in zip(instructions, seeds or [None] * len(images)):
            self.calls.append((ins, temperature, seed))
            out.append(None if self.fail_on and self.fail_on in ins else Image.new("RGB", (8, 8), (len(self.calls), 0, 0)))
        return out


class PassOnAttempt:
    """A step check that fails until the n-th image it sees for a step, scoring images by their tag."""

    name = "scripted"

    def __init__(self, n: int, retry: bool = True):
        self.n, self.retry, self.seen = n, retry, {}

    def check(self, befores, steps, afters):
        out = []
        for step, im in zip(steps, afters):
            k = self.seen[step] = self.seen.get(step, 0) + 1
            out.append(StepVerdict(k >= self.n, float(im.getpixel((0, 0))[0]), retry=self.retry))
        return out


def _req(text="x", **meta):
    return DecomposeRequest(Image.new("RGB", (8, 8)), text, meta={"id": "a", **meta})


def test_open_loop_feeds_each_step_the_previous_output():
    ed = TagEditor()
    pipe = AgentPipeline(ScriptedDecomposer(["recolour | the red circle | blue ; remove | the square | nothing"]), ed)
    (res,) = pipe.run([_req()])
    assert [c[0] for c in ed.calls] == ["Make the red circle blue.", "Remove the square."]
    assert res.failure is None and len(res.steps) == 2 and res.editor_calls == 2
    assert res.images[0] is res.steps[-1].image and res.steps[0].image.getpixel((0, 0))[0] == 1


@pytest.mark.parametrize("reply, kind", [("", "empty"), ("paint | x | y", "unknown_action"), ("a | b", "truncated")])
def test_a_failed_plan_is_named_and_edits_nothing_unless_asked(reply, kind):
    ed = TagEditor()
    (res,) = AgentPipeline(ScriptedDecomposer([reply]), ed).run([_req()])
    assert res.failure == kind and res.plan is None and ed.calls == [] and not res.fallback
    (res,) = AgentPipeline(ScriptedDecomposer([reply]), ed, fallback=True).run([_req("the instruction")])
    assert res.failure == kind and res.fallback and ed.calls[-1][0] == "the instruction"


def test_an_editor_that_fails_a_step_stops_the_plan_and_is_named():
    ed = TagEditor(fail_on="square")
    plan = "remove | the square | nothing ; recolour | the red circle | blue"
    (res,) = AgentPipeline(ScriptedDecomposer([plan]), ed).run([_req()])
    assert res.failure == "editor" and len(res.steps) == 1 and len(ed.calls) == 1


def test_closed_loop_resamples_until_the_check_passes_and_counts_the_cost():
    ed = TagEditor()
    pipe = AgentPipeline(ScriptedDecomposer(["recolour | the red circle | blue ; remove | the square | nothing"]), ed,
                         check=PassOnAttempt(3), attempts=4, temperature=0.7, seed=5)
    (res,) = pipe.run([_req()])
    # each step: greedy, then two resamples at temperature 0.7 with seeds from (seed, id, step, attempt)
    assert [c[1] for c in ed.calls] == [0.0, 0.7, 0.7, 0.0, 0.7, 0.7]
    assert ed.calls[1][2] == attempt_seed(5, "a", 0, 1) and ed.calls[5][2] == attempt_seed(5, "a", 1, 2)
    assert [s.attempts for s in res.steps] == [3, 3] and all(s.passed for s in res.steps)
    assert res.editor_calls == 6 and res.check_calls == 6
    assert res.steps[0].image.getpixel((0, 0))[0] == 3  # the passing (third) image is kept


def test_closed_loop_keeps_the_best_scored_attempt_when_none_passes():
    ed = TagEditor()
    pipe = AgentPipeline(ScriptedDecomposer(["recolour | the red circle | blue"]), ed, check=PassOnAttempt(99), attempts=3)
    (res,) = pipe.run([_req()])
    assert res.steps[0].attempts == 3 and res.steps[0].passed is False
    assert res.steps[0].image.getpixel((0, 0))[0] == 3  # the highest score (the tag)


def test_a_step_that_cannot_apply_is_not_resampled():
    ed = TagEditor()
    pipe = AgentPipeline(ScriptedDecomposer(["recolour | the red circle | blue"]), ed, check=PassOnAttempt(99, retry=False),
                         attempts=4)
    (res,) = pipe.run([_req()])
    assert len(ed.calls) == 1 and res.steps[0].attempts == 1


def test_resampling_needs_a_check():
    with pytest.raises(EarlError, match="step check"):
        AgentPipeline(ScriptedDecomposer([]), TagEditor(), attempts=3)


def test_dependency_order_fills_a_place_after_it_is_emptied():
    add = Step("add", "a small red square", "row 1, column 1")
    rm = Step("remove", "the shape in row 1, column 1", "nothing")
    other = Step("recolour", "the blue circle", "red")
    (o,) = DependencyOrder().order([Plan((add, other, rm))])
    assert o.plan.steps == (other, rm, add)
    (o,) = KeepOrder().order([Plan((add, rm))])
    assert o.plan.steps == (add, rm)
    mv1, mv2 = Step("move", "the shape in row 1, column 1", "row 2, column 2"), Step("move", "the shape in row 2, column 2", "row 1, column 1")
    (o,) = DependencyOrder().order([Plan((mv1, mv2))])
    assert o.plan is None and "cycle" in o.error


class Backend:
    def __init__(self, replies):
        self.replies, self.calls = list(replies), 0

    async def chat(self, messages, max_tokens, temperature):
        self.calls += 1
        r = self.replies.pop(0)
        if isinstance(r, Exception):
            raise r
        return r


def test_chat_decomposer_retries_then_names_the_failure():
    ok = "1. remove | the red circle | nothing\n2. recolour | the square | blue"
    b = Backend(["I would remove the circle.", ok])
    (d,) = ChatDecomposer(b, retries=2, backoff=0).decompose([_req()])
    assert d.plan is not None and len(d.plan) == 2 and b.calls == 2
    (d,) = ChatDecomposer(Backend(["no plan"] * 3), retries=2, backoff=0).decompose([_req()])
    assert d.plan is None and d.failure == "truncated" and d.raw == "no plan"
    (d,) = ChatDecomposer(Backend([JudgeError("HTTP 500", retriable=True)] * 3), retries=2, backoff=0).decompose([_req()])
    assert d.plan is None and d.failure == "error" and "500" in d.error
    (d,) = ChatDecomposer(Backend([JudgeError("timed out", retriable=True)] * 2), retries=1, backoff=0).decompose([_req()])
    assert d.failure == "error" and "timed out" in d.error


def test_chat_sequencer_takes_a_permutation_or_reports():
    plan = Plan((Step("remove", "a", "nothing"), Step("remove", "b", "nothing"), Step("remove", "c", "nothing")))
    (o,) = ChatSequencer(Backend(["3, 1, 2"]), retries=0).order([plan], ["x"])
    assert [s.subject for s in o.plan.steps] == ["c", "a", "b"]
    (o,) = ChatSequencer(Backend(["1, 1, 2"]), retries=0).order([plan], ["x"])
    assert o.plan is None and o.error
    assert parse_permutation("2,1", 2) == [1, 0] and parse_permutation("1 2 3", 2) is None
    assert asyncio.iscoroutinefunction(ChatSequencer._order)


class ScriptedChatServer:
    """An OpenAI-compatible chat server on loopback that answers each request with the next scripted reply
    and keeps the requests it got."""

    def __init__(self, replies: list[str]):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.replies, self.requests = list(replies), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                server.requests.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                body = json.dumps({"choices": [{"message": {"role": "assistant",
                                                            "content": server.replies.pop(0)}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_chat_sequencer_is_selectable_by_name(monkeypatch):
    """`AgentOptions(sequencer="chat")` orders plans through a chat server: the pipeline applies the steps
    in the order the server answered, and a reply that is not a permutation is the step order's failure."""
    from earl.agents.build import AgentOptions, build_sequencer

    plan = "remove | the red circle | nothing ; recolour | the square | blue"
    with ScriptedChatServer(["2, 1", "1, 1"]) as server:
        options = AgentOptions(sequencer="chat", sequencer_base_url=server.url, sequencer_model="orderer")
        sequencer = build_sequencer(options)
        assert isinstance(sequencer, ChatSequencer)
        sequencer.retries = 0
        ed = TagEditor()
        (r,) = AgentPipeline(ScriptedDecomposer([plan]), ed, sequencer=sequencer).run([_req("tidy up")])
        assert [c[0] for c in ed.calls] == ["Make the square blue.", "Remove the red circle."]
        (r,) = AgentPipeline(ScriptedDecomposer([plan]), TagEditor(), sequencer=sequencer).run([_req("tidy up")])
        assert r.failure == "sequencer" and "unparseable" in r.error
    (path, body), _ = server.requests
    assert path == "/v1/chat/completions" and body["model"] == "orderer" and body["temperature"] == 0.0
    prompt = body["messages"][0]["content"]
    prompt = prompt if isinstance(prompt, str) else " ".join(p.get("text", "") for p in prompt)
    assert "Instruction they come from: tidy up" in prompt and "2. recolour | the square | blue" in prompt

    with pytest.raises(ValueError, match="apply to the chat sequencer only"):
        AgentOptions(sequencer="keep", sequencer_base_url=server.url)
    monkeypatch.delenv("EARL_SEQUENCER_BASE_URL", raising=False)
    with pytest.raises(EarlError, match="sequencer 'chat': no server"):
        build_sequencer(AgentOptions(sequencer="chat"))
    assert isinstance(build_sequencer(AgentOptions(sequencer="dependency")), DependencyOrder)


def test_ground_truth_plans_through_the_bundled_editor_with_the_oracle_check():
    """End to end on real images: the bundled editor applies ground-truth plans; the per-step oracle
    check accepts steps whose edit is right and the final image is judged against the target."""
    samples = list(generate_samples("complex", 6, seed=11))
    reqs = [DecomposeRequest(render(s.source_scene), s.instruction,
                             meta={"id": str(i), "program": json.dumps(s.program.to_dict()),
                                   "source_scene": json.dumps(s.source_scene.to_dict())}) for i, s in enumerate(samples)]
    pipe = AgentPipeline(GroundTruthDecomposer(), PipelineEditor.from_pretrained(), check=OracleStepCheck(), attempts=2)
    results = pipe.run(reqs)
    for s, r in zip(samples, results):
        assert len(r.steps) == len(s.program) and r.failure is None
        for rec in r.steps:
            assert rec.passed in (True, False) and 1 <= rec.attempts <= 2
        final_ok = judge(s.source_scene, s.target_scene, r.images[0]).success
        if all(rec.passed for rec in r.steps):
            assert final_ok, s.instruction  # every step verified right => the whole edit is right
    assert sum(judge(s.source_scene, s.target_scene, r.images[0]).success for s, r in zip(samples, results)) >= 3


def _judged_calls(verifier):
    """Wrap a verifier's `score` to record each request's (id, reward): step checks send ids `step{i}`,
    the plan judge the request's own id."""
    seen, score = [], verifier.score

    def recording(requests):
        out = score(requests)
        seen.extend((r.meta.get("id"), None if v.failed else float(v.reward)) for r, v in zip(requests, out))
        return out

    verifier.score = recording
    return seen


@pytest.mark.slow
def test_from_pretrained_closes_the_loop_with_the_reward_model():
    """One call gives the closed loop: sampled plans chosen by the bundled reasoning reward model and
    each step checked by the same model (loaded once). Every verdict is accounted for, and the kept
    plan is the first the judge passes, else the best-judged one."""
    pipe = AgentPipeline.from_pretrained(plans=8, plan_judge="rrm", check="rrm")
    assert isinstance(pipe.decomposer, VotingDecomposer) and pipe.decomposer.votes == 16 and pipe.plans == 8
    assert isinstance(pipe.check, VerifierStepCheck) and pipe.plan_judge is pipe.check.verifier
    assert pipe.plan_judge.name == "rrm" and pipe.attempts == 4 and pipe.plan_threshold == 0.9
    samples = list(generate_samples("complex", 2, seed=5))
    reqs = [DecomposeRequest(render(s.source_scene), s.instruction,
                             meta={"id": f"r{i}", "source_scene": json.dumps(s.source_scene.to_dict()),
                                   "target_scene": json.dumps(s.target_scene.to_dict())}) for i, s in enumerate(samples)]

    def run(pipe, reqs, steps_checked=True):
        seen = _judged_calls(pipe.plan_judge)
        results = pipe.run(reqs)
        checks = sum(1 for key, _ in seen if key.startswith("step"))
        # check_calls also counts a step verdict given without the model (a step whose subject is not in the image)
        assert (checks > 0) == steps_checked and len(seen) <= sum(r.check_calls for r in results)
        for req, res in zip(reqs, results):
            rewards = [v for key, v in seen if key == req.meta["id"]]  # one plan judgement per plan carried out
            assert res.failure is None and len(rewards) == res.plans_tried >= 1
            passed = [v for v in rewards if v is not None and v >= pipe.plan_threshold]
            if passed:  # the first plan the judge passes ends the search and is kept
                assert passed == rewards[-1:] and res.plan_reward == passed[0]
            else:
                assert res.plan_reward == max(v for v in rewards if v is not None)
        return results

    run(pipe, reqs)
    # a judge nothing passes: every distinct candidate plan is carried out, the best-judged one kept
    strict = AgentPipeline.from_pretrained(plans=8, plan_judge="rrm", rrm_threshold=1.01)
    (res,) = run(strict, reqs[:1], steps_checked=False)
    assert res.plans_tried == min(8, len(strict.decomposer.candidates(reqs[:1])[0])) >= 2
