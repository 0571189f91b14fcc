"""The study's recipe and its arms: what each kind of arm is, how its stage recipe is built, how it is evaluated.

One table, `ARM_KINDS`, says for each kind whether it trains (and with which `earl train` stage, from
`earl.train.stages`), whether it holds an editor other arms start from, which overrides the study puts
on its stage recipe, how it is evaluated, and what must hold before any work starts. Adding a kind of
arm is one entry there and its functions here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from earl.agents.build import GROUND_TRUTH, AgentOptions
from earl.agents.evaluate import run_agent_eval
from earl.agents.pipeline import build_agent_pipeline
from earl.config import load_config, to_dict
from earl.data import encode_dataset, resolve_source
from earl.errors import ConfigError
from earl.evaluate import generate_in_batches, oracle_scores
from earl.generate import SamplingConfig
from earl.io import read_json
from earl.train.lora import load_editor
from earl.train.stages import STAGES


@dataclass
class ArmSection:
    name: str  # a directory name and a table row, e.g. "sft_simple"
    kind: str  # one of ARM_KINDS
    recipe: str | None = None  # the stage's YAML (sft, grpo, scalar_rm)
    model: str | None = None  # given: an editor directory (the same for every seed), never trained
    overrides: list[str] = field(default_factory=list)  # key=value, applied after the study's defaults
    # grpo, best_of_n, agent: the arm whose editor (same seed) they start from or use; sft, scalar_rm:
    # an optional editor arm to continue from (model.init_from / init_from)
    start: str | None = None
    n: int = 8  # best_of_n: samples per prompt
    temperature: float = 1.0  # best_of_n: sampling temperature of the N samples
    # This arm's seeds (default: the study's). One seed for an arm whose result no seed changes (a given
    # editor, greedy decoding, a greedy agent): its intervals are then across test prompts, not seeds.
    seeds: list[int] | None = None
    sets: list[str] | None = None  # the eval sets this arm is evaluated on (default: all of the study's)
    reward_model: str | None = None  # grpo: a scalar_rm arm whose model is the reward (verifier "scalar")
    decomposer: str | None = None  # agent: a decomposer directory, or "ground-truth"; None: the bundled one
    agent: AgentOptions = field(default_factory=AgentOptions)  # agent: step check, sampled plans, plan judge

    def __post_init__(self):
        if self.kind not in ARM_KINDS:
            raise ValueError(f"arm {self.name!r}: kind must be one of {', '.join(ARM_KINDS)}, got {self.kind!r}")
        kind = ARM_KINDS[self.kind]
        if kind.given != (self.model is not None):
            raise ValueError(f"arm {self.name!r}: `model` (an editor directory) is for, and needed by, a given arm")
        if kind.stage is not None and not self.recipe:
            raise ValueError(f"arm {self.name!r}: a {self.kind} arm needs a recipe")
        if kind.needs_start and not self.start:
            raise ValueError(f"arm {self.name!r}: a {self.kind} arm needs `start` (an editor arm's name)")
        if self.kind == "best_of_n" and (self.n < 2 or self.temperature <= 0):
            raise ValueError(f"arm {self.name!r}: best_of_n needs n >= 2 and temperature > 0")
        if self.reward_model is not None and self.kind != "grpo":
            raise ValueError(f"arm {self.name!r}: `reward_model` is for grpo arms")
        if self.kind != "agent" and (self.decomposer is not None or self.agent != AgentOptions()):
            raise ValueError(f"arm {self.name!r}: `decomposer` and `agent` are for agent arms")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"arm {self.name!r}: seeds must be a non-empty list of distinct integers")


@dataclass
class StudyRecipe:
    out_dir: str = "runs/study"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    image_tokenizer: str = "checkpoints/shapes-editor/image_tokenizer"  # shared by every arm
    cache_dir: str = "runs/cache"
    eval_sets: dict[str, str] = field(default_factory=lambda: {"simple": "shapes:simple:test:200",
                                                               "complex": "shapes:complex:test:200"})
    eval_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.0))
    eval_batch_size: int = 64
    sft_overrides: list[str] = field(default_factory=list)  # applied to every sft arm
    grpo_overrides: list[str] = field(default_factory=list)  # applied to every grpo arm
    compare: list[list[str]] = field(default_factory=list)  # [arm, baseline] pairs reported as paired differences
    arms: list[ArmSection] = field(default_factory=list)

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if not self.arms:
            raise ValueError("arms: at least one arm is needed")
        if not self.eval_sets:
            raise ValueError("eval_sets: at least one test set is needed")
        seen: dict[str, ArmSection] = {}
        for arm in self.arms:
            if arm.name in seen:
                raise ValueError(f"arms: the name {arm.name!r} is used twice")
            unknown = [s for s in arm.sets or [] if s not in self.eval_sets]
            if unknown:
                raise ValueError(f"arm {arm.name!r}: sets {unknown} are not among eval_sets ({', '.join(self.eval_sets)})")
            for key, ref, wanted in (("start", arm.start, "holds_editor"), ("reward_model", arm.reward_model, "rewards")):
                if ref is None:
                    continue
                if ref not in seen:
                    raise ValueError(f"arm {arm.name!r}: {key} {ref!r} must name an earlier arm")
                if not getattr(ARM_KINDS[seen[ref].kind], wanted):
                    raise ValueError(f"arm {arm.name!r}: {key} {ref!r} is a {seen[ref].kind} arm; expected "
                                     f"{_kinds_that(wanted)}")
                theirs = arm_seeds(self, seen[ref])
                if len(theirs) > 1 and not set(arm_seeds(self, arm)) <= set(theirs):
                    raise ValueError(f"arm {arm.name!r}: its seeds {arm_seeds(self, arm)} are not all among "
                                     f"{ref!r}'s {theirs}")
            seen[arm.name] = arm
        for pair in self.compare:
            if len(pair) != 2 or any(a not in seen for a in pair):
                raise ValueError(f"compare: each entry must be [arm, baseline] with known arm names, got {pair}")
            if any(ARM_KINDS[seen[a].kind].rewards for a in pair):
                raise ValueError(f"compare {pair}: a {_kinds_that('rewards', plain=True)} arm is a reward model, not an "
                                 "editor; it has no results")
            a, b = (arm_seeds(self, seen[x]) for x in pair)
            if len(a) > 1 and len(b) > 1 and a != b:
                raise ValueError(f"compare {pair}: the two arms have different seeds ({a} and {b})")
            sa, sb = (set(arm_sets(self, seen[x])) for x in pair)
            if not sa & sb:
                raise ValueError(f"compare {pair}: the two arms share no eval set")


# ---- where an arm's runs live ---------------------------------------------------------------------
def arm_seeds(cfg: StudyRecipe, arm: ArmSection) -> list[int]:
    return list(arm.seeds) if arm.seeds is not None else list(cfg.seeds)


def arm_sets(cfg: StudyRecipe, arm: ArmSection) -> list[str]:
    """The eval sets an arm is evaluated on (none for a reward model), in the study's order."""
    if ARM_KINDS[arm.kind].rewards:
        return []
    return [s for s in cfg.eval_sets if arm.sets is None or s in arm.sets]


def select_arms(cfg: StudyRecipe, names: list[str]) -> StudyRecipe:
    """The study restricted to `names` and the arms they start from (e.g. to re-run one arm elsewhere);
    comparisons among the kept arms stay."""
    by_name = {a.name: a for a in cfg.arms}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"--arms: no arm named {', '.join(unknown)} (arms: {', '.join(by_name)})")
    keep = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        a = by_name[name]
        todo += [r for r in (a.start, a.reward_model) if r]
    return replace(cfg, arms=[a for a in cfg.arms if a.name in keep],
                               compare=[p for p in cfg.compare if set(p) <= keep])


def run_dir(cfg: StudyRecipe, arm: str, seed: int) -> Path:
    return Path(cfg.out_dir) / arm / f"seed_{seed}"


def find_arm(cfg: StudyRecipe, name: str) -> ArmSection:
    return next(a for a in cfg.arms if a.name == name)


def _their_seed(cfg: StudyRecipe, other: ArmSection, seed: int) -> int:
    """The seed of `other` (a start or a reward model) that an arm's `seed` uses: the same one, or the
    other arm's only seed when it has one (a given editor, a reward model trained once)."""
    theirs = arm_seeds(cfg, other)
    return seed if seed in theirs else theirs[0]


def model_dir(cfg: StudyRecipe, arm: ArmSection, seed: int) -> Path:
    """Where an arm's model for one seed lives: its training run's model/, or a given arm's directory."""
    return Path(arm.model) if ARM_KINDS[arm.kind].given else run_dir(cfg, arm.name, _their_seed(cfg, arm, seed)) / "model"


def is_trained(cfg: StudyRecipe, arm: ArmSection, seed: int) -> bool:
    """Whether (arm, seed)'s training run finished: its final metrics and its model are written."""
    d = run_dir(cfg, arm.name, seed)
    return (d / "final_metrics.json").is_file() and (d / ARM_KINDS[arm.kind].trained).exists()


# ---- building a trained arm's stage recipe ----------------------------------------------------------
def arm_recipe(cfg: StudyRecipe, arm: ArmSection, seed: int):
    """(train function, recipe) of one trained (arm, seed): the stage YAML, then the study's defaults for
    that kind, then the arm's overrides, then the study's own fields (output, seed, start model)."""
    kind, stage = ARM_KINDS[arm.kind], STAGES[ARM_KINDS[arm.kind].stage]
    start = model_dir(cfg, find_arm(cfg, arm.start), seed) if arm.start else None
    before, after = kind.overrides(cfg, arm, seed, run_dir(cfg, arm.name, seed), start)
    return stage.train_function(), load_config(stage.recipe_class(), arm.recipe, before + arm.overrides + after)


Overrides = tuple[list[str], list[str]]  # the study's overrides: before the arm's own, and after them


def _sft_overrides(cfg: StudyRecipe, arm: ArmSection, seed: int, out: Path, start: Path | None) -> Overrides:
    base = [f"model.image_tokenizer={cfg.image_tokenizer}", f"data.cache_dir={cfg.cache_dir}"]
    return base + cfg.sft_overrides, [f"out_dir={out}", f"run.seed={seed}"] + ([f"model.init_from={start}"] if start else [])


def _grpo_overrides(cfg: StudyRecipe, arm: ArmSection, seed: int, out: Path, start: Path | None) -> Overrides:
    reward = []
    if arm.reward_model:
        rm = model_dir(cfg, find_arm(cfg, arm.reward_model), seed)
        reward = ["verifier.name=scalar", f"verifier.options={{model_path: {rm}}}"]
    return ([f"data.cache_dir={cfg.cache_dir}"] + cfg.grpo_overrides,
            reward + [f"out_dir={out}", f"run.seed={seed}", f"init_from={start}"])


def _scalar_rm_overrides(cfg: StudyRecipe, arm: ArmSection, seed: int, out: Path, start: Path | None) -> Overrides:
    return [], [f"out_dir={out}", f"run.seed={seed}"] + ([f"init_from={start}"] if start else [])


# ---- evaluating an arm on one test set ---------------------------------------------------------------
def evaluate_arm(cfg: StudyRecipe, arm: ArmSection, seed: int, set_name: str, progress: bool) -> dict:
    """Per-sample oracle verdicts of one (arm, seed) on one test set, with the editor and judge calls each
    edit cost, as its kind evaluates it."""
    return ARM_KINDS[arm.kind].evaluate(cfg, arm, seed, set_name, progress)


def _eval_set(cfg: StudyRecipe, source: str, editor):
    cache = Path(cfg.cache_dir)
    return encode_dataset(resolve_source(source, cache, editor.config.image_size), editor.image_tokenizer,
                          Path(cfg.image_tokenizer), cache, progress=False)


def _evaluate_editor_arm(cfg: StudyRecipe, arm: ArmSection, seed: int, set_name: str, progress: bool) -> dict:
    """The arm's own editor, one sample per prompt with the study's sampling."""
    return _sample_and_judge(cfg, arm, arm, seed, set_name, 1, cfg.eval_sampling, progress)


def _evaluate_best_of_n_arm(cfg: StudyRecipe, arm: ArmSection, seed: int, set_name: str, progress: bool) -> dict:
    """N samples per prompt from the `start` arm's editor, the oracle keeping the best."""
    sampling = SamplingConfig(temperature=arm.temperature, guidance_scale=cfg.eval_sampling.guidance_scale)
    return _sample_and_judge(cfg, arm, find_arm(cfg, arm.start), seed, set_name, arm.n, sampling, progress)


def _sample_and_judge(cfg: StudyRecipe, arm: ArmSection, model_arm: ArmSection, seed: int, set_name: str, n: int,
                      sampling: SamplingConfig, progress: bool) -> dict:
    """`n` edits per prompt by `model_arm`'s editor, judged by the oracle; with n > 1 the best of each
    prompt's draws is kept (and the mean of all of them recorded)."""
    editor = load_editor(model_dir(cfg, model_arm, seed))  # a LoRA arm's adapters merged into its start
    data = _eval_set(cfg, cfg.eval_sets[set_name], editor)
    rows = [i for i in range(len(data)) for _ in range(n)]  # prompt-major: N samples of a prompt are adjacent
    out = generate_in_batches(editor, [data.instructions[i] for i in rows], data.source_codes[rows], sampling,
                              batch_size=cfg.eval_batch_size, seed=seed, progress=progress)
    verdicts = oracle_scores(editor.decode_codes(out.codes), [data.source_scenes[i] for i in rows],
                             [data.target_scenes[i] for i in rows], [data.instructions[i] for i in rows])
    samples = []
    for p in range(len(data)):
        group = verdicts[p * n : (p + 1) * n]
        best = max(range(n), key=lambda g: group[g]["overall"])  # first of the ties
        v = group[best]
        row = {"id": data.ids[p], "category": data.categories[p], "success": bool(v["success"]),
               "sc": v["sc"], "pq": v["pq"], "overall": v["overall"], "editor_calls": n,
               "judge_calls": n if n > 1 else 0}
        if n > 1:  # the unselected draws: what sampling at this temperature gives without a verifier
            row["mean_of_n"] = {k: sum(float(g[k]) for g in group) / n for k in ("success", "overall")}
        samples.append(row)
    return {"arm": arm.name, "seed": seed, "set": set_name, "n_samples_per_prompt": n,
            "sampling": to_dict(sampling), "samples": samples}


def _evaluate_agent_arm(cfg: StudyRecipe, arm: ArmSection, seed: int, set_name: str, progress: bool) -> dict:
    """The agent pipeline (decomposer -> editor of the `start` arm, same seed) on one test set, through
    `earl eval shapes --agent`'s runner (its images and per-edit records kept under agent_{set}/, and
    resumed sample by sample). Judge calls count the step checks and the plan judge's verdicts."""
    editor_dir = model_dir(cfg, find_arm(cfg, arm.start), seed)
    image_size = read_json(editor_dir / "editor.json")["image_size"]
    data_dir = resolve_source(cfg.eval_sets[set_name], Path(cfg.cache_dir), image_size)
    pipe = build_agent_pipeline(arm.decomposer, str(editor_dir), arm.agent, seed=seed)
    res = run_agent_eval(pipe, data_dir, run_dir(cfg, arm.name, seed) / f"agent_{set_name}",
                         batch_size=cfg.eval_batch_size, progress=progress)
    samples = [{"id": r["id"], "category": r["category"], "success": bool(r["success"]), "sc": r["sc"],
                "pq": r["pq"], "overall": r["overall"], "editor_calls": r["editor_calls"],
                "judge_calls": r["check_calls"], "plan": r["plan"], "agent_failure": r["agent_failure"]}
               for r in res["samples"]]
    return {"arm": arm.name, "seed": seed, "set": set_name, "agent": res["agent"], "model": res["model"],
            "samples": samples}


# ---- what must hold before any work starts ----------------------------------------------------------
def _check_given(arm: ArmSection) -> None:
    if not (Path(arm.model) / "editor.json").is_file():
        raise ConfigError(f"arm {arm.name!r}: model {arm.model} is not a saved editor (no editor.json)")


def _check_agent(arm: ArmSection) -> None:
    if arm.decomposer not in (None, GROUND_TRUTH) and not Path(arm.decomposer).is_dir():
        raise ConfigError(f"arm {arm.name!r}: decomposer {arm.decomposer} is not a directory (a saved "
                          "decomposer, or 'ground-truth')")


# ---- the table ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArmKind:
    """What one kind of arm is to the study."""

    evaluate: Callable[[StudyRecipe, ArmSection, int, str, bool], dict] | None  # per-sample verdicts on one set
    stage: str | None = None  # the `earl train` stage that trains it (`earl.train.stages`); None: trains nothing
    # the study's overrides of the stage recipe: (cfg, arm, seed, run directory, start model) -> Overrides
    overrides: Callable[[StudyRecipe, ArmSection, int, Path, Path | None], Overrides] | None = None
    trained: str = "model/editor.json"  # what a finished training run leaves (with final_metrics.json)
    check: Callable[[ArmSection], None] | None = None  # what must hold before any work starts
    given: bool = False  # its model is a directory the recipe names (`model`), never trained
    holds_editor: bool = False  # its model is an editor another arm can `start` from
    needs_start: bool = False  # it runs on (or from) the editor of its `start` arm, same seed
    rewards: bool = False  # its model is a reward for another arm's GRPO (`reward_model`); no results of its own


ARM_KINDS: dict[str, ArmKind] = {
    "given": ArmKind(_evaluate_editor_arm, check=_check_given, given=True, holds_editor=True),
    "sft": ArmKind(_evaluate_editor_arm, stage="sft", overrides=_sft_overrides, holds_editor=True),
    "grpo": ArmKind(_evaluate_editor_arm, stage="grpo", overrides=_grpo_overrides, holds_editor=True, needs_start=True),
    # the control that tells a gain from the verifier at test time apart from a gain in the policy
    "best_of_n": ArmKind(_evaluate_best_of_n_arm, needs_start=True),
    "agent": ArmKind(_evaluate_agent_arm, check=_check_agent, needs_start=True),
    "scalar_rm": ArmKind(None, stage="rm-scalar", overrides=_scalar_rm_overrides, trained="model", rewards=True),
}


def _kinds_that(flag: str, plain: bool = False) -> str:
    """The kinds with `flag` set, as an error message names them: "an editor arm (given, sft or grpo)"."""
    names = [k for k, kind in ARM_KINDS.items() if getattr(kind, flag)]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    if plain:
        return listed
    return f"an editor arm ({listed})" if flag == "holds_editor" else f"a {listed} arm"
