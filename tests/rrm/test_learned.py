"""The learned verifier: the reward model judging points a writer wrote from (source, instruction) alone."""

from PIL import Image

from earl.agents.firewall import reads_answer
from earl.rrm.principles import QUALITY, EvalPoint
from earl.rrm.writer import PrincipleFailure
from earl.verify.base import EditRequest, build_verifier

POINTS = [EvalPoint("Is the background white?", "instruction")] * 4 + \
    [EvalPoint("Are there no extra objects?", "preservation")] * 3 + list(QUALITY)


class ScriptedWriter:
    def __init__(self):
        self.asked = []

    def write(self, sources, instructions):
        self.asked += instructions
        return [POINTS if "white" in ins else PrincipleFailure("too_few", "9 points") for ins in instructions]


def test_the_learned_verifier_reads_no_answer_and_names_a_writing_failure(tmp_path, tiny_editor):
    tiny_editor.save_pretrained(tmp_path / "rrm")
    writer = ScriptedWriter()
    v = build_verifier("learned", model_path=str(tmp_path / "rrm"), writer=writer, max_new_tokens=4)
    assert not reads_answer(v) and reads_answer(build_verifier("oracle"))
    src, out = Image.new("RGB", (32, 32), "white"), Image.new("RGB", (32, 32), "gray")
    scenes = [{"source_scene": {"background": b, "objects": []}, "target_scene": {"background": b, "objects": []}}
              for b in ("white", "black")]
    reqs = [EditRequest(src, "make it white", out, meta=m) for m in scenes] + [EditRequest(src, "make it red", out)]
    got = v.score(reqs)
    assert got[0].to_dict() == got[1].to_dict()  # the scene graphs in meta change nothing
    assert got[2].failed and got[2].error.startswith("principles: too_few")
    assert writer.asked == ["make it white", "make it red"]  # once per (source, instruction)
    assert v.principle_failures == {"too_few": 1}
    v.score(reqs[:1])
    assert writer.asked == ["make it white", "make it red"]


def test_agent_options_ask_for_a_writer_with_the_learned_verifier():
    import pytest

    from earl.agents.build import AgentOptions

    with pytest.raises(ValueError, match="writer"):
        AgentOptions(check="learned")
    assert AgentOptions(plan_judge="learned", plans=4, plan_votes=8, writer="w").writer == "w"
