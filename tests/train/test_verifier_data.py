"""On-policy verifier data: teacher labels counted, noise, failures named, the budget, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from earl.errors import ConfigError
from earl.rrm.writer import PrincipleFailure
from earl.shapes.dataset import iter_samples, write_dataset
from earl.shapes.render import render
from earl.train.verifier_data import (
    OracleTeacher,
    TeacherError,
    VerifierDataBuilder,
    load_examples,
    summarise,
)

ROOT = Path(__file__).resolve().parents[2]
FMT = {"reason_first": True, "scan": True, "quote_scan": True, "expect": True}


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    """Six simple samples and two folders of 'policy outputs': the targets (mostly passing) and the
    sources (the edit not done: its instruction points fail)."""
    root = tmp_path_factory.mktemp("vd")
    data = write_dataset(root / "data", split="simple", n=6, seed=3, image_size=32)
    for name, scene in (("good", "target_scene"), ("lazy", "source_scene")):
        (root / name).mkdir()
        for s in iter_samples(data):
            render(getattr(s, scene)).save(root / name / f"{s.id}.png")
    return data, {"good": root / "good", "lazy": root / "lazy"}


class FailingWriter:
    """Writes the exact points, except for one instruction, which fails as a malformed reply would."""

    name = "scripted"

    def __init__(self, data, bad_instruction: str):
        from earl.rrm.principles import shapes_points

        self.points = {s.instruction: shapes_points(s.source_scene, s.target_scene, seed=0) for s in iter_samples(data)}
        self.bad, self.calls = bad_instruction, 0

    def write(self, sources, instructions):
        self.calls += len(instructions)
        return [PrincipleFailure("malformed", "scripted", "") if i == self.bad else self.points[i] for i in instructions]


def build(shapes_set, out, vq_tokenizer, writer="exact", teacher=None, **kw):
    data, images = shapes_set
    return VerifierDataBuilder(writer, vq_tokenizer, teacher or OracleTeacher(), FMT, **kw).build(
        data, images, out, progress=False)


def test_labels_are_counted_and_failures_named(shapes_set, tmp_path, vq_tokenizer):
    data, _ = shapes_set
    bad = next(iter_samples(data)).instruction
    m = build(shapes_set, tmp_path / "out", vq_tokenizer, writer=FailingWriter(data, bad), chunk=4)
    assert m["failures"] == {"principles:malformed": 2}  # the failing sample, once per origin
    assert m["labels"] == 10 and m["per_origin"] == {"good": 5, "lazy": 5}
    assert m["point_labels"] == 100 and m["point_labels_wrong"] == 0
    assert m["failing_points"] > 0  # the sources fail their instruction points
    examples, labels = load_examples([tmp_path / "out"])
    assert labels == 10 and len(examples) == 10
    assert all(e["passed"] == e["true_passed"] for e in examples)
    lazy = [e for e in examples if e["kind"] == "lazy"]
    assert all(not all(e["passed"]) for e in lazy)  # nothing done: some point fails on every one
    assert examples[0]["codes"].shape == examples[0]["source_codes"].shape


def test_teacher_noise_and_failures(shapes_set, tmp_path, vq_tokenizer):
    m = build(shapes_set, tmp_path / "noisy", vq_tokenizer, teacher=OracleTeacher(noise=0.3, seed=1))
    assert 0 < m["point_labels_wrong"] < m["point_labels"]
    assert m["teacher"]["noise"] == 0.3
    examples, _ = load_examples([tmp_path / "noisy"])
    truth, _ = load_examples([tmp_path / "noisy"], truth=True)
    assert any(e["passed"] != t["passed"] for e, t in zip(examples, truth))
    m = build(shapes_set, tmp_path / "failing", vq_tokenizer, teacher=OracleTeacher(fail_rate=0.5, seed=2))
    assert m["failures"].get("teacher_error", 0) > 0
    assert m["labels"] + m["failures"]["teacher_error"] == 12


class TimingOutTeacher(OracleTeacher):
    def label(self, key, truth):
        if key.startswith("lazy/"):
            raise TimeoutError("no answer in 30 s")
        return super().label(key, truth)


def test_a_teacher_that_times_out_is_counted_not_guessed(shapes_set, tmp_path, vq_tokenizer):
    m = build(shapes_set, tmp_path / "t", vq_tokenizer, teacher=TimingOutTeacher())
    assert m["failures"] == {"teacher_timeout": 6} and m["per_origin"] == {"good": 6}


def test_the_budget_caps_teacher_labels(shapes_set, tmp_path, vq_tokenizer):
    m = build(shapes_set, tmp_path / "b", vq_tokenizer, budget=5, chunk=4)
    assert m["labels"] == 5 and m["budget"] == 5
    again = build(shapes_set, tmp_path / "b", vq_tokenizer, budget=5, chunk=4)  # a rerun spends nothing more
    assert again["labels"] == 5


def test_an_interrupted_build_resumes_to_the_same_data(shapes_set, tmp_path, vq_tokenizer):
    data, _ = shapes_set
    teacher = OracleTeacher(noise=0.2, seed=4)
    build(shapes_set, tmp_path / "whole", vq_tokenizer, teacher=teacher, chunk=5)
    build(shapes_set, tmp_path / "cut", vq_tokenizer, teacher=teacher, chunk=5)
    shards = sorted((tmp_path / "cut" / "shards").glob("*.jsonl"))
    assert len(shards) == 3
    shards[-1].unlink()  # killed before its last chunk was written
    (tmp_path / "cut" / "manifest.json").unlink()
    writer = FailingWriter(data, bad_instruction="")
    m = build(shapes_set, tmp_path / "cut", vq_tokenizer, writer="exact", teacher=teacher, chunk=5)
    for a, b in zip(sorted((tmp_path / "whole" / "shards").glob("*.jsonl")), sorted((tmp_path / "cut" / "shards").glob("*.jsonl"))):
        assert a.read_text() == b.read_text()
    assert m == json.loads((tmp_path / "whole" / "manifest.json").read_text())
    # finished chunks are not redone: a writer sees only the samples of the missing chunk
    shards[-1].unlink()
    build(shapes_set, tmp_path / "cut", vq_tokenizer, writer=writer, teacher=teacher, chunk=5)
    assert writer.calls == 2  # the last chunk holds two images of two samples
    assert summarise(tmp_path / "cut")["labels"] == 12


def test_bad_input_is_named(shapes_set, tmp_path, vq_tokenizer):
    data, _ = shapes_set
    with pytest.raises(ConfigError, match="teacher.noise"):
        OracleTeacher(noise=1.5)
    with pytest.raises(ConfigError, match="budget"):
        VerifierDataBuilder("exact", vq_tokenizer, OracleTeacher(), FMT, budget=-1)
    with pytest.raises(ConfigError, match="not a directory"):
        VerifierDataBuilder("exact", vq_tokenizer, OracleTeacher(), FMT).build(
            data, {"x": tmp_path / "nowhere"}, tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match="no shards"):
        load_examples([tmp_path])
    assert isinstance(TeacherError("teacher_error", "x"), Exception)


def test_onpolicy_examples_train_the_reward_model(shapes_set, tmp_path, vq_tokenizer, tiny_editor):
    """`data.onpolicy` folders go into the reward model's SFT (here alone, `data.samples: 0`), and the
    teacher labels it consumed are written beside the run and returned."""
    from earl.config import load_config
    from earl.train.rrm import RRMDataSection, RRMRecipe, train_rrm_sft

    build(shapes_set, tmp_path / "op", vq_tokenizer)
    with pytest.raises(ValueError, match="onpolicy_repeat"):
        RRMDataSection(onpolicy=[str(tmp_path / "op")], onpolicy_repeat=0)
    with pytest.raises(ValueError, match="data.samples"):
        RRMDataSection(samples=0)
    tiny_editor.save_pretrained(tmp_path / "editor")
    over = {"out_dir": tmp_path / "rrm", "model.init_from": tmp_path / "editor", "data.samples": 0,
            "data.onpolicy": f"[{tmp_path / 'op'}]", "data.onpolicy_repeat": 2, "data.eval_samples": 1,
            "data.max_new_tokens": 8, "run.steps": 2, "run.batch_size": 4, "run.eval_every": 2, "run.save_every": 2,
            "run.mixed_precision": '"no"'}
    cfg = load_config(RRMRecipe, ROOT / "recipes/shapes/rrm_sft.yaml", [f"{k}={v}" for k, v in over.items()])
    final = train_rrm_sft(cfg, progress=False)
    assert final["teacher_labels"] == 12
    assert json.loads((tmp_path / "rrm" / "teacher_labels.json").read_text()) == {"coldstart": 0, "onpolicy": 12,
                                                                                 "total": 12}
