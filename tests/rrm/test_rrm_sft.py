"""The reward model's cold start end to end on a tiny config: data, SFT, greedy verdicts, the verifier."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from earl.config import load_config
from earl.rrm.coldstart import make_examples, read_scan, scene_scan
from earl.rrm.prompt import normalise_decoded
from earl.rrm.trace import parse_trace
from earl.shapes.edits import make_sample

ROOT = Path(__file__).resolve().parents[2]


def shapes_request(seed: int, edit_id: str):
    """A simple ShapesEdit sample as a verifier request whose edited image is the exact target."""
    from earl.shapes.render import render
    from earl.verify.base import EditRequest

    s = make_sample(random.Random(seed), "simple", image_size=32)
    return EditRequest(render(s.source_scene), s.instruction, render(s.target_scene),
                       {"id": edit_id, "source_scene": json.dumps(s.source_scene.to_dict()),
                        "target_scene": json.dumps(s.target_scene.to_dict())})


@pytest.mark.parametrize("reason_first,scan,quote_scan,expect", [(True, False, False, False), (False, False, False, False),
                                                                  (True, True, False, False), (False, True, False, False),
                                                                  (True, True, True, False), (True, True, True, True)])
def test_traces_survive_a_word_level_tokenizer(vq_tokenizer, reason_first, scan, quote_scan, expect):
    """What the model is trained to write comes back through tokenize -> decode -> normalise -> parse,
    in either order of verdict and reason, with or without an opening scan of the image."""
    from earl.text import build_word_tokenizer
    from earl.train.rrm import _judge_corpus
    from tokenizer import pil_to_tensor, tensor_to_pil

    rng = random.Random(0)
    samples = [make_sample(rng, "simple", image_size=32) for _ in range(3)]
    ex = make_examples(samples, lambda ims: vq_tokenizer.encode(pil_to_tensor(ims)),
                       lambda c: tensor_to_pil(vq_tokenizer.decode(c)), reason_first=reason_first, scan=scan,
                       quote_scan=quote_scan, expect=expect)
    assert ex[0]["trace"].startswith("seen :") == scan
    assert (" , expected " in ex[0]["trace"]) == expect
    first_line = ex[0]["trace"].splitlines()[int(scan)]
    assert first_line.endswith((" - yes", " - no")) == reason_first, first_line
    tok = build_word_tokenizer(_judge_corpus(ex))
    ex[0]["trace"] = ex[0]["trace"].replace(f"<score>{ex[0]['score']:g}</score>", "<score>7.5</score>")
    for e in ex:
        decoded = tok.decode(tok(e["trace"], add_special_tokens=False)["input_ids"])
        v = parse_trace(normalise_decoded(decoded), 10)
        assert v is not None and v.passed == e["passed"], decoded
        assert read_scan(normalise_decoded(decoded)) == read_scan(e["trace"])
        assert (read_scan(e["trace"]) is not None) == scan
    assert parse_trace(normalise_decoded(tok.decode(tok(ex[0]["trace"])["input_ids"])), 10).score == 7.5


def test_the_scan_describes_every_cell_in_reading_order_as_the_oracle_sees_it():
    from earl.rrm.trace import format_trace
    from earl.shapes.scene import Scene, ShapeObject

    scene = Scene("light gray", (ShapeObject("circle", "red", "small", 0, 1), ShapeObject("square", "green", "large", 3, 3)),
                  image_size=64, grid=4)
    scan = read_scan(scene_scan(scene))
    assert list(scan) == ["background"] + [f"r{r}c{c}" for r in range(1, 5) for c in range(1, 5)]
    assert scan["background"] == "light gray" and scan["r1c2"] == "small red circle" and scan["r4c4"] == "large green square"
    assert sum(v == "nothing" for v in scan.values()) == 14
    assert read_scan("1. yes - fine\n<score>3</score>") is None
    trace = format_trace([True, False], ["a", "b"], 5.0, reason_first=True, preface=scene_scan(scene))
    assert trace.splitlines()[0] == scene_scan(scene) and parse_trace(trace, 2).passed == [True, False]
    with pytest.raises(ValueError, match="preface"):
        format_trace([True], ["a"], 5.0, preface="1. yes - sneaky")


def test_quoted_reasons_repeat_the_scan_entries_word_for_word(vq_tokenizer):
    """With quote_scan every cell and background reason is the scan's entry for that cell, as written
    in the scan, and scan_form maps the prose reasons (also as a word tokenizer spaces them) onto them."""
    from earl.rrm.coldstart import scan_form
    from tokenizer import pil_to_tensor, tensor_to_pil

    assert scan_form("row 2, column 1 holds a small red circle") == "r2c1 small red circle"
    assert scan_form("row 4 , column 3 holds nothing") == "r4c3 nothing"
    assert scan_form("the background is light gray") == "background light gray"
    assert scan_form("no stray colours") == "no stray colours"
    assert scan_form("the background is uneven") == "the background is uneven"  # a quality reason, not a colour
    samples = [make_sample(random.Random(k), "complex", image_size=32) for k in range(3)]
    kw = dict(encode=lambda ims: vq_tokenizer.encode(pil_to_tensor(ims)),
              decode=lambda c: tensor_to_pil(vq_tokenizer.decode(c)), scan=True)
    prose, quoted = make_examples(samples, **kw), make_examples(samples, **kw, quote_scan=True)
    n_quoted = 0
    for p, q in zip(prose, quoted):
        assert p["passed"] == q["passed"] and p["score"] == q["score"]
        scan = read_scan(q["trace"])
        for line_p, line_q in zip(p["trace"].splitlines()[1:-1], q["trace"].splitlines()[1:-1]):
            reason_p, reason_q = line_p.split(". ", 1)[1].rsplit(" - ", 1)[0], line_q.split(". ", 1)[1].rsplit(" - ", 1)[0]
            assert scan_form(reason_p) == reason_q
            key, _, rest = reason_q.partition(" ")
            if key in scan:
                assert scan[key] == rest, (reason_q, scan)
                n_quoted += 1
    assert n_quoted > len(quoted)  # most candidates have several cell or background points
    with pytest.raises(ValueError, match="quote_scan needs scan"):
        make_examples(samples[:1], **{**kw, "scan": False}, quote_scan=True)


def test_expect_traces_put_each_verdict_beside_the_two_phrases_it_compares(vq_tokenizer):
    """With expect, a cell or background point's line reads `<scan entry> , expected <what the point
    wants>`, and its verdict is what comparing those two phrases gives: equal for object, empty and
    background checks, different for the `not` checks, the word present for attribute and count
    checks. Verdicts, scores and the observed part are those of the quoted trace without it."""
    from earl.rrm.coldstart import EXPECT_SEPARATOR, observed_part
    from earl.rrm.scoring import _same_words
    from tokenizer import pil_to_tensor, tensor_to_pil

    samples = [make_sample(random.Random(k), "complex", image_size=32) for k in range(4)]
    kw = dict(encode=lambda ims: vq_tokenizer.encode(pil_to_tensor(ims)),
              decode=lambda c: tensor_to_pil(vq_tokenizer.decode(c)), scan=True, quote_scan=True)
    quoted, expect = make_examples(samples, **kw), make_examples(samples, **kw, expect=True)
    by_kind, n_failing = {}, 0
    for q, e in zip(quoted, expect):
        assert q["passed"] == e["passed"] and q["score"] == e["score"]
        scan = read_scan(e["trace"])
        for point, ok, line_q, line_e in zip(e["points"], e["passed"], q["trace"].splitlines()[1:-1],
                                             e["trace"].splitlines()[1:-1]):
            reason_q, reason_e = (ln.split(". ", 1)[1].rsplit(" - ", 1)[0] for ln in (line_q, line_e))
            assert observed_part(reason_e) == reason_q and _same_words(reason_e, reason_q)
            kind = point.check["kind"]
            if kind in ("no_extra", "quality"):
                assert EXPECT_SEPARATOR not in reason_e
                continue
            seen, want = reason_e.split(EXPECT_SEPARATOR)
            key, _, entry = seen.partition(" ")
            if kind in ("object", "empty", "background"):
                assert scan[key] == entry and ok == (entry == want), line_e
            elif kind in ("not_object", "background_not"):
                assert want.startswith("not ") and ok == (entry != want[4:]), line_e
            else:  # attribute, count: the wanted word among those seen
                assert ok == (want in seen.split()), line_e
            by_kind[kind] = by_kind.get(kind, 0) + 1
            n_failing += not ok
    assert {"object", "empty", "attribute"} <= set(by_kind) and n_failing > 10, (by_kind, n_failing)
    with pytest.raises(ValueError, match="expect needs quote_scan"):
        make_examples(samples[:1], **{**kw, "quote_scan": False}, expect=True)


def test_a_lenient_verifier_passes_some_failing_points_and_changes_nothing_else(vq_tokenizer):
    """With verifier_miss the same samples and candidates get traces whose verdicts pass about that share
    of the failing points (passing points stay passed), each score follows its written verdicts
    (`score_rule`), every reason and the scan are the oracle's, and `true_passed` keeps the truth."""
    from earl.rrm.coldstart import lenient_verdicts, score_rule
    from earl.shapes.oracle import parse_scene
    from tokenizer import pil_to_tensor, tensor_to_pil

    samples = [make_sample(random.Random(k), "complex", image_size=32) for k in range(12)]
    kw = dict(encode=lambda ims: vq_tokenizer.encode(pil_to_tensor(ims)),
              decode=lambda c: tensor_to_pil(vq_tokenizer.decode(c)), scan=True, quote_scan=True, expect=True)
    exact, lenient = make_examples(samples, **kw), make_examples(samples, **kw, verifier_miss=0.5)
    assert "true_passed" not in exact[0] and len(exact) == len(lenient)
    missed = failing = 0
    for e, n in zip(exact, lenient):
        assert torch.equal(e["codes"], n["codes"]) and e["kind"] == n["kind"] and n["true_passed"] == e["passed"]
        assert all(ok for ok, truth in zip(n["passed"], e["passed"]) if truth)
        failing += e["passed"].count(False)
        missed += sum(ok for ok, truth in zip(n["passed"], e["passed"]) if not truth)
        got, want = parse_trace(n["trace"], 10), parse_trace(e["trace"], 10)
        assert got.passed == n["passed"] and got.reasons == want.reasons and read_scan(n["trace"]) == read_scan(e["trace"])
        found = parse_scene(tensor_to_pil(vq_tokenizer.decode(n["codes"][None]))[0], image_size=32,
                            grid=samples[n["sample"]].target_scene.grid).scene
        s = samples[n["sample"]]
        assert got.score == n["score"] == score_rule(n["passed"], n["points"], s.source_scene, s.target_scene, found)
    assert failing > 60 and 0.3 < missed / failing < 0.7, (missed, failing)
    assert sum(e["score"] < n["score"] for e, n in zip(exact, lenient)) > 10  # missed failures raise the score
    assert lenient_verdicts([True, False], 0.0, random.Random(0)) == [True, False]
    assert lenient_verdicts([True, False], 1.0, random.Random(0)) == [True, True]
    with pytest.raises(ValueError, match="miss rate must be in"):
        lenient_verdicts([False], 1.5, random.Random(0))


def test_tiny_rrm_sft_learns_and_serves_as_a_verifier(tmp_path, vq_tokenizer):
    from earl.train.rrm import RRMRecipe, train_rrm_sft
    from earl.verify.base import build_verifier

    vq_tokenizer.save_pretrained(tmp_path / "tok")
    over = {"out_dir": tmp_path / "rrm", "model.size": "shapes-test", "model.image_tokenizer": tmp_path / "tok",
            "model.image_size": 32, "data.samples": 6, "data.eval_samples": 2, "data.max_new_tokens": 40,
            "run.steps": 30, "run.batch_size": 8, "run.log_every": 1, "run.eval_every": 30, "run.save_every": 30,
            "run.mixed_precision": '"no"', "optim.lr": 3e-3, "optim.warmup_steps": 2}
    cfg = load_config(RRMRecipe, ROOT / "recipes/shapes/rrm_sft.yaml", [f"{k}={v}" for k, v in over.items()])
    final = train_rrm_sft(cfg, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "rrm/metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < 0.6 * losses[0], losses
    assert 0.0 <= final["eval/parse_failed"] <= 1.0
    # `earl eval rrm`: the recipe's held-out evaluation re-run on the saved model gives the same figures
    from earl.cli import main
    from earl.errors import ConfigError
    from earl.train.rrm import evaluate_saved_rrm

    assert main(["eval", "rrm", str(ROOT / "recipes/shapes/rrm_sft.yaml"), *[f"{k}={v}" for k, v in over.items()],
                 "--model", str(tmp_path / "rrm/model"), "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    (logged,) = [{k: v for k, v in r.items() if k.startswith("eval/")} for r in rows if "eval/parse_failed" in r]
    assert "eval/score_mae" in logged and {k: again[k] for k in logged} == pytest.approx(logged, nan_ok=True)
    with pytest.raises(ConfigError, match="no editor.json"):
        evaluate_saved_rrm(cfg, str(tmp_path))
    # the trained model as the `rrm` verifier: every edit gets a parsed score in [0, 1] or an explicit failure
    req = shapes_request(5, "x")
    v = build_verifier("rrm", model_path=str(tmp_path / "rrm/model"), max_new_tokens=40)
    (res,) = v.score([req])
    assert (res.failed and res.reward is None and res.error) or (0.0 <= res.reward <= 1.0 and len(res.principles) == 10)
    assert torch.is_tensor(v.editor.encode_images([v.editor.preprocess(req.source)[0]]))


def test_rrm_over_http_matches_in_process(tmp_path, tiny_editor):
    """`earl serve judge` serving a reward-model directory: the client's verdict texts equal the in-process ones."""
    from earl.rrm.serving import is_rrm_dir, rrm_engine
    from earl.serve.judge import JudgeServer
    from earl.verify.base import build_verifier

    tiny_editor.save_pretrained(tmp_path / "rrm")
    assert is_rrm_dir(tmp_path / "rrm")
    reqs = [shapes_request(k, str(k)) for k in range(3)]
    local = build_verifier("rrm", model_path=str(tmp_path / "rrm"), max_new_tokens=12).score(reqs)
    server = JudgeServer(("127.0.0.1", 0), rrm_engine(str(tmp_path / "rrm"), max_new_tokens=12), model_name="rrm",
                         max_batch=4).start()
    try:
        remote = build_verifier("rrm", base_url=server.url, max_new_tokens=12, retries=0).score(reqs)
    finally:
        server.close()
    assert [r.raw for r in remote] == [r.raw for r in local]
    assert all(r.failed == loc.failed for r, loc in zip(remote, local))


def test_rrm_sft_can_start_from_an_editor(tmp_path, tiny_editor):
    """init_from: the editor's backbone and image tokenizer, its vocabulary grown by the judge words."""
    from earl.model import UnifiedEditor
    from earl.train.rrm import RRMRecipe, train_rrm_sft

    tiny_editor.save_pretrained(tmp_path / "editor")
    over = {"out_dir": tmp_path / "rrm", "model.init_from": tmp_path / "editor", "model.image_tokenizer": "nowhere",
            "data.samples": 3, "data.eval_samples": 1, "data.max_new_tokens": 8, "run.steps": 2, "run.batch_size": 4,
            "run.eval_every": 2, "run.save_every": 2, "run.mixed_precision": '"no"'}
    cfg = load_config(RRMRecipe, ROOT / "recipes/shapes/rrm_sft.yaml", [f"{k}={v}" for k, v in over.items()])
    train_rrm_sft(cfg, progress=False)
    rrm = UnifiedEditor.from_pretrained(tmp_path / "rrm/model")
    vocab = rrm.text_tokenizer.get_vocab()
    assert "judge" in vocab and all(w in vocab for w in tiny_editor.text_tokenizer.get_vocab())
    assert rrm.config.image_size == tiny_editor.config.image_size == 32
    assert rrm.backbone.config.hidden_size == tiny_editor.backbone.config.hidden_size


@pytest.mark.parametrize("scan", [False, True])
def test_failing_point_weights_mark_the_failing_lines_and_weigh_the_loss(vq_tokenizer, scan):
    """judge_example's weighted form has the same tokens, with the failing points' lines weighted;
    lm_loss with unit weights is the model's own loss, and weights move it toward the weighted tokens."""
    from earl.model import UnifiedEditor
    from earl.rrm.prompt import judge_example
    from earl.text import build_word_tokenizer
    from earl.train.lm import lm_loss
    from earl.train.rrm import _judge_corpus
    from tokenizer import pil_to_tensor, tensor_to_pil

    samples = [make_sample(random.Random(3), "simple", image_size=32)]
    ex = make_examples(samples, lambda ims: vq_tokenizer.encode(pil_to_tensor(ims)),
                       lambda c: tensor_to_pil(vq_tokenizer.decode(c)), scan=scan)
    e = next(x for x in ex if not all(x["passed"]))
    ed = UnifiedEditor.build("shapes-test", vq_tokenizer, build_word_tokenizer(_judge_corpus(ex)), 32, seed=0)
    args = (ed.layout, e["instruction"], e["points"], e["source_codes"], e["codes"], e["trace"])
    plain, weighted = judge_example(*args), judge_example(*args, passed=e["passed"], failing_point_weight=5.0)
    assert weighted.input_ids == plain.input_ids and weighted.loss_mask == plain.loss_mask
    w = torch.tensor(weighted.loss_weights)
    assert (w[: weighted.prompt_len] == 0).all() and set(w[weighted.prompt_len:].tolist()) == {1.0, 5.0}
    # the weighted tokens are exactly the failing lines' words
    ids = torch.tensor(weighted.input_ids)[w == 5.0].tolist()
    failing = [ln for ln, ok in zip(e["trace"].split("\n")[int(scan):], e["passed"]) if not ok]
    assert ids == [i for ln in failing for i in ed.layout.encode_text(ln)]

    ed.backbone.eval()
    unit = ed.layout.collate([plain, plain])
    unit["loss_weights"] = (unit["labels"] != -100).float()
    assert torch.allclose(lm_loss(ed.backbone, unit), ed.backbone(**ed.layout.collate([plain, plain])).loss, atol=1e-5)
    batch = ed.layout.collate([weighted, plain])
    assert "loss_weights" in batch and batch["loss_weights"][1].max() == 1.0
    assert not torch.allclose(lm_loss(ed.backbone, batch), lm_loss(ed.backbone, unit))


def test_failing_observation_weight_marks_only_what_failing_points_saw(vq_tokenizer):
    """With expect traces, failing_observation_weight weighs the observed words of failing lines
    (`r1c2 nothing` in `3. r1c2 nothing , expected ... - no`) and nothing else; scan_weight the scan
    line; the tokens stay those of the unweighted example."""
    from earl.model import UnifiedEditor
    from earl.rrm.coldstart import observed_part
    from earl.rrm.prompt import judge_example
    from earl.text import build_word_tokenizer
    from earl.train.rrm import _judge_corpus
    from tokenizer import pil_to_tensor, tensor_to_pil

    samples = [make_sample(random.Random(s), "simple", image_size=32) for s in range(4)]
    ex = make_examples(samples, lambda ims: vq_tokenizer.encode(pil_to_tensor(ims)),
                       lambda c: tensor_to_pil(vq_tokenizer.decode(c)), scan=True, quote_scan=True, expect=True)
    e = next(x for x in ex if sum(not p for p in x["passed"]) >= 2)
    ed = UnifiedEditor.build("shapes-test", vq_tokenizer, build_word_tokenizer(_judge_corpus(ex)), 32, seed=0)
    args = (ed.layout, e["instruction"], e["points"], e["source_codes"], e["codes"], e["trace"], e["passed"])
    plain = judge_example(*args[:6])
    weighted = judge_example(*args, failing_observation_weight=4.0, scan_weight=2.0)
    assert weighted.input_ids == plain.input_ids and weighted.loss_mask == plain.loss_mask
    w = torch.tensor(weighted.loss_weights)
    ids = torch.tensor(weighted.input_ids)
    lines = e["trace"].split("\n")
    assert ids[w == 2.0].tolist() == ed.layout.encode_text(lines[0])
    failing = [ln for ln, ok in zip(lines[1:], e["passed"]) if not ok]
    seen = [observed_part(ln.split(".", 1)[1].rsplit(" - ", 1)[0]) for ln in failing]
    assert ids[w == 4.0].tolist() == [i for s in seen for i in ed.layout.encode_text(s)]
    assert all(s and ", expected" not in s for s in seen)
    # combined with the whole-line weight, the observation gets the product
    both = torch.tensor(judge_example(*args, failing_point_weight=3.0, failing_observation_weight=4.0).loss_weights)
    assert set(both[weighted.prompt_len:].tolist()) == {1.0, 3.0, 12.0}
    assert ((both == 12.0) == (w == 4.0)).all()


def test_a_non_positive_failing_point_weight_is_refused_naming_the_field():
    from earl.errors import ConfigError
    from earl.train.rrm import RRMRecipe

    with pytest.raises(ConfigError, match="failing_point_weight"):
        load_config(RRMRecipe, ROOT / "recipes/shapes/rrm_sft.yaml", ["data.failing_point_weight=0"])
    with pytest.raises(ConfigError, match="quote_scan"):
        load_config(RRMRecipe, ROOT / "recipes/shapes/rrm_sft.yaml", ["data.quote_scan=true"])
    with pytest.raises(ConfigError, match="failing_observation_weight"):
        load_config(RRMRecipe, ROOT / "recipes/shapes/rrm_sft.yaml", ["data.failing_observation_weight=-1"])
    with pytest.raises(ConfigError, match="scan_weight needs data.scan"):
        load_config(RRMRecipe, ROOT / "recipes/shapes/rrm_sft.yaml", ["data.scan_weight=3"])
    with pytest.raises(ConfigError, match="data.expect needs data.quote_scan"):
        load_config(RRMRecipe, ROOT / "recipes/shapes/rrm_sft.yaml", ["data.scan=true", "data.expect=true"])
    with pytest.raises(ConfigError, match="data.verifier_miss must be in"):
        load_config(RRMRecipe, ROOT / "recipes/shapes/rrm_sft.yaml", ["data.verifier_miss=1"])


def test_evaluation_scores_the_scan_entry_by_entry(vq_tokenizer, monkeypatch):
    """evaluate_rrm compares a generated scan with the oracle's entry by entry; a missing scan counts wrong."""
    import earl.train.rrm as train_rrm
    from earl.train.rrm import evaluate_rrm
    from tokenizer import pil_to_tensor, tensor_to_pil

    samples = [make_sample(random.Random(4), "simple", image_size=32)]
    ex = make_examples(samples, lambda ims: vq_tokenizer.encode(pil_to_tensor(ims)),
                       lambda c: tensor_to_pil(vq_tokenizer.decode(c)), scan=True)[:2]
    first, second = ex[0]["trace"].split("\n", 1), ex[1]["trace"].split("\n", 1)
    wrong_cell = first[0].replace("r1c1 ", "r1c1 large ", 1)  # one of 17 entries misread
    replies = [wrong_cell + "\n" + first[1], second[1]]  # the second reply has no scan at all
    monkeypatch.setattr(train_rrm, "generate_verdicts", lambda *a, **k: replies)

    class _Editor:
        backbone = torch.nn.Linear(1, 1)

    metrics = evaluate_rrm(_Editor(), ex, max_new_tokens=8)
    assert metrics["eval/scan_entries_right"] == pytest.approx(16 / 34)
    scans = [read_scan(e["trace"]) for e in ex]
    n0, n1 = (sum(v != "nothing" for k, v in sc.items() if k != "background") for sc in scans)
    right = n0 - (scans[0]["r1c1"] != "nothing")  # the misread cell counts among the objects if it holds one
    assert metrics["eval/scan_objects_right"] == pytest.approx(right / (n0 + n1))
    assert metrics["eval/parse_failed"] == 0.0 and metrics["eval/point_accuracy"] == 1.0


def test_expect_diagnostics_tell_a_copied_observation_from_a_skipped_comparison(vq_tokenizer):
    """On oracle traces every share is 1. A model that writes the expectation as what it saw (and so
    passes everything) copies the wanted phrase and follows its phrases, but observes no failing point
    right; one that observes right but answers yes everywhere does not follow its phrases."""
    import re

    from earl.rrm.coldstart import phrase_verdict
    from earl.train.rrm import expect_diagnostics
    from tokenizer import pil_to_tensor, tensor_to_pil

    samples = [make_sample(random.Random(k), "complex", image_size=32) for k in range(3)]
    ex = make_examples(samples, lambda ims: vq_tokenizer.encode(pil_to_tensor(ims)),
                       lambda c: tensor_to_pil(vq_tokenizer.decode(c)), scan=True, quote_scan=True, expect=True)
    oracle = [parse_trace(e["trace"], 10) for e in ex]
    for v, e in zip(oracle, ex):  # phrase_verdict reproduces the oracle's verdicts from its own phrases
        for p, ok, reason in zip(e["points"], v.passed, v.reasons):
            assert phrase_verdict(p.check["kind"], reason) in (None, ok)
    perfect = expect_diagnostics(oracle, ex)
    assert set(perfect.values()) == {1.0}

    def copy_expectation(line):
        m = re.match(r"^(\d+)\. (r\d+c\d+|background) (.*?) , expected (?!not )(.*) - (yes|no)$", line)
        return f"{m[1]}. {m[2]} {m[4]} , expected {m[4]} - yes" if m else line

    def say_yes(line):
        return re.sub(r" - no$", " - yes", line)

    def replies(fix):
        return [parse_trace("\n".join(fix(ln) for ln in e["trace"].splitlines()), 10) for e in ex]

    copying = expect_diagnostics(replies(copy_expectation), ex)
    assert copying["eval/expect_wanted_right"] == 1.0 and copying["eval/expect_verdict_follows_phrases"] > 0.9
    # right only where the point passes and names a whole object (an attribute point's copy is one word)
    assert copying["eval/expect_observed_right_failing"] < min(0.5, copying["eval/expect_observed_right"])
    yes_man = expect_diagnostics(replies(say_yes), ex)
    assert yes_man["eval/expect_observed_right"] == 1.0 and yes_man["eval/expect_verdict_follows_phrases"] < 1.0
    assert expect_diagnostics(oracle, [{**e, "trace": e["trace"].replace(" , expected", " ; wanted")} for e in ex]) == {}


def test_rrm_verifier_avg_at_k_averages_the_parsed_samples_and_fails_only_when_none_parse(tmp_path, tiny_editor,
                                                                                       monkeypatch):
    """samples=k: the reward is the mean score of the traces that parse; an edit fails only when none does;
    the real sampling path returns k texts per edit, reproducibly for one seed; bad options are refused."""
    from earl.errors import ConfigError
    from earl.rrm.trace import format_trace
    from earl.verify.base import build_verifier

    tiny_editor.save_pretrained(tmp_path / "rrm")
    reqs = [shapes_request(k, str(k)) for k in range(2)]
    v = build_verifier("rrm", model_path=str(tmp_path / "rrm"), max_new_tokens=6, samples=3, seed=1)
    texts = v.judge([r.instruction for r in reqs], [v.points_for(r) for r in reqs], [r.source for r in reqs],
                    [r.edited for r in reqs])
    assert [len(t) for t in texts] == [3, 3]
    again = build_verifier("rrm", model_path=str(tmp_path / "rrm"), max_new_tokens=6, samples=3, seed=1)
    assert again.judge([r.instruction for r in reqs], [again.points_for(r) for r in reqs], [r.source for r in reqs],
                       [r.edited for r in reqs]) == texts

    def trace(score, n_yes):
        return format_trace([i < n_yes for i in range(10)], ["r"] * 10, score)

    monkeypatch.setattr(v, "_judge", lambda *a: ([[trace(8.0, 8), "garbage", trace(5.0, 4)], ["no", "score", "here"]],
                                                 None))
    good, bad = v.score(reqs)
    assert good.reward == pytest.approx(0.65) and good.scores["parsed_samples"] == 2.0
    assert good.scores["point_average"] == pytest.approx(6.0) and len(good.principles) == 10
    assert bad.failed and bad.reward is None and "all 3 samples" in bad.error
    with pytest.raises(ConfigError, match="samples must be >= 1"):
        build_verifier("rrm", model_path=str(tmp_path / "rrm"), samples=0)
    with pytest.raises(ConfigError, match="earl's own model"):
        build_verifier("rrm", base_url="http://127.0.0.1:9", samples=4)


def test_rrm_verifier_expected_score_rewards_the_expectation_of_a_parsed_greedy_trace(tmp_path, tiny_editor,
                                                                                     monkeypatch):
    """expected_score: the reward is E[score] of the greedy trace (the written score kept beside it),
    a trace that does not parse still fails, and the option is refused where it cannot be read."""
    from earl.errors import ConfigError
    from earl.rrm.trace import format_trace
    from earl.verify.base import build_verifier

    tiny_editor.save_pretrained(tmp_path / "rrm")
    reqs = [shapes_request(k, str(k)) for k in range(2)]
    v = build_verifier("rrm", model_path=str(tmp_path / "rrm"), max_new_tokens=6, expected_score=True)
    texts, expectations = v._judge([r.instruction for r in reqs], [v.points_for(r) for r in reqs],
                                   [r.source for r in reqs], [r.edited for r in reqs])
    assert [len(t) for t in texts] == [1, 1] and expectations == [None, None]  # 6 untrained tokens: no score
    trace = format_trace([i < 8 for i in range(10)], ["r"] * 10, 8.0)
    monkeypatch.setattr(v, "_judge", lambda *a: ([[trace], ["garbage"]], [6.5, 3.0]))
    good, bad = v.score(reqs)
    assert good.reward == pytest.approx(0.65) and good.scores["written_score"] == 8.0
    assert bad.failed and bad.reward is None
    for bad_options in (dict(base_url="http://127.0.0.1:9"), dict(model_path=str(tmp_path / "rrm"), samples=4)):
        for readout in ("expected_score", "expected_points"):
            with pytest.raises(ConfigError, match=readout):
                build_verifier("rrm", **{readout: True}, **bad_options)
    with pytest.raises(ConfigError, match="at most one"):
        build_verifier("rrm", model_path=str(tmp_path / "rrm"), expected_score=True, expected_points=True)


def test_rrm_verifier_expected_points_rewards_the_mean_p_yes_of_the_greedy_verdicts(tmp_path, tiny_editor,
                                                                                    monkeypatch):
    """expected_points: the verifier asks generate_verdicts for the E[points] readout and rewards it / 10;
    a trace that parses but whose readout cannot be read fails rather than falling back to another scale."""
    from earl.rrm import verifier as rrm_verifier
    from earl.rrm.trace import format_trace
    from earl.verify.base import build_verifier

    tiny_editor.save_pretrained(tmp_path / "rrm")
    reqs = [shapes_request(k, str(k)) for k in range(2)]
    v = build_verifier("rrm", model_path=str(tmp_path / "rrm"), max_new_tokens=6, expected_points=True)
    asked = []
    trace = format_trace([i < 8 for i in range(10)], ["r"] * 10, 8.0)

    def fake_generate(editor, instructions, *args, readouts=()):
        asked.append(readouts)
        return [trace] * len(instructions), {r: [7.25, None] for r in readouts}

    monkeypatch.setattr(rrm_verifier, "generate_verdicts", fake_generate)
    good, none_read = v.score(reqs)
    assert asked == [("expected_points",)]
    assert good.reward == pytest.approx(0.725) and good.scores["written_score"] == 8.0
    assert none_read.failed and "expected_points" in none_read.error  # parsed, but not readable: a failure
