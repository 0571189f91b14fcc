"""Reward functions for the decomposer, in trl's form: `f(completions, **columns) -> list[float | None]`.

- `format`: 1 when the completion parses as a plan (`earl.agents.plan.parse_plan`), else 0.
- `f1`: ImageEdit-R1's reward, F1 of the plan's triples against the sample's ground-truth plan
  (`plan_f1`: exact normalised triples, one-to-one, order ignored); 0 for an unparseable plan.
- `closed_loop`: beyond the paper: the plan is executed by the editor, step by step, and the final
  image judged by the ShapesEdit oracle against the sample's target: 1 on success, else 0. This
  rewards what the user wants (a right final image), including plans that differ from the annotation
  but work, and penalises plans the editor cannot follow.
- `closed_loop_rrm`: the same execution, judged by the reasoning reward model's E[points] on
  (source, instruction, final image): no oracle and no target needed, as on real data.

Columns come from the dataset (`earl.train.decomposer.build_dataset`, shared by the unified and the
VLM decomposer's trainers): gold_plan, instruction, source_scene and target_scene (the scenes give the
source image back, whatever form the prompt shows it in).
"""

from __future__ import annotations

import json

from earl.agents.editor import PipelineEditor
from earl.agents.pipeline import execute_plans
from earl.agents.plan import Plan, PlanError, parse_plan, plan_f1
from earl.errors import ConfigError
from earl.shapes.oracle import judge as oracle_judge
from earl.shapes.render import render
from earl.shapes.scene import Scene
from earl.verify.base import EditRequest, build_verifier


def _text(completion) -> str:
    """trl passes strings for plain prompts and message lists for conversational ones."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


def _plan_or_none(completion) -> Plan | None:
    try:
        return parse_plan(_text(completion))
    except PlanError:
        return None


def format_reward(completions, **_) -> list[float]:
    """1 for a completion that parses as a plan, else 0.

    >>> format_reward(["remove | the red circle | nothing", "remove the red circle"])
    [1.0, 0.0]
    """
    return [float(_plan_or_none(c) is not None) for c in completions]


def f1_reward(completions, gold_plan, **_) -> list[float]:
    """>>> gold = '{"steps": [{"action": "remove", "subject": "the red circle", "goal": "nothing"}]}'
    >>> f1_reward(["remove | the red circle | nothing", "remove | the blue circle | nothing"], [gold, gold])
    [1.0, 0.0]
    """
    return [plan_f1(_plan_or_none(c), Plan.from_dict(json.loads(g))) for c, g in zip(completions, gold_plan)]


class ClosedLoopReward:
    """Execute each plan with the editor and judge the final image (oracle success, or RRM E[points]).

    The source image is rebuilt from the sample's scene (exactly the image the prompt's tokens encode);
    an unparseable or unapplicable plan scores 0.
    """

    def __init__(self, editor_dir: str | None = None, judge: str = "oracle", rrm_dir: str | None = None):
        self.editor = PipelineEditor.from_pretrained(editor_dir)
        self.judge = judge
        self.__name__ = "closed_loop" if judge == "oracle" else "closed_loop_rrm"
        self.rrm = None
        if judge == "rrm":
            self.rrm = build_verifier("rrm", model_path=rrm_dir, expected_points=True)

    def __call__(self, completions, source_scene, target_scene, instruction=None, **_) -> list[float]:
        plans = [_plan_or_none(c) for c in completions]
        sources = [render(Scene.from_dict(json.loads(s))) for s in source_scene]
        finals = execute_plans(self.editor, sources, plans)
        out = []
        for i, (plan, final) in enumerate(zip(plans, finals)):
            if plan is None or final is None:
                out.append(0.0)
            elif self.judge == "oracle":
                j = oracle_judge(Scene.from_dict(json.loads(source_scene[i])), Scene.from_dict(json.loads(target_scene[i])), final)
                out.append(float(j.success))
            else:
                out.append(None)
        if self.judge == "rrm":
            todo = [i for i, v in enumerate(out) if v is None]
            reqs = [EditRequest(sources[i], instruction[i], finals[i],
                                meta={"source_scene": source_scene[i], "target_scene": target_scene[i]}) for i in todo]
            for i, r in zip(todo, self.rrm.score(reqs)):
                out[i] = r.reward  # None (a failed judgement) is skipped by trl
        return out


def make_reward_functions(weights: dict[str, float], editor_dir: str | None = None, rrm_dir: str | None = None):
    """(reward functions, their weights) for trl's GRPOTrainer from a recipe's {name: weight}."""
    makers = {"format": lambda: format_reward, "f1": lambda: f1_reward,
              "closed_loop": lambda: ClosedLoopReward(editor_dir, "oracle"),
              "closed_loop_rrm": lambda: ClosedLoopReward(editor_dir, "rrm", rrm_dir)}
    unknown = [k for k in weights if k not in makers]
    if unknown or not weights:
        raise ConfigError(f"rewards: unknown {unknown or 'empty'}; expected names from {', '.join(makers)}")
    return [makers[k]() for k in weights], [float(w) for w in weights.values()]
