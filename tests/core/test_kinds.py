"""One directory format, three kinds of model: an editor, a decomposer, a reasoning reward model. A model
loaded where another kind is needed is refused with both kinds named, before any work is done (it used
to run: the bundled decomposer evaluated as an editor scored 0.0 without a word)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from earl.agents.build import AgentOptions
from earl.agents.editor import PipelineEditor
from earl.agents.pipeline import build_agent_pipeline
from earl.agents.unified import UnifiedDecomposer, add_plan_tokens
from earl.errors import EarlError
from earl.evaluate import run_shapes_eval
from earl.model import UnifiedEditor, WrongKindError
from earl.pipeline import EditPipeline
from earl.text import build_word_tokenizer

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
EDITOR, DECOMPOSER, RRM = (CHECKPOINTS / n for n in ("shapes-editor", "shapes-decomposer", "shapes-rrm-lenient"))


def test_a_decomposer_is_not_evaluated_as_an_editor(tmp_path):
    msg = f"{DECOMPOSER} is a decomposer checkpoint; `earl eval shapes --model` needs an editor checkpoint"
    with pytest.raises(WrongKindError) as e:
        run_shapes_eval(DECOMPOSER, tmp_path / "no-data", tmp_path / "out", progress=False)
    assert str(e.value) == msg
    with pytest.raises(WrongKindError, match="is a decomposer checkpoint; EditPipeline needs an editor"):
        EditPipeline.from_pretrained(DECOMPOSER)
    decomposer = UnifiedDecomposer.from_pretrained(DECOMPOSER)  # the right use loads
    with pytest.raises(WrongKindError, match="is a decomposer checkpoint"):  # an editor loaded by the caller
        run_shapes_eval(DECOMPOSER, tmp_path / "no-data", tmp_path / "out", progress=False, editor=decomposer.editor)


def test_a_reasoning_reward_model_is_not_an_editor(tmp_path):
    with pytest.raises(WrongKindError, match=f"^{RRM} is a reasoning reward model checkpoint; EditPipeline needs an "
                                             "editor checkpoint$"):
        EditPipeline.from_pretrained(RRM)
    with pytest.raises(WrongKindError, match="reasoning reward model checkpoint; the agent's editor needs an editor"):
        PipelineEditor.from_pretrained(RRM)
    with pytest.raises(WrongKindError, match="reasoning reward model checkpoint; `earl eval shapes --model`"):
        run_shapes_eval(RRM, tmp_path / "no-data", tmp_path / "out", progress=False)
    rrm = UnifiedEditor.from_pretrained(RRM, kind="reward_model")
    assert rrm.kind == "reward_model"
    with pytest.raises(WrongKindError, match="it is a reasoning reward model, not a decomposer"):
        UnifiedDecomposer(rrm)  # a model loaded by the caller


def test_an_editor_is_not_a_decomposer():
    msg = f"^{EDITOR} is an editor checkpoint; the agent's decomposer needs a decomposer checkpoint$"
    with pytest.raises(WrongKindError, match=msg):
        UnifiedDecomposer.from_pretrained(EDITOR)
    with pytest.raises(WrongKindError, match=msg):
        build_agent_pipeline(str(EDITOR), None, AgentOptions())
    with pytest.raises(WrongKindError, match="reasoning reward model checkpoint; the agent's decomposer"):
        UnifiedDecomposer.from_pretrained(RRM)
    assert EditPipeline.from_pretrained(EDITOR).editor.kind == "editor"


def test_save_pretrained_records_the_kind(vq_tokenizer, tmp_path):
    """The bundled checkpoints' editor.json has no kind (it is inferred from the vocabulary); what earl
    saves now records it, and a recorded kind is what loading goes by."""
    assert "kind" not in json.loads((EDITOR / "editor.json").read_text())

    def fresh():
        text = build_word_tokenizer(["make the red circle blue", "remove the square"])
        return UnifiedEditor.build("shapes-test", vq_tokenizer, text, image_size=32, seed=0)

    def saved_kind(editor, name):
        editor.save_pretrained(tmp_path / name)
        return json.loads((tmp_path / name / "editor.json").read_text())["kind"]

    assert saved_kind(fresh(), "editor") == "editor"
    assert saved_kind(add_plan_tokens(UnifiedEditor.from_pretrained(tmp_path / "editor")), "decomposer") == "decomposer"
    judge = UnifiedEditor.from_pretrained(tmp_path / "editor").with_words(["1. the circle is blue - yes",
                                                                          "2. no", "<score>7.5</score>"])
    assert saved_kind(judge, "rrm") == "reward_model"
    assert UnifiedDecomposer.from_pretrained(tmp_path / "decomposer").editor.kind == "decomposer"
    with pytest.raises(WrongKindError, match="rrm is a reasoning reward model checkpoint"):
        EditPipeline.from_pretrained(tmp_path / "rrm")

    meta = tmp_path / "editor" / "editor.json"
    cfg = json.loads(meta.read_text())
    meta.write_text(json.dumps({**cfg, "kind": "reward_model"}))  # the recorded kind wins
    with pytest.raises(WrongKindError, match="editor is a reasoning reward model checkpoint"):
        EditPipeline.from_pretrained(tmp_path / "editor")
    meta.write_text(json.dumps({**cfg, "kind": "judge"}))
    with pytest.raises(EarlError, match="editor.json: kind 'judge' is not one of editor, decomposer, reward_model"):
        UnifiedEditor.from_pretrained(tmp_path / "editor")
