"""The decomposer trained with trl on a tiny model the test builds: SFT then GRPO raise the plan reward."""

import json

import pytest
import torch

from earl.agents.decomposer import DecomposeRequest, read_plan
from earl.agents.plan import plan_f1
from earl.agents.shapes import program_plan
from earl.agents.unified import UnifiedDecomposer, add_plan_tokens, prompt_ids, prompt_text
from earl.errors import EarlError
from earl.model import UnifiedEditor
from earl.shapes.dataset import generate_samples
from earl.shapes.render import render
from earl.text import build_word_tokenizer
from earl.train.decomposer import (
    DecomposerData,
    DecomposerGRPORecipe,
    DecomposerSFTRecipe,
    train_decomposer_grpo,
    train_decomposer_sft,
    trl_optim,
)
from earl.train.sections import RunSection

DATA = DecomposerData(complex_samples=12, simple_samples=4, seed=0)


@pytest.fixture(scope="module")
def tiny_editor_dir(tmp_path_factory, vq_tokenizer):
    samples = [s for split in ("complex", "simple") for s in generate_samples(split, 40, 0)]
    corpus = [s.instruction for s in samples] + [program_plan(s.source_scene, s.program).text(" ; ") for s in samples]
    tok = build_word_tokenizer(corpus)
    d = tmp_path_factory.mktemp("editor")
    UnifiedEditor.build("shapes-test", vq_tokenizer, tok, image_size=32, seed=0).save_pretrained(d)
    return d


def _mean_f1(decomposer_dir, temperature: float = 0.0, draws: int = 1) -> float:
    """Mean F1 of the plans for the training prompts: greedy, or `draws` samples each at `temperature`."""
    dec = UnifiedDecomposer.from_pretrained(decomposer_dir)
    samples = list(generate_samples("complex", DATA.complex_samples, 0)) + list(generate_samples("simple", DATA.simple_samples, 0))
    if temperature == 0:
        out = [d.plan for d in dec.decompose([DecomposeRequest(render(s.source_scene), s.instruction) for s in samples])]
    else:
        g = torch.Generator().manual_seed(0)
        texts = dec.write([render(s.source_scene) for s in samples] * draws, [s.instruction for s in samples] * draws,
                          temperature=temperature, generator=g)
        out = [read_plan(t, finished=f).plan for t, f in texts]
    gold = [program_plan(s.source_scene, s.program) for s in samples] * draws
    return sum(plan_f1(p, g) for p, g in zip(out, gold)) / len(gold)


def test_image_codes_are_tokens_so_prompts_are_plain_strings(tiny_editor_dir):
    ed = add_plan_tokens(UnifiedEditor.from_pretrained(tiny_editor_dir))
    s = next(generate_samples("complex", 1, 0))
    codes = ed.encode_images([ed.preprocess(render(s.source_scene))[0]])[0]
    text = prompt_text(ed, s.instruction, codes)
    assert ed.text_tokenizer(text, add_special_tokens=False)["input_ids"] == prompt_ids(ed, s.instruction, codes)
    assert ed.backbone.get_input_embeddings().weight.shape[0] == len(ed.text_tokenizer)


def test_an_editor_is_refused_as_a_decomposer(tiny_editor_dir):
    with pytest.raises(EarlError, match="is an editor checkpoint; the agent's decomposer needs a decomposer checkpoint"):
        UnifiedDecomposer.from_pretrained(tiny_editor_dir)


def test_sft_then_grpo_with_trl_raise_the_plan_f1(tiny_editor_dir, tmp_path):
    torch.manual_seed(0)
    sft = DecomposerSFTRecipe(out_dir=str(tmp_path / "sft"), init_from=str(tiny_editor_dir), data=DATA,
                              run=RunSection(steps=60, batch_size=16, log_every=5, save_every=1000),
                              optim=trl_optim(3e-3, warmup_steps=0))
    report = train_decomposer_sft(sft)
    losses = [r["loss"] for r in json.loads((tmp_path / "sft" / "trainer_log.json").read_text())]
    assert losses[-1] < 0.5 * losses[0], losses
    assert report["train_runtime_s"] > 0  # recorded for the comparison's cost column
    f1_sft = _mean_f1(report["out"])
    assert f1_sft > 0.2, f1_sft
    sampled_sft = _mean_f1(report["out"], temperature=0.5, draws=8)
    grpo = DecomposerGRPORecipe(out_dir=str(tmp_path / "grpo"), init_from=report["out"], data=DATA,
                                rewards={"f1": 1.0}, num_generations=8, temperature=0.5,
                                run=RunSection(steps=16, batch_size=16, log_every=1, save_every=1000),
                                optim=trl_optim(1e-4, schedule="linear"))
    report = train_decomposer_grpo(grpo)
    rewards = [r["reward"] for r in json.loads((tmp_path / "grpo" / "trainer_log.json").read_text()) if "reward" in r]
    assert len(rewards) == 16
    sampled_grpo = _mean_f1(report["out"], temperature=0.5, draws=8)
    assert sampled_grpo > sampled_sft + 0.02, (sampled_sft, sampled_grpo)  # the policy's expected F1 rose


def test_one_grpo_recipe_serves_both_policies_and_each_stage_refuses_the_other():
    """`policy` picks the defaults left unset and the stage that trains it; a recipe for the other policy, or a
    run setting trl cannot honour, is refused before any model loads."""
    from earl.errors import ConfigError
    from earl.train.vlm_decomposer import train_vlm_decomposer_grpo

    vlm, unified = DecomposerGRPORecipe(policy="vlm"), DecomposerGRPORecipe()
    assert (vlm.init_from, vlm.max_completion_length) == ("models/Qwen2.5-VL-3B-Instruct", 256)
    assert (unified.init_from, unified.max_completion_length) == ("runs/decomposer_sft/model", 96)
    with pytest.raises(ConfigError, match="earl train decomposer-vlm-grpo"):
        train_decomposer_grpo(vlm)
    with pytest.raises(ConfigError, match="earl train decomposer-grpo"):
        train_vlm_decomposer_grpo(unified)
    with pytest.raises(ValueError, match="run.mixed_precision"):
        DecomposerSFTRecipe(run=RunSection(mixed_precision="bf16"))
    with pytest.raises(ValueError, match="multiple of num_generations"):
        DecomposerGRPORecipe(num_generations=5)
