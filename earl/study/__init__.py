"""The recipe study: `earl study recipes/shapes/study_complex.yaml`.

Trains and evaluates several arms over several seeds on ShapesEdit, with one shared image tokenizer,
and reports each arm as mean +- 95% CI across its seeds (across test prompts for an arm with one seed).
Arm kinds (`earl.study.arms.ARM_KINDS`, the trained ones on `earl train`'s stages):
    given       an editor from a directory, evaluated as is; a start for other arms
    sft         SFT from scratch, or continued from an editor arm (`start`)
    grpo        GRPO from an editor arm, rewarded by its recipe's verifier or a `scalar_rm` arm's model
    best_of_n   N samples per prompt from an editor arm, the oracle keeping the best: the control that
                tells a gain from the verifier at test time apart from a gain in the policy
    agent       the agent pipeline (decomposer -> editor of an editor arm), with its step checks and
                sampled-plan choice (`earl.agents.build.AgentOptions`)
    scalar_rm   a Bradley-Terry reward model trained inside the study, for GRPO arms to use
Each evaluated edit records its editor and judge calls, and each stage its wall time: the report's cost.

Resumable at every level: a finished stage (a trained model, an evaluation file) is never redone,
and an interrupted training resumes from its last checkpoint. Layout of `out_dir`:

    {arm}/seed_{s}/            a training run (its model/, metrics.jsonl, checkpoints/)
    {arm}/seed_{s}/eval_{set}.json   per-sample oracle verdicts (and calls) on one test set
    {arm}/seed_{s}/agent_{set}/      an agent arm's images and per-edit records (plans, steps)
    stage_times.json           wall time of every finished stage (sums across resumed runs)
    results.json, report.md, curves.png, success.png   the aggregate, rewritten at the end of every run

Modules: `arms` (the recipe and the table of arm kinds: how each builds its stage recipe, trains, is
evaluated), `run` (the study run, stage by stage), `aggregate` (intervals, paired differences,
diagnostics), `report` (the markdown table and the figures).
"""

from earl.study.aggregate import aggregate, grpo_diagnostics, training_minutes
from earl.study.arms import (
    ARM_KINDS,
    ArmKind,
    ArmSection,
    StudyRecipe,
    arm_recipe,
    arm_seeds,
    arm_sets,
    evaluate_arm,
    model_dir,
    run_dir,
    select_arms,
)
from earl.study.report import format_report, plot_curves, plot_success
from earl.study.run import StageTimes, check_recipes, machine_description, run_study, train_arm

__all__ = ["ARM_KINDS", "ArmKind", "ArmSection", "StageTimes", "StudyRecipe", "aggregate", "arm_recipe", "arm_seeds",
           "arm_sets", "check_recipes", "evaluate_arm", "format_report", "grpo_diagnostics", "machine_description",
           "model_dir", "plot_curves", "plot_success", "run_dir", "run_study", "select_arms", "train_arm",
           "training_minutes"]
