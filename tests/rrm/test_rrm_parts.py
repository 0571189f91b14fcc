"""Edit-R1 pieces: GCPO rewards/advantages by hand, ShapesEdit principles against the oracle, the
verdict parser on malformed replies, and the principle cache."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
import torch

from earl.rl.gcpo import gcpo_advantages, gcpo_rewards, pair_advantages
from earl.rrm.principles import CATEGORIES, PrincipleCache, shapes_points, verify_point
from earl.rrm.trace import format_trace, parse_trace
from earl.shapes.edits import make_sample
from earl.shapes.oracle import parse_scene
from earl.shapes.render import render
from tests.verify.conftest import tiny_vlm_dir  # noqa: F401  (a session fixture: the tiny random VLM)

T = torch.tensor


# ---- GCPO -------------------------------------------------------------------------------------
def test_gcpo_rewards_and_advantages_by_hand():
    tau_w, tau_l = T([[8.0, 5.0, 3.0]]), T([[5.0, 4.0, 9.0]])
    r_w, r_l = gcpo_rewards(tau_w, tau_l)
    # w: 8 beats 5 and 4; 5 beats 4 (a tie with 5 counts 0); 3 beats nothing
    assert torch.allclose(r_w, T([[2 / 3, 1 / 3, 0.0]]))
    # l: 5 is beaten by 8 only; 4 by 8 and 5; 9 by nothing
    assert torch.allclose(r_l, T([[1 / 3, 2 / 3, 0.0]]))
    a_w, a_l = pair_advantages(tau_w, tau_l)  # mean-centred, no std division
    assert torch.allclose(a_w, T([[1 / 3, 0.0, -1 / 3]])) and torch.allclose(a_l, T([[0.0, 1 / 3, -1 / 3]]))


def test_gcpo_all_win_pairs_and_failed_traces():
    a_w, a_l = pair_advantages(T([[9.0, 9.5]]), T([[1.0, 2.0]]))  # every w beats every l: no gradient
    assert torch.equal(a_w, torch.zeros(1, 2)) and torch.equal(a_l, torch.zeros(1, 2))
    # the third w trace failed to parse: out of every comparison, no advantage
    vw, vl = T([[True, True, False]]), T([[True, True, True]])
    r_w, r_l = gcpo_rewards(T([[8.0, 5.0, 3.0]]), T([[5.0, 4.0, 9.0]]), vw, vl)
    assert torch.allclose(r_w, T([[2 / 3, 1 / 3, 0.0]])) and torch.allclose(r_l, T([[1 / 2, 1.0, 0.0]]))
    a_w, a_l = pair_advantages(T([[8.0, 5.0, 3.0]]), T([[5.0, 4.0, 9.0]]), vw, vl)
    assert torch.allclose(a_w, T([[1 / 6, -1 / 6, 0.0]])) and torch.allclose(a_l, T([[0.0, 0.5, -0.5]]))
    # no valid trace on one side: the pair gives nothing
    a_w, a_l = pair_advantages(T([[8.0, 5.0]]), T([[5.0, 4.0]]), T([[True, True]]), T([[False, False]]))
    assert not a_w.any() and not a_l.any()
    assert torch.equal(gcpo_advantages(T([[0.7, 0.2]]), T([[True, False]])), torch.zeros(1, 2))


# ---- principles -------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["simple", "complex"])
def test_shapes_points_are_ten_and_agree_with_the_oracle(split):
    rng = random.Random(7)
    for i in range(40):
        s = make_sample(rng, split)
        points = shapes_points(s.source_scene, s.target_scene, seed=i)
        counts = Counter(p.category for p in points)
        assert len(points) == 10 and set(counts) <= set(CATEGORIES)
        assert 3 <= counts["instruction"] <= 4 and 3 <= counts["preservation"] <= 4 and 2 <= counts["quality"] <= 3
        on_target = parse_scene(render(s.target_scene), grid=s.target_scene.grid)
        assert all(verify_point(p, s.source_scene, s.target_scene, on_target) for p in points), s.instruction
        on_source = parse_scene(render(s.source_scene), grid=s.source_scene.grid)  # an edit that changed nothing
        verdicts = {p.question: verify_point(p, s.source_scene, s.target_scene, on_source) for p in points}
        assert not all(v for p, v in zip(points, verdicts.values()) if p.category == "instruction")
        assert all(v for p, v in zip(points, verdicts.values()) if p.category != "instruction")


def test_phrasings_vary_with_the_seed_and_the_cache_keeps_one_set(tmp_path):
    s = make_sample(random.Random(3), "simple")
    questions = {tuple(p.question for p in shapes_points(s.source_scene, s.target_scene, seed=k)) for k in range(8)}
    assert len(questions) > 1
    cache = PrincipleCache(tmp_path)
    image = render(s.source_scene)
    first = cache.get(image, s.instruction, lambda: shapes_points(s.source_scene, s.target_scene, seed=1))
    again = cache.get(image, s.instruction, lambda: pytest.fail("recomputed despite the cache"))
    assert again == first
    assert cache.key(image, s.instruction) != cache.key(image, s.instruction + " please")


# ---- the verdict format -----------------------------------------------------------------------
def test_trace_roundtrip_and_tolerated_variations():
    text = format_trace([True, False, True], ["bg is blue", "circle missing", "clean"], 5.5)
    v = parse_trace(text, 3)
    assert v.passed == [True, False, True] and v.reasons[1] == "circle missing" and v.score == 5.5
    assert v.point_average == pytest.approx(20 / 3)
    md = "**1. Yes** — fine\n- 2) no: missing\n3. YES, ok\n\n<score> 7 </score>"
    assert parse_trace(md, 3).passed == [True, False, True]


def test_reason_first_lines_parse_and_a_reason_may_start_with_no():
    text = format_trace([True, False, True], ["no object outside the expected cells", "row 1, column 2 holds nothing",
                                              "clean shapes"], 4, reason_first=True)
    assert text.splitlines()[0] == "1. no object outside the expected cells - yes"
    v = parse_trace(text, 3)
    assert v.passed == [True, False, True] and v.reasons[0] == "no object outside the expected cells"
    # a verdict-first line is still read as one; orders may even mix within a reply
    assert parse_trace("1. no - missing\n2. the circle is red: yes\n3. **yes**\n<score>5</score>", 3).passed == \
        [False, True, True]


@pytest.mark.parametrize("text", [
    "", "1. yes - a\n2. no - b\n<score>5</score>",          # a point missing
    "1. yes\n2. no\n3. yes\n3. no\n<score>5</score>",          # a point repeated
    "1. yes\n2. no\n4. yes\n<score>5</score>",                 # out of range
    "1. yes\n2. no\n3. yes\n",                                 # no score (truncated)
    "1. yes\n2. no\n3. yes\n<score>11</score>",                # score out of range
    "1. yes\n2. no\n3. yes\n<score>4</score><score>5</score>",  # two scores
    "1. maybe\n2. no\n3. yes\n<score>5</score>",               # not yes/no
])
def test_malformed_traces_are_failures_not_zeros(text):
    assert parse_trace(text, 3) is None


# ---- preference pairs and pairwise accuracy ---------------------------------------------------
def test_pairwise_accuracy_by_hand():
    from earl.rrm.pairs import Pair, pairwise_accuracy

    def ex(score, kind):
        return {"score": score, "kind": kind}

    pairs = [Pair(0, "add", ex(9, "target"), ex(5, "drop"), 4), Pair(1, "add", ex(8, "target"), ex(2, "undo"), 6),
             Pair(2, "move", ex(7, "extra"), ex(6, "blur"), 1)]
    # a scorer that gets pair 0 right, ties pair 1 (counts wrong) and fails on pair 2
    table = {id(pairs[0].preferred): 3.0, id(pairs[0].rejected): 1.0, id(pairs[1].preferred): 5.0,
             id(pairs[1].rejected): 5.0, id(pairs[2].preferred): None, id(pairs[2].rejected): 2.0}
    res = pairwise_accuracy(pairs, lambda exs: [table[id(e)] for e in exs])
    assert res["overall"]["accuracy"] == pytest.approx(1 / 3) and res["failed"] == 1 and res["ties"] == 1
    assert res["per_category"]["add"]["accuracy"] == 0.5 and res["per_category"]["move"]["n"] == 1
    assert res["per_rejected_kind"]["drop"]["accuracy"] == 1.0


def test_pairwise_accuracy_judges_each_candidate_once():
    from earl.rrm.pairs import Pair, pairwise_accuracy

    a, b, c = {"score": 9, "kind": "target"}, {"score": 5, "kind": "drop"}, {"score": 2, "kind": "undo"}
    pairs = [Pair(0, "add", a, b, 4), Pair(0, "add", a, c, 7), Pair(0, "add", b, c, 3)]
    seen = []

    def score(exs):
        seen.extend(exs)
        return [e["score"] for e in exs]

    assert pairwise_accuracy(pairs, score)["overall"]["accuracy"] == 1.0
    assert len(seen) == 3 and {id(e) for e in seen} == {id(a), id(b), id(c)}


def test_avg_at_k_scores_each_example_from_its_own_traces(monkeypatch):
    """Avg@k batches several examples per sampling call; each score must average that example's k traces."""
    import types

    import earl.rrm.scoring as scoring
    from earl.rrm.scoring import rrm_scorer

    calls = []

    def fake_sample(model, prompts, n, *args, **kwargs):
        calls.append(len(prompts))
        return [[p[0] * 10 + j] for p in prompts for j in range(n)]  # prompt-major, like the real one

    monkeypatch.setattr(scoring, "sample_traces", fake_sample)
    monkeypatch.setattr(scoring, "judge_prompt", lambda layout, ins, *a: [int(ins)])
    monkeypatch.setattr(scoring, "normalise_decoded", lambda t: t)
    # trace "10*i + j" parses to that number, except example 1's third trace, which fails
    monkeypatch.setattr(scoring, "parse_trace", lambda t, n: None if t == "12" else types.SimpleNamespace(score=float(t)))
    editor = types.SimpleNamespace(layout=types.SimpleNamespace(ids=types.SimpleNamespace(eos=0, pad=0)),
                                   text_tokenizer=types.SimpleNamespace(decode=lambda ids, **kw: str(ids[0])),
                                   device="cpu", backbone=None)
    examples = [{"instruction": str(i), "points": [], "source_codes": torch.zeros(2, 2), "codes": torch.zeros(2, 2)} for i in range(5)]
    scores = rrm_scorer(editor, k=3, batch_size=6)(examples)
    assert calls == [2, 2, 1]
    assert scores == [1.0, 10.5, 21.0, 31.0, 41.0]


def test_expected_score_reads_the_softmax_over_0_to_10_after_the_last_score_tag():
    """E[score]: at the step after `<score>`, the probabilities of the words 0-10 (renormalised)
    weighted by their values; None where the trace wrote no score; the greedy choice is irrelevant."""
    import types

    from earl.rrm.readouts import score_expectation
    from earl.text import build_word_tokenizer

    tok = build_word_tokenizer(["1. r1c1 nothing - yes", "<score>7</score>"])
    layout = types.SimpleNamespace(encode_text=lambda t: tok(t, add_special_tokens=False)["input_ids"])
    enc = layout.encode_text
    rows = [enc("1. yes <score> 7 </score>"), enc("1. yes <score> 10"), enc("1. yes yes yes")]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    logits = torch.randn(len(rows), width, len(tok))
    # row 0: after `<score>`, p(7) = 0.5, p(9) = 0.25, p(2) = 0.25 among the numbers; mass elsewhere ignored
    at = len(enc("1. yes <score>"))
    logits[0, at] = -1e9
    for n, logp in ((7, math.log(0.5)), (9, math.log(0.25)), (2, math.log(0.25))):
        logits[0, at, enc(str(n))[0]] = logp
    logits[0, at, enc("yes")[0]] = 5.0
    # row 1: all mass on 10 and 0 equally
    logits[1, at] = -1e9
    logits[1, at, enc("10")[0]] = logits[1, at, enc("0")[0]] = 0.0
    got = score_expectation(layout, ids, logits)
    assert got[0] == pytest.approx(0.5 * 7 + 0.25 * 9 + 0.25 * 2)
    assert got[1] == pytest.approx(5.0)
    assert got[2] is None  # no score written
    assert score_expectation(layout, torch.tensor([enc("1. <score>")]), torch.zeros(1, 3, len(tok))) == [None]


def test_expected_points_reads_p_yes_at_each_verdict_word_and_only_there():
    """E[points]: 10 x the mean over the verdict words of softmax(yes, no); a `no` inside a reason
    (at its start or in it) is not a verdict, in either order of the contract; a trace with another
    number of verdicts than points gives None."""
    import types

    from earl.rrm.readouts import point_expectation, verdict_positions
    from earl.text import build_word_tokenizer

    tok = build_word_tokenizer(["seen : r1c1 circle 1. r1c1 circle , expected no square - yes 2. no stray colours - no",
                                "3) x - no 1. yes - no square kept <score>7</score>"])
    layout = types.SimpleNamespace(encode_text=lambda t: tok(t, add_special_tokens=False)["input_ids"])
    enc = layout.encode_text
    reason_first = ("seen : r1c1 circle 1. r1c1 circle , expected no square - yes 2. no stray colours - no "
                    "3) x - no <score> 7 </score>")
    verdict_first = "1. yes - no square kept 2. no - x 3) no - no square <score> 7 </score>"
    ids = enc(reason_first)
    at = verdict_positions(layout, ids)
    assert at[0] == len(enc("seen : r1c1 circle 1. r1c1 circle , expected no square -"))
    assert at[1] == len(enc("seen : r1c1 circle 1. r1c1 circle , expected no square - yes 2. no stray colours -"))
    logits = torch.randn(1, len(ids), len(tok))
    p_yes = [0.9, 0.2, 0.5]
    for t, p in zip(at, p_yes):
        logits[0, t, enc("yes")[0]], logits[0, t, enc("no")[0]] = math.log(p), math.log(1 - p)
    got = point_expectation(layout, torch.tensor([ids]), logits, [3])
    assert got[0] == pytest.approx(10 * sum(p_yes) / 3)
    assert point_expectation(layout, torch.tensor([ids]), logits, [4]) == [None]
    first = enc(verdict_first)
    assert verdict_positions(layout, first) == [len(enc("1.")), len(enc("1. yes - no square kept 2.")),
                                                len(enc("1. yes - no square kept 2. no - x 3)"))]


def test_simulated_annotators_follow_bradley_terry():
    from earl.rrm.pairs import make_pairs

    rng = random.Random(0)
    examples = [{"sample": k, "score": s, "kind": str(s)} for k in range(400) for s in (9.0, 8.0)]
    pairs = make_pairs(examples, ["c"] * 400, rng, per_sample=1)
    right = sum(p.gap > 0 for p in pairs) / len(pairs)
    assert abs(right - 1 / (1 + math.exp(-1))) < 0.06  # a 1-point gap is preferred correctly ~73% of the time
    same = [{"sample": 0, "score": 5.0, "kind": "a"}, {"sample": 0, "score": 5.0, "kind": "b"}]
    assert make_pairs(same, ["c"], rng) == []  # equal scores: "same", excluded


def test_rewardbench_cli_oracle_and_a_failing_model(tmp_path, tiny_editor, capsys, monkeypatch):
    import earl.rrm.scoring as scoring
    from earl.cli import main

    generations = []
    real = scoring.greedy_readouts
    monkeypatch.setattr(scoring, "greedy_readouts", lambda *a, **k: generations.append(a[3]) or real(*a, **k))
    tiny_editor.save_pretrained(tmp_path / "untrained")
    assert main(["eval", "rewardbench", "--rrm", f"untrained={tmp_path / 'untrained'}", "--samples", "3",
                 "--out", str(tmp_path / "rb"), "--max-new-tokens", "8", "--avg-k", "2", "--expected-score",
                 "--expected-points", "--baseline", "untrained"]) == 0
    # the three greedy readouts of a model come from one generation
    assert generations == [("written", "expected_score", "expected_points")]
    res = json.loads((tmp_path / "rb/rewardbench.json").read_text())
    assert res["baselines"] == ["untrained"] and len(res["scorers"]["oracle"]["hits"]) == res["pairs"]
    md = (tmp_path / "rb/rewardbench.md").read_text()
    oracle_gain = res["scorers"]["oracle"]["overall"]["accuracy"]  # the untrained model gets none right
    assert f"| oracle - untrained | {oracle_gain:+.3f} (" in md and "| untrained E[points] - untrained | +0.000" in md
    assert main(["eval", "rewardbench", "--rrm", f"untrained={tmp_path / 'untrained'}", "--samples", "3",
                 "--out", str(tmp_path / "rb2"), "--baseline", "scalar"]) == 2
    assert "--baseline scalar: no such scorer" in capsys.readouterr().err
    assert not (tmp_path / "rb2").exists()
    oracle, untrained = res["scorers"]["oracle"], res["scorers"]["untrained"]
    assert oracle["failed"] == 0 and oracle["overall"]["n"] == res["pairs"] > 0
    assert untrained["failed"] == res["pairs"] and untrained["overall"]["accuracy"] == 0.0  # gibberish: all failed
    assert res["scorers"]["untrained Avg@2"]["failed"] == res["pairs"]
    assert res["scorers"]["untrained E[score]"]["failed"] == res["pairs"]
    assert res["scorers"]["untrained E[points]"]["failed"] == res["pairs"]

    # a rerun into the same directory reuses every model result whose weights did not change, and
    # judges again a model whose weights did (a flipped byte in its safetensors)
    scorers = {"untrained": {**untrained, "failed": -1}, "untrained Avg@2": res["scorers"]["untrained Avg@2"]}
    (tmp_path / "rb/rewardbench.json").write_text(json.dumps({**res, "scorers": scorers}))
    assert main(["eval", "rewardbench", "--rrm", f"untrained={tmp_path / 'untrained'}", "--samples", "3",
                 "--out", str(tmp_path / "rb"), "--max-new-tokens", "8"]) == 0
    again = json.loads((tmp_path / "rb/rewardbench.json").read_text())["scorers"]
    assert again["untrained"]["failed"] == -1 and "untrained Avg@2" not in again  # reused; Avg@k not asked for
    # a result written before per-pair outcomes were kept is judged again, so it can be compared
    old = {k: v for k, v in again["untrained"].items() if k != "hits"}
    (tmp_path / "rb/rewardbench.json").write_text(json.dumps({**res, "scorers": {"untrained": old}}))
    assert main(["eval", "rewardbench", "--rrm", f"untrained={tmp_path / 'untrained'}", "--samples", "3",
                 "--out", str(tmp_path / "rb"), "--max-new-tokens", "8"]) == 0
    rejudged = json.loads((tmp_path / "rb/rewardbench.json").read_text())["scorers"]["untrained"]
    assert rejudged["failed"] == res["pairs"] and len(rejudged["hits"]) == res["pairs"]
    assert "untrained E[score]" not in again
    weights = next((tmp_path / "untrained").rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert main(["eval", "rewardbench", "--rrm", f"untrained={tmp_path / 'untrained'}", "--samples", "3",
                 "--out", str(tmp_path / "rb"), "--max-new-tokens", "8"]) == 0
    assert json.loads((tmp_path / "rb/rewardbench.json").read_text())["scorers"]["untrained"]["failed"] == res["pairs"]
    assert "| oracle |" in capsys.readouterr().out
    assert untrained["points"] == {}  # no verdict parsed, so none to break down


def test_paired_difference_by_hand():
    from earl.rrm.pairs import paired_difference
    from earl.stats import t_quantile

    d = paired_difference([1, 1, 0, 1, 0], [0, 1, 0, 0, 1])  # per pair: +1, 0, 0, +1, -1
    half = t_quantile(0.975, 4) * math.sqrt(sum((x - 0.2) ** 2 for x in (1, 0, 0, 1, -1)) / 4) / math.sqrt(5)
    assert d["n"] == 5 and d["difference"] == pytest.approx(0.2)
    assert d["ci"] == pytest.approx([0.2 - half, min(1.0, 0.2 + half)])
    with pytest.raises(ValueError, match="same pairs"):
        paired_difference([1, 0], [1])


def test_a_partial_table_leaves_out_baselines_not_judged_yet():
    """rewardbench rewrites its files after every scorer; the scalar baseline is judged after the
    reasoning models, so the tables written before it must not need it (a fresh run crashed here)."""
    from earl.rrm.pairs import Pair, pairwise_accuracy
    from earl.rrm.rewardbench import format_table

    pairs = [Pair(0, "add", {"score": 2.0}, {"score": 1.0}, 1.0), Pair(1, "add", {"score": 0.0}, {"score": 3.0}, -3.0)]
    oracle = pairwise_accuracy(pairs, lambda ex: [e["score"] for e in ex])
    results = {"pairs": 2, "samples": 1, "seed": 0, "baselines": ["scalar"], "scorers": {"oracle": oracle}}
    assert "Paired differences" not in format_table(results)
    results["scorers"]["scalar"] = pairwise_accuracy(pairs, lambda ex: [1.0 - e["score"] for e in ex])
    assert "| oracle - scalar |" in format_table(results)


def test_point_breakdown_by_hand():
    """A yes-to-everything model that copies the question: passing points all right, failing ones all missed."""
    from earl.rrm.principles import EvalPoint
    from earl.rrm.scoring import point_breakdown
    from earl.rrm.trace import Verdicts

    points = [EvalPoint("Is the circle red?", "instruction"), EvalPoint("Is the square kept?", "preservation"),
              EvalPoint("Is the background blue?", "instruction")]
    oracle = format_trace([True, True, False], ["the circle is red", "the square is kept", "the background is white"],
                          6.7, reason_first=True)
    ex = {"points": points, "passed": [True, True, False], "trace": oracle}
    yes_man = Verdicts([True, True, True], ["the circle is red", "the square is kept", "the background is blue"], 10)
    reader = Verdicts([True, False, False], ["the circle is red", "the square is gone", "The background is white."], 5)
    got = point_breakdown([yes_man, reader, None], [ex, ex, ex])
    assert got["preservation"] == {"passing_points": 2, "passing_accuracy": 0.5, "failing_points": 0,
                                   "failing_caught": None, "failing_reason_right": None}
    assert got["instruction"]["passing_points"] == 2 and got["instruction"]["passing_accuracy"] == 1.0
    assert got["instruction"]["failing_points"] == 2
    assert got["instruction"]["failing_caught"] == 0.5 and got["instruction"]["failing_reason_right"] == 0.5


def test_llm_principles_through_a_judge_server(tmp_path):
    """Real-image principles from a (scripted) multimodal LLM over HTTP: parsed, validated, cached."""
    from PIL import Image

    from earl.rrm.principles import llm_points, parse_points
    from earl.serve.judge import JudgeServer
    from earl.verify.chat import OpenAIChatBackend
    from earl.verify.local_vlm import Completion

    good = [{"question": f"Q{i}?", "category": c} for i, c in
            enumerate(["instruction"] * 4 + ["preservation"] * 3 + ["quality"] * 3)]
    replies = iter(["Sure! Here it is:", "```json\n" + json.dumps(good) + "\n```"])
    calls = []

    def engine(requests):
        calls.extend(requests)
        return [Completion(next(replies), 1, 1, "stop") for _ in requests]

    server = JudgeServer(("127.0.0.1", 0), engine, model_name="vlm").start()
    try:
        img = Image.new("RGB", (16, 16), (10, 200, 30))
        cache = PrincipleCache(tmp_path)
        pts = llm_points(OpenAIChatBackend(base_url=server.url), img, "make the grass blue", cache, retries=1)
        assert [p.question for p in pts] == [g["question"] for g in good] and len(calls) == 2  # one retry
        again = llm_points(OpenAIChatBackend(base_url=server.url), img, "make the grass blue", cache)
        assert again == pts and len(calls) == 2  # cached: not asked again
    finally:
        server.close()
    assert parse_points(json.dumps(good[:9])) is None  # 9 points
    assert parse_points(json.dumps([{**g, "category": "instruction"} for g in good])) is None  # 10 instruction
    assert parse_points(json.dumps(good[:9] + [{"question": "", "category": "quality"}])) is None


# ---- real preference pairs (EditReward-Bench style files) ------------------------------------
def _write_pair_file(tmp_path, rows):
    from PIL import Image

    for name, level in (("src", 10), ("dark", 40), ("mid", 120), ("bright", 220)):
        Image.new("RGB", (24, 16), (level, level, level)).save(tmp_path / f"{name}.png")
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _pair(a, b, preferred, category="color"):
    return {"source": "src.png", "instruction": "make it brighter", "image_a": f"{a}.png", "image_b": f"{b}.png",
            "preferred": preferred, "category": category}


def test_pair_file_loads_and_reports_what_is_wrong(tmp_path):
    from earl.errors import DataError
    from earl.rrm.pairs import load_pair_file

    path = _write_pair_file(tmp_path, [_pair("bright", "dark", "a"), _pair("mid", "bright", "B"),
                                       _pair("dark", "mid", "same")])
    pairs, same = load_pair_file(path)
    assert same == 1 and len(pairs) == 2
    assert pairs[0].preferred["image"] == tmp_path / "bright.png" and pairs[1].preferred["image"].name == "bright.png"
    assert pairs[0].preferred is pairs[1].preferred  # the same file is one example: judged once
    for bad, needle in ((_pair("bright", "dark", "maybe"), "'preferred'"),
                        ({**_pair("bright", "dark", "a"), "instruction": ""}, "'instruction'"),
                        (_pair("bright", "missing", "a"), "missing.png not found")):
        with pytest.raises(DataError, match=needle) as e:
            load_pair_file(_write_pair_file(tmp_path, [_pair("bright", "dark", "a"), bad]))
        assert "pairs.jsonl:2" in str(e.value)
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="broken.jsonl:1: not valid JSON"):
        load_pair_file(tmp_path / "broken.jsonl")


def test_pair_file_bench_scores_each_image_once(tmp_path):
    from earl.rrm.rewardbench import run_pair_file_bench
    from earl.verify.base import RewardResult

    class Brightness:  # a verifier preferring brighter edits, failing on the mid-grey one
        name = "brightness"
        seen = []

        def score(self, requests):
            out = []
            for r in requests:
                self.seen.append(r.edited.getpixel((0, 0))[0])
                level = r.edited.getpixel((0, 0))[0]
                out.append(RewardResult.failure("grey") if level == 120 else RewardResult(reward=level / 255))
            return out

    path = _write_pair_file(tmp_path, [_pair("bright", "dark", "a"), _pair("dark", "bright", "a", "tone"),
                                       _pair("mid", "dark", "a"), _pair("dark", "bright", "b"),
                                       _pair("dark", "mid", "same")])
    v = Brightness()
    res = run_pair_file_bench(path, {"bright": v}, tmp_path / "out")
    r = res["scorers"]["bright"]
    assert res["pairs"] == 4 and res["excluded_same"] == 1
    assert r["overall"]["accuracy"] == 0.5 and r["failed"] == 1  # right, wrong (annotator disagrees), failed, right
    assert r["per_category"]["tone"]["accuracy"] == 0.0 and r["per_rejected_kind"] == {}
    assert sorted(v.seen) == [40, 120, 220]  # three distinct images, each judged once
    assert "| bright |" in (tmp_path / "out/rewardbench.md").read_text()


def test_rewardbench_cli_real_pairs_with_a_viescore_judge_and_an_rrm_over_http(tmp_path, capsys):
    """The zero-shot VIEScore row and a chat-model RRM (principles from the same server) on real pairs."""
    from earl.cli import main
    from earl.serve.judge import JudgeServer
    from earl.verify.local_vlm import Completion
    from earl.verify.messages import split_images

    points = [{"question": f"Q{i}?", "category": c} for i, c in
              enumerate(["instruction"] * 4 + ["preservation"] * 3 + ["quality"] * 3)]

    def engine(requests):  # a judge whose scores follow the brightness of the last image it is shown
        out = []
        for req in requests:
            parts, images = split_images(req.messages)
            text = json.dumps(parts)
            score = round(10 * images[-1].getpixel((0, 0))[0] / 255)
            if "yes/no questions" in text:  # the principle decomposition
                reply = json.dumps(points)
            elif "Request (JSON)" in text:  # the reward model's verdict contract
                reply = "\n".join(f"{i + 1}. {'yes' if score > 5 else 'no'} - looks so" for i in range(10))
                reply += f"\n<score>{score}</score>"
            else:  # VIEScore
                reply = json.dumps({"score": [score, score], "reasoning": "scripted"})
            out.append(Completion(reply, 1, 1, "stop"))
        return out

    server = JudgeServer(("127.0.0.1", 0), engine, model_name="judge").start()
    try:
        path = _write_pair_file(tmp_path, [_pair("bright", "dark", "a"), _pair("dark", "mid", "b"),
                                           _pair("mid", "bright", "a")])
        assert main(["eval", "rewardbench", "--pairs", str(path), "--out", str(tmp_path / "rb"),
                     "--verifier", f"vie=viescore,base_url={server.url},model=judge,retries=0",
                     "--verifier", f"rrm=rrm,base_url={server.url},principle_cache={tmp_path / 'pc'},retries=0"]) == 0
    finally:
        server.close()
    res = json.loads((tmp_path / "rb/rewardbench.json").read_text())
    for name in ("vie", "rrm"):
        r = res["scorers"][name]
        assert r["failed"] == 0 and r["overall"]["n"] == 3 and r["overall"]["accuracy"] == pytest.approx(2 / 3), name
    assert len(list((tmp_path / "pc").glob("*.json"))) == 1  # one source + instruction: one set of principles
    assert "| vie |" in capsys.readouterr().out


def test_rrm_verifier_on_a_local_transformers_vlm(tiny_vlm_dir):  # noqa: F811
    """vlm_path: a transformers image-text-to-text model in process. The tiny random one writes
    gibberish, so every judgement fails, counted and explained: on a ShapesEdit request (oracle
    principles) at the verdict, on a real image (principles from the same VLM) at the principles."""
    from PIL import Image

    from earl.shapes.edits import make_sample
    from earl.shapes.render import render
    from earl.verify.base import EditRequest, build_verifier

    v = build_verifier("rrm", vlm_path=str(tiny_vlm_dir), max_new_tokens=8, principle_cache=None, retries=0)
    s = make_sample(random.Random(0), "simple", image_size=64)
    shapes = EditRequest(render(s.source_scene), s.instruction, render(s.target_scene),
                         meta={"source_scene": s.source_scene.to_dict(), "target_scene": s.target_scene.to_dict()})
    photo = EditRequest(Image.new("RGB", (32, 32), "red"), "make it blue", Image.new("RGB", (32, 32), "blue"))
    a, b = v.score([shapes, photo])
    assert a.failed and a.error == "unparseable verdicts" and a.reward is None
    assert b.failed and b.error.startswith("no principles")


def test_real_cold_start_traces_keep_the_best_agreeing_candidate_and_resume(tmp_path, capsys):
    """Writer VLM samples traces, a stronger verifier's verdicts are the labels, the most agreeing trace
    is kept; a re-run skips what is written; a cut-off last line is redone."""
    from earl.cli import main
    from earl.serve.judge import JudgeServer
    from earl.verify.local_vlm import Completion
    from earl.verify.messages import split_images

    points = [{"question": f"Q{i}?", "category": c} for i, c in
              enumerate(["instruction"] * 4 + ["preservation"] * 3 + ["quality"] * 3)]

    def trace(yes: int, score: float) -> str:
        return "\n".join(f"{i}. {'yes' if i <= yes else 'no'} - r" for i in range(1, 11)) + f"\n<score>{score}</score>"

    writer_replies = iter([trace(2, 2), "not a trace", trace(7, 7), trace(9, 9)] * 10)
    calls = {"writer": 0, "verifier": 0}

    def writer(requests):
        calls["writer"] += len(requests)
        return [Completion(next(writer_replies), 1, 1, "stop") for _ in requests]

    def verifier(requests):
        out = []
        for r in requests:
            calls["verifier"] += 1
            text = json.dumps(split_images(r.messages)[0])
            out.append(Completion(json.dumps(points) if "yes/no questions" in text else trace(6, 6), 1, 1, "stop"))
        return out

    servers = [JudgeServer(("127.0.0.1", 0), fn, model_name="m").start() for fn in (writer, verifier)]
    out = tmp_path / "traces.jsonl"
    args = ["data", "rrm-traces", "--pairs", str(_write_pair_file(tmp_path, [_pair("bright", "dark", "a")])),
            "--out", str(out), "--writer-base-url", servers[0].url, "--verifier-base-url", servers[1].url,
            "--principle-cache", str(tmp_path / "pc"), "-n", "4", "--retries", "0", "--concurrency", "1"]
    try:
        assert main(args) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 2 and calls["writer"] == 8
        for row in rows:  # the reference says 6 yes: the 7-yes candidate agrees on 9 of 10 points
            assert row["trace"] == trace(7, 7) and row["agreement"] == 0.9 and row["candidates"] == 3
            assert row["messages"][1]["content"] == row["trace"] and "Request (JSON)" in row["messages"][0]["content"][2]["text"]
        assert main(args) == 0 and calls["writer"] == 8  # all done: nothing asked again
        out.write_text(out.read_text().splitlines()[0] + "\n" + out.read_text().splitlines()[1][:30])  # a crash
        assert main(args) == 0 and calls["writer"] == 12 and len(out.read_text().splitlines()) == 2
    finally:
        for s in servers:
            s.close()
    assert "2 traces written" in capsys.readouterr().out.splitlines()[0]


def test_trace_file_resumes_after_a_torn_last_line(tmp_path):
    """The cold-start trace file keeps every whole line byte for byte and loses the half-written one."""
    from earl.rrm.real_traces import _read_done

    out = tmp_path / "traces.jsonl"
    whole = "".join(json.dumps({"key": f"k{i}", "score": i / 3, "text": "é\n"}) + "\n" for i in range(3))
    out.write_text(whole + '{"key": "k3", "sco')
    assert _read_done(out) == {"k0", "k1", "k2"}
    assert out.read_text() == whole
    assert _read_done(tmp_path / "none.jsonl") == set()
