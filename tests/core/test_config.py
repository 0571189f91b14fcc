from dataclasses import dataclass, field

import pytest

from earl.config import load_config
from earl.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError("lr must be positive")


@dataclass
class Outer:
    name: str
    steps: int = 10
    sources: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    path: str | None = None


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: run\ninner:\n  lr: 1e-4\n")
    cfg = load_config(Outer, f, ["steps=5", "sources=[a,b]", "inner.betas=[0.8,0.9]"])
    assert cfg == Outer(name="run", steps=5, sources=["a", "b"], inner=Inner(lr=1e-4, betas=(0.8, 0.9)))


def test_override_words_stay_words():
    """`name=no` is the word "no" (PyYAML alone would make it False); true/false stay booleans."""
    cfg = load_config(Outer, None, ["name=no", "path=off"])
    assert cfg.name == "no" and cfg.path == "off"

    @dataclass
    class Flag:
        on: bool = False

    assert load_config(Flag, None, ["on=true"]).on is True


@pytest.mark.parametrize(
    "text,match",
    [
        ("name: x\nstepz: 3\n", "unknown field 'stepz'.*did you mean 'steps'"),
        ("name: x\nsteps: many\n", "field 'steps': expected an integer"),
        ("name: x\ninner: {lr: -1}\n", "inner: lr must be positive"),
        ("name: x\ninner: {betas: [1]}\n", "inner.betas.*expected 2 items"),
        ("steps: 3\n", "missing required field 'name'"),
        ("- a\n- b\n", "expected a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_recipes_name_the_problem(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(Outer, f)
    assert "bad.yaml" in str(e.value)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(Outer, None, ["name"])


def test_every_recipe_in_the_repo_loads():
    """Each YAML under recipes/ (except DeepSpeed JSON) matches its stage's dataclass."""
    from pathlib import Path

    from earl.cli.train import TRAIN_STAGES

    root = Path(__file__).resolve().parents[2] / "recipes"
    import importlib

    from earl.study import StudyRecipe, check_recipes

    checked = 0
    for f in sorted(root.rglob("*.yaml")):
        if f.parent.name == "data":  # dataset field specs
            from earl.records import RecordSpec

            load_config(RecordSpec, f)
            checked += 1
            continue
        if f.stem.startswith("study"):
            check_recipes(load_config(StudyRecipe, f))  # the study and every arm's stage recipe
            checked += 1
            continue
        # the longest stage name the file's name starts with ("decomposer_vlm_grpo" over "decomposer")
        stage = max((s for s in TRAIN_STAGES if f.stem.startswith(s.replace("-", "_"))), key=len, default=None)
        # a recipe no stage claims would never be checked: name it after its stage (or teach this test)
        assert stage is not None, f"{f}: no training stage matches its name ({', '.join(TRAIN_STAGES)})"
        module, cls, *_ = TRAIN_STAGES[stage]
        load_config(getattr(importlib.import_module(module), cls), f)
        checked += 1
    assert checked == len(list(root.rglob("*.yaml")))
