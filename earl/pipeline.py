"""`EditPipeline`: edit images from Python.

    from earl.pipeline import EditPipeline
    pipe = EditPipeline.from_pretrained()               # the bundled ShapesEdit checkpoint
    result = pipe("in.png", "Make the red circle blue.")
    result.images[0].save("out.png"); print(result.thinking[0])

Inputs of any size or mode are converted by the editor's rule (RGB, alpha over white, resized to
the model's square grid) and outputs are resized back to the input's size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from earl.errors import EarlError
from earl.generate import SamplingConfig, fit_instruction, instruction_budget, sample_edits
from earl.generate.vllm_engine import VLLMEngine, check_engine
from earl.hub import resolve_model
from earl.model import UnifiedEditor

BUNDLED_CHECKPOINT = "shapes-editor"


def default_checkpoint() -> Path:
    """The bundled checkpoint: $EARL_CHECKPOINT, else `checkpoints/shapes-editor` in the source tree."""
    env = os.environ.get("EARL_CHECKPOINT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "checkpoints" / BUNDLED_CHECKPOINT


@dataclass
class EditResult:
    images: list[Image.Image]  # num_samples edited images at the input's size
    thinking: list[str | None]  # the reasoning text per sample (None for non-CoT models)
    forward_passes: int = 0  # forwards the edit ran (prefill included; `schedule` sets how many)
    tokens: int = 0  # completion tokens per sample (thinking, image and structure)

    @property
    def tokens_per_pass(self) -> float:
        """Completion tokens per forward, per sample."""
        return self.tokens / self.forward_passes if self.forward_passes else 0.0


class EditPipeline:
    def __init__(self, editor: UnifiedEditor, engine: VLLMEngine | None = None):
        """`engine`: None samples with earl's own sampler; a `VLLMEngine` over this editor's backbone
        samples on vLLM (`earl.generate.vllm_engine`)."""
        self.editor = editor.eval()
        self.engine = engine

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, device: str = "cpu",
                        image_area: int | None = None, revision: str | None = None, engine: str = "earl",
                        engine_options: dict | None = None) -> EditPipeline:
        """An editor directory or Hub id (`earl.hub`; default: the bundled checkpoint) or an Emu3 checkpoint
        as it is (resized by its own processor's rule, or earl's area rule at `image_area` pixels); another
        kind of model (a decomposer, a reward model) is refused. `engine`: "earl" (earl's sampler) or "vllm"
        (`VLLMEngine` over the editor's backbone, `engine_options` passed to it)."""
        check_engine(engine)
        path = resolve_model(path if path is not None else default_checkpoint(), revision)
        editor = UnifiedEditor.from_pretrained(path, device=device, image_area=image_area, kind="editor",
                                               purpose="EditPipeline")
        if engine == "vllm":
            return cls(editor, VLLMEngine.for_editor(editor, path, **(engine_options or {})))
        if engine_options:
            raise EarlError("engine_options apply to engine='vllm'")
        return cls(editor)

    def __call__(self, image, instruction: str, num_samples: int = 1, guidance_scale: float = 1.0,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 think: bool | None = None, truncate_instruction: bool = False, schedule: str = "sequential",
                 window: int | None = None) -> EditResult:
        """Edit one image. `think=None` follows the model (CoT models think); `think=True` needs a CoT model.
        `schedule`, `window`: "sequential", or "jacobi" with `window` codes verified per forward (the same
        greedy image in fewer forwards; `earl.generate.jacobi`); the result counts its `forward_passes`.

        An instruction too long for the model (its prompt and the edit must fit in the backbone's
        `max_position_embeddings`) is refused with an `EarlError` giving the limit and the lengths in
        tokens; with `truncate_instruction=True` it is cut, at a token boundary, to the longest prefix that fits."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise EarlError("instruction is empty")
        if num_samples < 1:
            raise EarlError(f"num_samples must be >= 1, got {num_samples}")
        if num_samples > 1 and temperature == 0:
            raise EarlError("num_samples > 1 at temperature 0 gives identical samples; set temperature > 0")
        cot = self.editor.config.cot
        if think and not cot:
            raise EarlError("this model was not trained with chain-of-thought; it cannot write thinking text "
                            "(use think=None or False)")
        think = cot if think is None else think
        try:
            sampling = SamplingConfig(guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p)
        except ValueError as e:
            raise EarlError(str(e)) from None
        pil, original_size = self.editor.preprocess(image)
        codes = self.editor.encode_images([pil]).repeat(num_samples, 1, 1)
        if truncate_instruction:
            budget = instruction_budget(self.editor.backbone, self.editor.layout, *codes.shape[1:], sampling, think,
                                        self.editor.image_tokenizer.downsample)
            if budget is not None:
                instruction = fit_instruction(self.editor.layout, instruction, budget)
        g = torch.Generator(device=self.editor.device).manual_seed(seed)
        if self.engine is not None:
            if schedule != "sequential":
                raise EarlError(f"schedule {schedule!r} runs on earl's sampler only: use engine='earl' with it")
            out = self.engine.sample_edits([instruction] * num_samples, codes, sampling, think=think, generator=g)
        else:
            out = sample_edits(self.editor.backbone, self.editor.layout, [instruction] * num_samples, codes, sampling,
                               think=think, generator=g, pixels_per_code=self.editor.image_tokenizer.downsample,
                               schedule=schedule, window=window)
        images = [self.editor.postprocess(im, original_size) for im in self.editor.decode_codes(out.codes)]
        return EditResult(images=images, thinking=out.thinking, forward_passes=out.forward_passes,
                          tokens=out.completions.shape[1])
