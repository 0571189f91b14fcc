"""Editing agents: apply one simple instruction to each image of a batch.

`Editor.edit(images, instructions, temperature, seeds) -> images` (None for a failed step).
`PipelineEditor` implements it over any earl editor directory (the bundled ShapesEdit editor, an Emu3
editor), batched through the sampler, one seed per row so a resampled step draws a new edit. An image
it made carries its code grid (`image.info["earl_codes"]`), and the next step starts from those codes
instead of re-encoding the decoded pixels: every re-encoding adds quantisation drift, and over a plan
it costs (ground-truth plans, first 100 complex test samples, greedy: 80% success carrying codes, 69%
re-encoding).
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from earl.errors import EarlError
from earl.generate import GenerationCost, SamplingConfig, sample_edits
from earl.generate.vllm_engine import VLLMEngine, check_engine
from earl.hub import resolve_model
from earl.model import UnifiedEditor
from earl.pipeline import default_checkpoint

CODES_KEY = "earl_codes"  # PIL info key of the code grid an image was decoded from


@runtime_checkable
class Editor(Protocol):
    name: str

    def edit(self, images: list[Image.Image], instructions: list[str], temperature: float = 0.0,
             seeds: list[int] | None = None) -> list[Image.Image | None]: ...


class PipelineEditor:
    name = "earl"

    def __init__(self, editor: UnifiedEditor, guidance_scale: float = 1.0, batch_size: int = 64,
                 schedule: str = "sequential", window: int | None = None, engine: VLLMEngine | None = None):
        """`schedule`, `window`: the sampler's decoding schedule (`sample_edits`); `cost` counts the
        forwards of every edit this editor made (`GenerationCost`). `engine`: None samples with earl's
        sampler; a `VLLMEngine` over this editor's backbone, on vLLM (one call per chunk, each row seeded
        by its own generator; sequential schedule only)."""
        if engine is not None and schedule != "sequential":
            raise EarlError(f"schedule {schedule!r} runs on earl's sampler only: use engine='earl' with it")
        self.editor = editor.eval()
        self.guidance_scale, self.batch_size = guidance_scale, batch_size
        self.schedule, self.window = schedule, window
        self.cost = GenerationCost(schedule, window)
        self.engine = engine

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, device: str = "cpu", engine: str = "earl",
                        engine_options: dict | None = None, **kw) -> PipelineEditor:
        """`engine`: "earl" or "vllm" (`earl.generate.vllm_engine`, `engine_options` passed to it)."""
        check_engine(engine)
        path = resolve_model(path or default_checkpoint())
        editor = UnifiedEditor.from_pretrained(path, device=device, kind="editor", purpose="the agent's editor")
        if engine == "vllm":
            return cls(editor, engine=VLLMEngine.for_editor(editor, path, **(engine_options or {})), **kw)
        if engine_options:
            raise EarlError("engine_options apply to engine='vllm'")
        return cls(editor, **kw)

    @torch.no_grad()
    def edit(self, images, instructions, temperature: float = 0.0, seeds=None):
        ed = self.editor
        sampling = SamplingConfig(guidance_scale=self.guidance_scale, temperature=temperature)
        seeds = seeds if seeds is not None else [0] * len(images)
        out: list[Image.Image] = []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            pre = [ed.preprocess(im) for im in images[chunk]]
            codes = self._codes(images[chunk], pre)
            if self.engine is not None:  # per-row generators: a row's vLLM seed comes from its own seed
                gens = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
                grids = self.cost.add(self.engine.sample_edits(list(instructions[chunk]), codes, sampling,
                                                               think=ed.config.cot, generator=gens)).codes
            elif temperature > 0:  # one generator per row: a row's draw depends on its own seed only
                grids = [self.cost.add(sample_edits(ed.backbone, ed.layout, [ins], c[None], sampling,
                                                    think=ed.config.cot, schedule=self.schedule, window=self.window,
                                                    generator=torch.Generator(device=ed.device).manual_seed(s))).codes[0]
                         for ins, c, s in zip(instructions[chunk], codes, seeds[chunk])]
                grids = torch.stack(grids)
            else:
                grids = self.cost.add(sample_edits(ed.backbone, ed.layout, list(instructions[chunk]), codes, sampling,
                                                   think=ed.config.cot, schedule=self.schedule,
                                                   window=self.window)).codes
            for im, p, grid in zip(ed.decode_codes(grids), pre, grids):
                im = ed.postprocess(im, p[1])
                im.info[CODES_KEY] = grid.cpu()
                out.append(im)
        return out

    def _codes(self, images, pre) -> torch.Tensor:
        """Each image's code grid: the one it carries when this editor made it, else encoded."""
        ed = self.editor
        carried = [im.info.get(CODES_KEY) for im in images]
        todo = [i for i, c in enumerate(carried) if not isinstance(c, torch.Tensor)]
        if todo:
            for i, c in zip(todo, ed.encode_images([pre[i][0] for i in todo])):
                carried[i] = c
        return torch.stack([c.to(ed.device) for c in carried])

