"""Generating edits for a set of prompts and judging them with the ShapesEdit oracle.

Shared by the SFT trainer's periodic evaluation and `earl eval shapes`, so the numbers a
training log shows and the numbers an evaluation reports come from one piece of code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from earl import io as earl_io  # save_png looked up per call, so a test can stop a run mid-way
from earl.errors import EarlError
from earl.generate import (
    DecodeCache,
    GenerationCost,
    GenerationOutput,
    SamplingConfig,
    choose_decoder,
    sample_edits,
)
from earl.generate.vllm_engine import VLLMEngine, check_engine, check_sampling
from earl.io import atomic_write_json, load_image, read_json
from earl.model import UnifiedEditor, check_kind
from earl.seeds import sample_seed
from earl.shapes.oracle import judge
from earl.shapes.scene import Scene
from earl.viz import image_grid


def generate_in_batches(editor, instructions: list[str], source_codes: torch.Tensor, sampling: SamplingConfig,
                        batch_size: int = 32, seed: int = 0, progress: bool = False, decoder: str = "auto",
                        cache: DecodeCache | None = None, schedule: str = "sequential",
                        window: int | None = None) -> GenerationOutput:
    """`sample_edits` over a long list, in batches; seeded per batch so results don't depend on batch order.
    `decoder`, `schedule`, `window`: as `sample_edits` takes them; one `DecodeCache` (`cache`, else one
    made here) serves every batch, so a static or compiled decoder is set up once per shape, not once
    per batch. The result's `forward_passes` sums the batches'."""
    outs = []
    n = len(instructions)
    cache = cache if cache is not None else DecodeCache()
    for b, start in enumerate(tqdm(range(0, n, batch_size), desc="generate", disable=not progress)):
        g = torch.Generator(device=editor.device).manual_seed(seed * 1_000_003 + b)
        outs.append(sample_edits(editor.backbone, editor.layout, instructions[start : start + batch_size],
                                 source_codes[start : start + batch_size], sampling, think=editor.config.cot,
                                 generator=g, decoder=decoder, cache=cache, schedule=schedule, window=window))
    return concat_outputs(outs)


def concat_outputs(outs: list[GenerationOutput]) -> GenerationOutput:
    """Join batch outputs row-wise, right-padding completions to the longest (thinking lengths differ)."""
    if len(outs) == 1:
        return outs[0]
    T = max(o.completions.shape[1] for o in outs)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, T - t.shape[1]), value=value)

    return GenerationOutput(
        completions=torch.cat([pad(o.completions, 0) for o in outs]),
        logprobs=torch.cat([pad(o.logprobs, 0.0) for o in outs]),
        sampled_mask=torch.cat([pad(o.sampled_mask, False) for o in outs]),
        codes=stack_grids([c for o in outs for c in o.codes]),
        image_positions=torch.cat([pad(o.image_positions, False) for o in outs]),
        thinking=sum((o.thinking for o in outs), []),
        forward_passes=sum(o.forward_passes for o in outs),
    )


def stack_grids(grids) -> torch.Tensor | list[torch.Tensor]:
    """One (N, h, w) tensor when every grid has one shape, else the list (aspect-preserving tokenizers
    such as Emu3's give each image its own grid)."""
    grids = list(grids)
    if grids and all(g.shape == grids[0].shape for g in grids):
        return torch.stack(grids)
    return grids


def decode_grids(editor, grids) -> list:
    """Images of code grids, batched by shape (a tensor batch or a list of differently shaped grids)."""
    if isinstance(grids, torch.Tensor):
        return editor.decode_codes(grids)
    out = [None] * len(grids)
    by_shape: dict[tuple, list[int]] = {}
    for i, g in enumerate(grids):
        by_shape.setdefault(tuple(g.shape), []).append(i)
    for idx in by_shape.values():
        for i, im in zip(idx, editor.decode_codes(torch.stack([grids[i] for i in idx]))):
            out[i] = im
    return out


def oracle_scores(images, source_scenes_json: list[str], target_scenes_json: list[str],
                  instructions: list[str]) -> list[dict]:
    """Judge each image against its sample's scenes; one dict per sample (success, sc, pq, overall, principles)."""
    out = []
    for img, s, t, ins in zip(images, source_scenes_json, target_scenes_json, instructions):
        j = judge(Scene.from_dict(json.loads(s)), Scene.from_dict(json.loads(t)), img, instruction=ins)
        out.append(j.to_dict())
    return out


def oracle_eval(editor, evalset, n: int, sampling: SamplingConfig, seed: int = 0) -> dict[str, float]:
    """Generate edits for the first n samples of an `EncodedEdits` set and summarise the oracle's verdicts."""
    n = min(n, len(evalset))
    if n == 0 or not all(evalset.source_scenes[:n]):
        return {}
    out = generate_in_batches(editor, evalset.instructions[:n], evalset.source_codes[:n], sampling, seed=seed)
    images = editor.decode_codes(out.codes)
    summary = summarise(oracle_scores(images, evalset.source_scenes[:n], evalset.target_scenes[:n],
                                      evalset.instructions[:n]))
    return {k: v for k, v in summary.items() if k != "n"}


def summarise(judgements: list[dict]) -> dict[str, float]:
    n = len(judgements)
    if n == 0:
        return {"success": math.nan, "sc": math.nan, "pq": math.nan, "overall": math.nan, "n": 0}
    return {
        "success": sum(bool(j["success"]) for j in judgements) / n,
        "sc": sum(j["sc"] for j in judgements) / n,
        "pq": sum(j["pq"] for j in judgements) / n,
        "overall": sum(j["overall"] for j in judgements) / n,
        "n": n,
    }


def run_shapes_eval(model_dir, data_dir, out_dir, sampling: SamplingConfig | None = None, batch_size: int = 32,
                    seed: int = 0, progress: bool = True, editor=None, decoder: str = "auto",
                    schedule: str = "sequential", window: int | None = None, engine: str = "earl",
                    engine_options: dict | None = None) -> dict:
    """`earl eval shapes`: generate an edit per sample into OUT/images/{id}.png, judge, report.

    Resumable: samples whose PNG already exists are not generated again. Each sample draws from its
    own generator seeded by `sample_seed(seed, id)`, so at temperature > 0 an interrupted and resumed
    run writes the same images as one that ran through, whatever the batch size. Writes OUT/results.json
    (the `earl judge shapes` format), OUT/grid.png (source | target | output) and returns results.
    `decoder`, `schedule`, `window`: as `sample_edits` takes them (one `DecodeCache` serves every batch).
    results.json's `generation` says what the images this run made cost (`GenerationCost`: the
    schedule, forward passes in all and per image, tokens per pass); a resumed run counts only the
    images it made (`images`), and a run that made none keeps the previous run's count. `engine`:
    "earl" (that sampler) or "vllm" (one `VLLMEngine` over the editor's backbone for the whole run,
    `engine_options` passed to it; greedy, the same images; sampled, vLLM's random stream, seeded per
    sample as above; sequential schedule only).
    """
    from earl.shapes.dataset import load_dataset  # here, not at the top: it loads `datasets`
    from earl.shapes.judge import judge_folder  # here, not at the top: it loads `datasets`

    sampling = sampling or SamplingConfig(temperature=0.0)
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    purpose = "`earl eval shapes --model`"
    loaded = editor is None
    if editor is None:
        editor = UnifiedEditor.from_pretrained(model_dir, kind="editor", purpose=purpose)
    check_kind(model_dir, editor.kind, "editor", purpose)
    check_engine(engine)
    if engine == "vllm" and schedule != "sequential":
        raise EarlError(f"schedule {schedule!r} runs on earl's sampler only: engine 'vllm' decodes sequentially")
    if engine == "vllm" and decoder != "auto":
        raise EarlError(f"decoder {decoder!r} is earl's sampler's; engine 'vllm' decodes with vLLM (leave decoder 'auto')")
    choose_decoder(editor.backbone, editor.device, decoder)  # a decoder that cannot run here fails before any work
    if engine == "vllm":
        check_sampling(editor.layout, sampling, editor.config.cot)
    ds = load_dataset(data_dir)
    todo = [i for i, sid in enumerate(ds["id"]) if not (img_dir / f"{sid}.png").is_file()]
    vllm = None
    if engine == "vllm" and todo:  # over the directory's backbone, or the given editor's weights exported
        vllm = VLLMEngine.for_editor(editor, model_dir if loaded else None, **(engine_options or {}))
    bar = tqdm(total=len(todo), desc="edit", disable=not progress)
    cache = DecodeCache()
    cost = GenerationCost(schedule, window)
    for start in range(0, len(todo), batch_size):
        rows = ds.select(todo[start : start + batch_size])
        codes = editor.encode_images([editor.preprocess(im)[0] for im in rows["source_image"]])
        gens = [torch.Generator(device=editor.device).manual_seed(sample_seed(seed, sid)) for sid in rows["id"]]
        if vllm is not None:
            out = cost.add(vllm.sample_edits(list(rows["instruction"]), codes, sampling, think=editor.config.cot,
                                             generator=gens))
        else:
            out = cost.add(sample_edits(editor.backbone, editor.layout, list(rows["instruction"]), codes, sampling,
                                        think=editor.config.cot, generator=gens, decoder=decoder, cache=cache,
                                        schedule=schedule, window=window))
        for sid, im in zip(rows["id"], editor.decode_codes(out.codes)):
            earl_io.save_png(im, img_dir / f"{sid}.png")  # atomic: a crash never leaves a half-written image
        bar.update(len(rows))
    bar.close()
    results = judge_folder(data_dir, img_dir, progress=progress)
    results["model"] = str(model_dir)
    results["engine"] = engine
    results["sampling"] = {k: getattr(sampling, k) for k in ("guidance_scale", "temperature", "top_k", "top_p")}
    previous = out_dir / "results.json"
    if cost.images or not previous.is_file():
        results["generation"] = cost.to_dict()
    elif "generation" in (kept := read_json(previous)):
        results["generation"] = kept["generation"]
    atomic_write_json(out_dir / "results.json", results)
    k = min(8, len(ds))
    grid = image_grid([[ds[i]["source_image"], ds[i]["target_image"],
                        load_image(img_dir / f"{ds[i]['id']}.png")] for i in range(k)],
                      col_labels=["source", "target", "output"], scale=2)
    earl_io.save_png(grid, out_dir / "grid.png")
    return results
