"""GRPO of a transformers chat VLM as the decomposer (e.g. Qwen2.5-VL-3B-Instruct), with trl:
`earl train decomposer-vlm-grpo recipes/agents/decomposer_vlm_grpo.yaml`.

The same recipe as `earl.train.decomposer.train_decomposer_grpo` (ImageEdit-R1's format + F1 rewards, or
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
  OUT/model as it would the base model.

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
from dataclasses import dataclass, field, fields
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
from earl.train.decomposer import DecomposerData, _train_and_save, _trainer_args, build_dataset
from earl.verify.messages import split_images

log = logging.getLogger(__name__)

SCENE_REWARDS = ("closed_loop", "closed_loop_rrm")  # need the ShapesEdit scenes of each row


@dataclass
class VLMDecomposerGRPORecipe:
    out_dir: str = "runs/decomposer_vlm_grpo"
    model: str = field(default="models/Qwen2.5-VL-3B-Instruct",
                       metadata={"help": "a local image-text-to-text checkpoint directory (nothing is downloaded)"})
    data: DecomposerData = field(default_factory=lambda: DecomposerData(complex_samples=2000, simple_samples=200, seed=1))
    data_path: str | None = field(default=None, metadata={"help": "jsonl/parquet of {image, instruction, plan} "
                                                                  "rows instead of ShapesEdit samples"})
    image_size: int | None = field(default=448, metadata={"help": "resize images to this square size (ShapesEdit "
                                                                  "images are 64x64); None keeps them"})
    # reward terms and weights, as in DecomposerGRPORecipe: format, f1, closed_loop, closed_loop_rrm
    rewards: dict[str, float] = field(default_factory=lambda: {"format": 0.1, "f1": 1.0})
    editor: str | None = field(default=None, metadata={"help": "editor for closed-loop rewards (default: bundled)"})
    rrm: str = "checkpoints/shapes-rrm-lenient"
    steps: int = 300
    batch_size: int = 16  # completions per step and process (prompts x num_generations, over all processes)
    num_generations: int = 8
    temperature: float = 1.0
    beta: float = 0.0  # KL to the reference model (trl's default 0: no reference copy in memory)
    lr: float = 1e-6
    max_completion_length: int = 256
    dtype: str = field(default="bfloat16", metadata={"help": "weights' dtype: bfloat16 or float32"})
    gradient_checkpointing: bool = True
    deepspeed: str | None = field(default=None, metadata={"help": "a DeepSpeed JSON config for the Trainer, e.g. "
                                                                  "recipes/deepspeed/zero2.json (under accelerate launch)"})
    seed: int = 0
    log_every: int = 5
    save_every: int = 50


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


def train_vlm_decomposer_grpo(recipe: VLMDecomposerGRPORecipe, resume: bool = False) -> dict:
    """GRPO of a chat VLM decomposer with `trl.GRPOTrainer` and earl's reward functions; writes OUT/model
    (model + processor, loadable by `LocalVLMBackend`) and OUT/trainer_log.json."""
    if recipe.batch_size % recipe.num_generations:
        raise ConfigError(f"batch_size {recipe.batch_size} must be a multiple of num_generations {recipe.num_generations}")
    if recipe.dtype not in ("bfloat16", "float32"):
        raise ConfigError(f"dtype must be bfloat16 or float32, got {recipe.dtype!r}")
    if recipe.data_path and set(recipe.rewards) & set(SCENE_REWARDS):
        raise ConfigError(f"rewards {sorted(set(recipe.rewards) & set(SCENE_REWARDS))} execute the plan on a ShapesEdit "
                          "scene; rows from data_path have none (use format and f1)")
    if recipe.deepspeed and not Path(recipe.deepspeed).is_file():
        raise ConfigError(f"deepspeed: {recipe.deepspeed} not found (expected a DeepSpeed JSON config)")
    if not (Path(recipe.model) / "config.json").is_file():
        raise ConfigError(f"model {recipe.model}: not a local checkpoint directory (no config.json)")
    out = Path(recipe.out_dir)
    torch.manual_seed(recipe.seed)
    processor = AutoProcessor.from_pretrained(recipe.model, trust_remote_code=False)
    model = AutoModelForImageTextToText.from_pretrained(recipe.model, trust_remote_code=False,
                                                        dtype=getattr(torch, recipe.dtype))
    train = (file_dataset(recipe.data_path, recipe.image_size) if recipe.data_path
             else shapes_dataset(recipe.data, recipe.image_size))
    reward_funcs, weights = make_reward_functions(recipe.rewards, editor_dir=recipe.editor, rrm_dir=recipe.rrm)
    gpu = torch.cuda.is_available()
    # transformers 5.x renamed gradient_checkpointing (a deprecated alias now); older 5.x only has that name
    ckpt = "activation_checkpointing" if "activation_checkpointing" in {f.name for f in fields(GRPOConfig)} \
        else "gradient_checkpointing"
    args = _trainer_args(GRPOConfig, recipe, out, per_device_train_batch_size=recipe.batch_size,
                         num_generations=recipe.num_generations, temperature=recipe.temperature, beta=recipe.beta,
                         max_completion_length=recipe.max_completion_length, reward_weights=weights,
                         log_completions=False, use_cpu=not gpu, bf16=gpu and recipe.dtype == "bfloat16",
                         deepspeed=recipe.deepspeed, **{ckpt: recipe.gradient_checkpointing})
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train,
                          processing_class=processor)
    return _train_and_save(trainer, out, recipe, resume, logged="reward")
