"""GRPO of a chat VLM decomposer with trl, end to end on a tiny random Qwen2-VL the test builds offline.

The model is Qwen2-VL's own architecture (the code path trl takes for Qwen2.5-VL: pixel_values with
image_grid_thw), 1 layer of 32 wide, with a word-level tokenizer over the prompt's and the plans' words,
Qwen's special tokens and a Qwen-style chat template. Its replies are random words, which earl's rewards
score 0, so the test adds a reward they vary on: it shows that the recipe runs, logs its weighted rewards,
updates the weights and saves a directory the inference path loads, not that it learns.

transformers builds Qwen2-VL's processor only with its video processor, which needs torchvision (not an
earl dependency); `ImageOnlyQwen2VLProcessor` is the same processor less video, registered with
AutoProcessor under a test-only config so that the trainer's and `LocalVLM`'s `AutoProcessor` load it.
"""

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoProcessor,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from earl.agents.decomposer import (
    DECOMPOSE_PROMPT,
    ChatDecomposer,
    DecomposeRequest,
    Decomposition,
    read_plan,
)
from earl.agents.plan import FAILURE_KINDS
from earl.agents.shapes import program_plan
from earl.errors import ConfigError
from earl.shapes.dataset import generate_samples
from earl.shapes.render import render
from earl.train.decomposer import DecomposerData, DecomposerGRPORecipe, trl_optim
from earl.train.sections import RunSection
from earl.train.vlm_decomposer import (
    file_dataset,
    shapes_dataset,
    train_vlm_decomposer_grpo,
)
from earl.verify.chat import LocalVLMBackend

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
CHAT_TEMPLATE = (  # Qwen2-VL's template, less video and tools
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DATA = DecomposerData(complex_samples=4, simple_samples=2, seed=0)
IMAGE_SIZE = 56  # 4x4 patches of 14 px, merged 2x2: 4 image tokens


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without the video processor (which transformers builds only with torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class _TestOnlyConfig(PretrainedConfig):
    model_type = "earl-test-image-only-qwen2-vl"


def build_tiny_qwen2_vl(path) -> None:
    samples = [s for split in ("complex", "simple") for s in generate_samples(split, 40, 0)]
    corpus = [DECOMPOSE_PROMPT, "system You are a helpful assistant. user assistant"]
    corpus += [s.instruction for s in samples] + [program_plan(s.source_scene, s.program).text() for s in samples]
    pre = pre_tokenizers.Whitespace()
    vocab = {t: i for i, t in enumerate(SPECIALS + ["<unk>"])}
    for w in sorted({w for text in corpus for w, _ in pre.pre_tokenize_str(text)}):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="<unk>", additional_special_tokens=SPECIALS[1:])
    images = Qwen2VLImageProcessorPil(min_pixels=IMAGE_SIZE**2, max_pixels=IMAGE_SIZE**2)
    processor = ImageOnlyQwen2VLProcessor(image_processor=images, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
                         bos_token_id=None, eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_qwen2_vl_dir(tmp_path_factory):
    AutoProcessor.register(_TestOnlyConfig, ImageOnlyQwen2VLProcessor, exist_ok=True)
    path = tmp_path_factory.mktemp("tiny-qwen2-vl")
    build_tiny_qwen2_vl(path)
    return path


def test_rows_carry_the_chat_decomposers_request_and_the_image_apart():
    row = shapes_dataset(DATA, IMAGE_SIZE)[0]
    (message,) = row["prompt"]
    assert message["role"] == "user" and [p["type"] for p in message["content"]] == ["image", "text"]
    assert "image" not in message["content"][0]  # a placeholder trl fills from the image column
    assert message["content"][1]["text"].endswith(f"Instruction: {row['instruction']}")
    assert row["image"].size == (IMAGE_SIZE, IMAGE_SIZE)
    assert json.loads(row["gold_plan"])["steps"] and row["source_scene"]  # every reward's columns


def test_rows_from_a_local_jsonl_file(tmp_path):
    render(next(generate_samples("simple", 1, 0)).source_scene).save(tmp_path / "a.png")
    lines = [{"image": "a.png", "instruction": "remove the red circle", "plan": "remove | the red circle | nothing"}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    (row,) = file_dataset(tmp_path / "rows.jsonl", IMAGE_SIZE)
    assert row["image"].size == (IMAGE_SIZE, IMAGE_SIZE)
    assert json.loads(row["gold_plan"])["steps"] == [{"action": "remove", "subject": "the red circle", "goal": "nothing"}]
    recipe = DecomposerGRPORecipe(policy="vlm", data_path=str(tmp_path / "rows.jsonl"),
                                  rewards={"f1": 1.0, "closed_loop": 1.0})
    with pytest.raises(ConfigError, match="ShapesEdit scene"):  # refused before any model is loaded
        train_vlm_decomposer_grpo(recipe)


def words_reward(completions, **_) -> list[float]:
    """A reward that random replies vary on (earl's format and f1 rewards give them all 0): the number of
    words, so that every group has advantages and each step an update."""
    return [len((c[-1]["content"] if isinstance(c, list) else c).split()) / 12 for c in completions]


def test_grpo_on_a_tiny_qwen2_vl_trains_logs_rewards_and_saves_a_chat_decomposer(tiny_qwen2_vl_dir, tmp_path,
                                                                                monkeypatch):
    from safetensors.torch import load_file

    from earl.train import vlm_decomposer

    recipe_rewards = vlm_decomposer.make_reward_functions

    def with_words(weights, **kw):  # the recipe's reward functions, then words_reward at weight 0.5
        funcs, w = recipe_rewards(weights, **kw)
        return [*funcs, words_reward], [*w, 0.5]

    monkeypatch.setattr(vlm_decomposer, "make_reward_functions", with_words)
    recipe = DecomposerGRPORecipe(policy="vlm", out_dir=str(tmp_path / "grpo"), init_from=str(tiny_qwen2_vl_dir),
                                  data=DATA, image_size=IMAGE_SIZE, rewards={"format": 0.1, "f1": 1.0},
                                  num_generations=4, max_completion_length=12, dtype="float32",
                                  run=RunSection(steps=3, batch_size=4, log_every=1, save_every=1000),
                                  optim=trl_optim(1e-4, schedule="linear"))
    report = train_vlm_decomposer_grpo(recipe)
    rows = json.loads((tmp_path / "grpo" / "trainer_log.json").read_text())
    assert len(rows) == 3
    for r in rows:
        means = [r[f"rewards/{name}/mean"] for name in ("format_reward", "f1_reward", "words_reward")]
        assert all(math.isfinite(m) for m in means), r
        assert means[2] > 0  # every random reply has words
        # the logged reward is the recipe's weighted sum of the terms
        assert r["reward"] == pytest.approx(0.1 * means[0] + 1.0 * means[1] + 0.5 * means[2], abs=1e-5), r
    # the saved weights are the trained ones
    start = load_file(tiny_qwen2_vl_dir / "model.safetensors")
    trained = load_file(f"{report['out']}/model.safetensors")
    assert start.keys() == trained.keys() and any(not torch.equal(start[k], trained[k]) for k in start)

    backend = LocalVLMBackend(report["out"], device="cpu")
    try:
        s = next(generate_samples("complex", 1, 0))
        (d,) = ChatDecomposer(backend, max_tokens=12, retries=0).decompose(
            [DecomposeRequest(render(s.source_scene), s.instruction)])
    finally:
        backend.close()
    # the saved model answered (random words, so no plan): its reply is kept with the plan reader's verdict
    assert isinstance(d, Decomposition) and d.raw.strip() and d.failure in FAILURE_KINDS, d
    assert d.to_dict() == read_plan(d.raw).to_dict()
