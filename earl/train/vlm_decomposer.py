"""GRPO of a transformers chat VLM as the decomposer (e.g. Qwen2.5-VL-3B-Instruct), with trl:
`earl train decomposer-vlm-grpo recipes/agents/decomposer_vlm_grpo.yaml`.

The same recipe as `earl.train.decomposer.train_decomposer_grpo` (`DecomposerGRPORecipe`, here with
`policy: vlm` and `init_from` a local VLM checkpoint; ImageEdit-R1's format + F1 rewards, or
the closed-loop ones, all from `earl.agents.rewards`), for the policy ImageEdit-R1 itself trains: a VLM
that sees the source image as pixels. What differs is only what trl needs for a VLM:

- prompts are conversational, the very request `ChatDecomposer` sends at inference
  (`earl.agents.decomposer.decompose_messages`), with its image part left as a placeholder and the
  image in the `image` column: trl's `GRPOTrainer` fills the placeholder from that column
  (`prepare_multimodal_messages`) and runs the processor's chat template and image processor itself.
  A PIL image cannot sit inside the message column (Arrow stores it apart, as an Image feature).
- the processor (`AutoProcessor`) is the `processing_class`; the model is an
  `AutoModelForImageTextToText`; nothing is loaded with `trust_remote_code`.
- the trained model is saved with the Trainer's `save_model` (model + processor, gathered under
  DeepSpeed ZeRO-3), so `ChatDecomposer` over `earl.verify.chat.LocalVLMBackend`, vLLM or SGLang loads
  OUT/model as it would the base model. With a `lora:` section trl wraps the model (`peft_config`) and
  OUT/model holds peft's adapters, whose adapter_config.json names the base (`init_from`); peft's
  `merge_and_unload` gives the full model.

The installed trl's GRPOConfig has no `max_prompt_length` (prompts are never cut, and cutting a VLM
prompt from the left would cut its image tokens anyway), so the prompt's length is set by the image
size: a ShapesEdit image (64x64) upscaled to `image_size` pixels a side becomes (image_size / 28)^2
visual tokens in Qwen2-VL / Qwen2.5-VL (448: 256), plus about 200 tokens of request.

Not covered by the tests here: bf16, activation checkpointing and DeepSpeed (the test is on CPU in
float32) and a reward that rises (the tiny random VLM never writes a parseable plan, so every reward is
0 and GRPO's advantages vanish); a real-scale run is the check for those.

Data: ShapesEdit samples (`DecomposerData`, the ground-truth plan of each is its program, as for the
unified decomposer), or `data_path`, a local jsonl or parquet file of rows {image, instruction, plan}:
`image` a path (relative to the file) or an image feature, `plan` the gold plan as `action | subject |
goal` lines. Such rows have no scenes, so only the format and f1 rewards apply to them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path

import datasets
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import GRPOConfig, GRPOTrainer

from earl.agents.decomposer import decompose_messages
from earl.agents.plan import PlanError, parse_plan
from earl.agents.rewards import make_reward_functions
from earl.errors import ConfigError, DataError
from earl.io import load_dataset_image
from earl.shapes.render import render
from earl.train.decomposer import (
    DecomposerData,
    DecomposerGRPORecipe,
    _peft_config,
    _train_and_save,
    _trainer_args,
    build_dataset,
    check_policy,
)
from earl.verify.messages import split_images

log = logging.getLogger(__name__)

SCENE_REWARDS = ("closed_loop", "closed_loop_rrm")  # need the ShapesEdit scenes of each row


def _resize(image: Image.Image, size: int | None) -> Image.Image:
    """Nearest-neighbour: ShapesEdit's flat shapes keep their edges and colours when upscaled."""
    image = image.convert("RGB")
    return image if size is None or image.size == (size, size) else image.resize((size, size), Image.NEAREST)


def chat_prompt(image: Image.Image, instruction: str) -> dict:
    """A row's prompt columns: `decompose_messages` with the image as a placeholder, the image apart."""
    messages, images = split_images(decompose_messages(image, instruction))
    return {"prompt": messages, "image": images[0]}


def shapes_dataset(data: DecomposerData, image_size: int | None, part: str = "train") -> datasets.Dataset:
    """`build_dataset`'s ShapesEdit rows (gold plans and scenes for every reward) with chat prompts. The
    `completion` column (the unified decomposer's SFT target) goes: trl decides whether rows are
    conversational from any one of prompt/completion, and a string completion would say they are not."""
    return build_dataset(None, data, part, prompts=lambda samples: [
        chat_prompt(_resize(render(s.source_scene), image_size), s.instruction) for s in samples]
    ).remove_columns("completion")


def file_dataset(path: str | Path, image_size: int | None) -> datasets.Dataset:
    """Rows {image, instruction, plan} of a local jsonl or parquet file as chat prompts and gold plans."""
    path = Path(path)
    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
    if kind is None or not path.is_file():
        raise ConfigError(f"data_path {path}: expected an existing .jsonl, .json or .parquet file")
    raw = datasets.load_dataset(kind, data_files=str(path), split="train")
    missing = {"image", "instruction", "plan"} - set(raw.column_names)
    if missing:
        raise DataError(f"{path}: rows need columns image, instruction, plan; missing {sorted(missing)}")
    rows = []
    for i, r in enumerate(raw):
        try:
            plan = parse_plan(r["plan"])
        except PlanError as e:
            raise DataError(f"{path} row {i}: the gold plan does not parse ({e})") from None
        rows.append({**chat_prompt(_resize(load_dataset_image(r["image"], path.parent, what=f"{path} row {i}: image"), image_size), r["instruction"]),
                     "gold_plan": json.dumps(plan.to_dict()), "instruction": r["instruction"]})
    return datasets.Dataset.from_list(rows)


def train_vlm_decomposer_grpo(recipe: DecomposerGRPORecipe, resume: bool = False) -> dict:
    """GRPO of a chat VLM decomposer (policy vlm) with `trl.GRPOTrainer` and earl's reward functions; writes
    OUT/model (model + processor, loadable by `LocalVLMBackend`) and OUT/trainer_log.json."""
    check_policy(recipe, "vlm", "decomposer-vlm-grpo")
    if recipe.data_path and set(recipe.rewards) & set(SCENE_REWARDS):
        raise ConfigError(f"rewards {sorted(set(recipe.rewards) & set(SCENE_REWARDS))} execute the plan on a ShapesEdit "
                          "scene; rows from data_path have none (use format and f1)")
    run = recipe.run
    if run.deepspeed and not Path(run.deepspeed).is_file():
        raise ConfigError(f"run.deepspeed: {run.deepspeed} not found (expected a DeepSpeed JSON config)")
    if not (Path(recipe.init_from) / "config.json").is_file():
        raise ConfigError(f"init_from {recipe.init_from}: not a local checkpoint directory (no config.json)")
    out = Path(recipe.out_dir)
    torch.manual_seed(run.seed)
    processor = AutoProcessor.from_pretrained(recipe.init_from, trust_remote_code=False)
    model = AutoModelForImageTextToText.from_pretrained(recipe.init_from, trust_remote_code=False,
                                                        dtype=getattr(torch, recipe.dtype))
    train = (file_dataset(recipe.data_path, recipe.image_size) if recipe.data_path
             else shapes_dataset(recipe.data, recipe.image_size))
    reward_funcs, weights = make_reward_functions(recipe.rewards, editor_dir=recipe.editor, rrm_dir=recipe.rrm)
    gpu = torch.cuda.is_available()
    # transformers 5.x renamed gradient_checkpointing (a deprecated alias now); older 5.x only has that name
    ckpt = "activation_checkpointing" if "activation_checkpointing" in {f.name for f in fields(GRPOConfig)} \
        else "gradient_checkpointing"
    args = _trainer_args(GRPOConfig, recipe, out, num_generations=recipe.num_generations,
                         temperature=recipe.temperature, beta=recipe.beta,
                         max_completion_length=recipe.max_completion_length, reward_weights=weights,
                         log_completions=False, use_cpu=not gpu, bf16=gpu and recipe.dtype == "bfloat16",
                         deepspeed=run.deepspeed, **{ckpt: run.gradient_checkpointing})
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train,
                          processing_class=processor, **_peft_config(recipe, model))
    return _train_and_save(trainer, out, recipe, resume, logged="reward")
