"""The principle writer: its reply format and named failures, the template parser that reads each
question back into the oracle's check, the agreement count, the chat writer, and a tiny training run."""

import json
import random
from pathlib import Path

import pytest

from earl.config import load_config
from earl.rrm.agreement import (
    TEMPLATES,
    Agreement,
    matched_points,
    normalise,
    question_check,
    question_template,
)
from earl.rrm.principles import QUALITY, EvalPoint, parse_points, point_pool, shapes_points
from earl.rrm.prompt import points_text
from earl.rrm.writer import (
    ChatPrincipleWriter,
    PrincipleFailure,
    points_to_json,
    read_numbered_points,
    read_points,
)
from earl.shapes.dataset import generate_samples

ROOT = Path(__file__).resolve().parents[2]


def _samples(n=150):
    return [s for split in ("simple", "complex") for s in generate_samples(split, n, 7)]


def _as_decoded(text: str) -> str:
    """What a word-level tokenizer gives back: lower case, every word and mark spaced out."""
    return normalise(text)


def test_every_template_reads_back_to_its_check_also_as_decoded():
    seen = set()
    for k, s in enumerate(_samples()):
        for p in shapes_points(s.source_scene, s.target_scene, seed=k):
            for text in (p.question, _as_decoded(p.question)):
                name, check = question_template(text)
                assert check == p.check, (p.question, check)
            seen.add(name.split(":")[-1])
    assert seen == {name for name, _, _ in TEMPLATES}  # every phrasing in principles.py was met and read


@pytest.mark.parametrize("question", ["Is the background purple?", "Is row 9, column 1 empty?",
                                      "Is there a huge red circle at row 1, column 1?", "Is the edit good?",
                                      "Does the edit do what was asked, namely: is it nice?", ""])
def test_a_question_in_no_template_or_out_of_range_has_no_check(question):
    assert question_check(question) is None


def test_the_numbered_form_round_trips_through_parse_points():
    s = _samples(3)[4]
    points = shapes_points(s.source_scene, s.target_scene, seed=3)
    for text in (points_text(points), _as_decoded(points_text(points))):
        got = read_numbered_points(text)
        assert [question_check(p.question) for p in got] == [p.check for p in points]
        assert [p.category for p in got] == [p.category for p in points]
        assert [(p.question, p.category) for p in parse_points(points_to_json(text))] == \
            [(p.question, p.category) for p in got]


def _numbered(cats):
    return " ".join(f"{i}. ({c}) Is the background white?" for i, c in enumerate(cats, 1))


GOOD = ["instruction"] * 4 + ["preservation"] * 3 + ["quality"] * 3


@pytest.mark.parametrize("text, finished, kind", [
    (_numbered(GOOD[:9]), True, "too_few"),
    (_numbered(GOOD + ["quality"]), True, "too_many"),
    (_numbered(["instruction"] * 7 + ["quality"] * 3), True, "categories"),
    ("the edit should look nice", True, "malformed"),
    (_numbered(GOOD).replace("3. (", "4. ("), True, "malformed"),
    (_numbered(GOOD).replace("(quality)", "(style)"), True, "malformed"),
    ("preface " + _numbered(GOOD), True, "malformed"),
    (_numbered(GOOD), False, "unfinished"),
])
def test_a_reply_that_cannot_be_read_is_a_named_failure(text, finished, kind):
    got = read_numbered_points(text, finished)
    assert isinstance(got, PrincipleFailure) and got.kind == kind and got.raw == text


def test_read_points_accepts_and_refuses_exactly_what_parse_points_does():
    rng = random.Random(0)
    good = [{"question": f"q{i}?", "category": c} for i, c in enumerate(GOOD)]
    replies = [json.dumps(good), "```json\n" + json.dumps(good) + "\n```", json.dumps(good[:9]), json.dumps(good * 2),
               "[1, 2", "no list here", json.dumps({"a": 1}), json.dumps([{"question": "", "category": "quality"}] * 10)]
    for _ in range(30):
        items = [dict(it) for it in good]
        rng.shuffle(items)
        items[rng.randrange(10)]["category"] = rng.choice(["instruction", "preservation", "quality", "style"])
        replies.append(json.dumps(items))
    for reply in replies:
        want, got = parse_points(reply), read_points(reply)
        if want is None:
            assert isinstance(got, PrincipleFailure), reply
        else:
            assert got == want
    assert read_points(json.dumps(good[:9])).kind == "too_few"
    assert read_points(json.dumps(good * 2)).kind == "too_many"


def test_agreement_matches_one_to_one_by_check_and_counts_failures():
    s = _samples(3)[1]
    exact = shapes_points(s.source_scene, s.target_scene, seed=0)
    reworded = [EvalPoint(_as_decoded(p.question), "quality") for p in exact]  # category not compared
    assert matched_points(reworded, exact) == [True] * 10
    twice = [exact[0]] * 2 + list(QUALITY) + [EvalPoint("Is the edit good?", "instruction")] * 5
    got = matched_points(twice, exact)
    assert sum(got) == 1 + 3  # the repeated point matches once, the quality points once each
    agree = Agreement()
    agree.add(exact, exact, point_pool(s.source_scene, s.target_scene))
    agree.add(twice, exact, point_pool(s.source_scene, s.target_scene))
    agree.add(PrincipleFailure("too_few"), exact)
    out = agree.summary()
    assert out["exact_points_matched"]["k"] == 14 and out["exact_points_matched"]["n"] == 30
    assert out["failures"] == {"too_few": 1} and out["requests_all_matched"]["k"] == 1
    assert out["written_points"] == 20 and out["written_unreadable"]["k"] == 5
    lo, hi = out["exact_points_matched"]["ci95"]
    assert lo < 14 / 30 < hi


class _Backend:
    """A chat backend with scripted replies, one list per call in order."""

    def __init__(self, replies):
        self.replies, self.calls = list(replies), 0

    async def chat(self, messages, max_tokens, temperature):
        self.calls += 1
        return self.replies.pop(0)

    async def aclose(self):
        pass


def test_the_chat_writer_reads_names_failures_and_caches_only_success(tmp_path):
    from PIL import Image

    good = json.dumps([{"question": f"q{i}?", "category": c} for i, c in enumerate(GOOD)])
    backend = _Backend([good, "nonsense", "nonsense", "nonsense"])
    w = ChatPrincipleWriter(backend, cache=tmp_path / "cache", retries=2)
    im = Image.new("RGB", (8, 8))
    got = w.write([im], ["make it red"])
    assert isinstance(got[0], list) and len(got[0]) == 10
    assert w.write([im], ["make it red"]) == got and backend.calls == 1  # from the cache
    failed = w.write([im], ["make it blue"])
    assert isinstance(failed[0], PrincipleFailure) and failed[0].kind == "malformed" and backend.calls == 4
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_a_tiny_writer_trains_and_writes(tmp_path, tiny_editor):
    import torch

    from earl.model import UnifiedEditor
    from earl.rrm.writer import UnifiedPrincipleWriter
    from earl.train.writer import WriterRecipe, draw_samples, train_principle_writer

    tiny_editor.save_pretrained(tmp_path / "editor")
    over = {"out_dir": tmp_path / "w", "model.init_from": tmp_path / "editor", "data.samples": 8,
            "data.eval_samples": 1, "data.max_new_tokens": 6, "run.steps": 3, "run.batch_size": 4,
            "run.eval_every": 3, "run.save_every": 3, "run.mixed_precision": '"no"'}
    cfg = load_config(WriterRecipe, ROOT / "recipes/shapes/principle_writer.yaml", [f"{k}={v}" for k, v in over.items()])
    report = train_principle_writer(cfg, progress=False)
    assert "eval/exact_points_matched" in report
    model = UnifiedEditor.from_pretrained(tmp_path / "w/model")
    before = tiny_editor.backbone.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(model.backbone.model.layers[0].mlp.up_proj.weight, before)
    s = draw_samples(["simple"], 2, 5, image_size=32)
    from earl.shapes.render import render

    got = UnifiedPrincipleWriter(model, max_new_tokens=6).write([render(x.source_scene) for x in s],
                                                                [x.instruction for x in s])
    assert all(isinstance(g, PrincipleFailure) and g.kind == "unfinished" for g in got)  # 6 tokens cannot end a list
    # the CLI's agreement report on the fixed test sets: every request counted, a failure named, never guessed
    from earl.cli import main

    assert main(["eval", "writer", "--model", str(tmp_path / "w/model"), "--n", "2", "--out", str(tmp_path / "a.json")]) in (0, None)
    agreement = json.loads((tmp_path / "a.json").read_text())
    assert set(agreement) == {"simple", "complex"}
    for split in agreement.values():
        w = split["writer"]
        assert w["requests"] == 2 and w["failed_requests"]["k"] == sum(w["failures"].values())
        assert split["perfect_writer_other_seed"]["exact_points_matched"]["share"] > 0.5
