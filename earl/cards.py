"""Model cards: the README.md the Hugging Face Hub shows for a model, written from what earl already knows.

A card is YAML metadata between `---` lines, then Markdown:

    ---
    library_name: earl
    license: unknown                       # the caller says; earl cannot know the weights' terms
    base_model: org/name                   # the recipe's init_from, when it is a Hub id
    datasets: [org/data]                   # when given
    tags: [earl, image-editing, ...]
    pipeline_tag: image-to-image           # editors
    model-index: [...]                     # the manifest's metrics, as the Hub reads evaluation results
    ---
    # name / what it is / how to load it / results table / the command that made them / files

The card is derived: `save_pretrained` writes one from `editor.json`, `earl checkpoint pack` rewrites it
from the manifest it has just written. So the card is not among the manifest's hashed files (it could
not be: it quotes the manifest), and editing it on the Hub never breaks `earl checkpoint verify`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from earl.hub import split_hub_id
from earl.io import atomic_write_text

CARD = "README.md"
TAGS = ["earl", "image-editing", "autoregressive"]
LOCAL_ROOTS = ("runs", "checkpoints")  # where earl's recipes write and bundle models
TASKS = {"editor": "image editing", "reward model": "judging edits", "decomposer": "planning edits"}
OVERALL = {"success": "edit success", "sc": "semantic consistency", "pq": "perceptual quality",
           "overall": "overall score"}


def write_model_card(model_dir: str | os.PathLike, repo_id: str | None = None, license: str = "unknown",
                     base_model: str | None = None, datasets: list[str] | None = None,
                     tags: list[str] | None = None) -> Path:
    """Write `model_dir/README.md` from its editor.json and, when present, its manifest.json; returns the path.

    `repo_id` is the id the card tells readers to load (default: the directory's name)."""
    model_dir = Path(model_dir)
    config = _read(model_dir / "editor.json")
    manifest = _read(model_dir / "manifest.json")
    card = model_card(config, manifest, repo_id or (manifest or {}).get("name") or model_dir.name,
                      license=license, base_model=base_model, datasets=datasets, tags=tags)
    atomic_write_text(model_dir / CARD, card)
    return model_dir / CARD


def model_card(config: dict | None, manifest: dict | None, repo_id: str, license: str = "unknown",
               base_model: str | None = None, datasets: list[str] | None = None,
               tags: list[str] | None = None) -> str:
    """The card's text (see the module doc); `config` is editor.json, `manifest` the checkpoint manifest."""
    kind = model_kind(manifest)
    meta = card_metadata(config, manifest, repo_id, kind, license, base_model, datasets, tags)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + _body(config, manifest, repo_id, kind)


def model_kind(manifest: dict | None) -> str:
    """"reward model" (judged by held-out verdicts), "decomposer" (writes plans) or "editor"."""
    metrics = (manifest or {}).get("metrics") or {}
    if any(isinstance(m, dict) and "held_out" in m for m in metrics.values()):
        return "reward model"
    if "decomposer" in str((manifest or {}).get("name", "")) + str((manifest or {}).get("command", "")):
        return "decomposer"
    return "editor"


def card_metadata(config, manifest, repo_id, kind, license="unknown", base_model=None, datasets=None,
                  tags=None) -> dict:
    meta: dict = {"library_name": "earl", "license": license}
    base_model = base_model or _hub_base(manifest)
    if base_model:
        meta["base_model"] = base_model
    if datasets:
        meta["datasets"] = list(datasets)
    extra = ["reward-model"] if kind == "reward model" else ["image-to-image"] if kind == "editor" else [kind]
    if config and config.get("cot"):
        extra.append("chain-of-thought")
    if config and config.get("image_tokenizer_kind") == "emu3":
        extra.append("emu3")
    meta["tags"] = list(dict.fromkeys(TAGS + extra + list(tags or [])))
    if kind == "editor":
        meta["pipeline_tag"] = "image-to-image"
    results = _model_index(manifest, kind)
    if results:
        meta["model-index"] = [{"name": repo_id.split("/")[-1], "results": results}]
    return meta


def _hub_base(manifest: dict | None) -> str | None:
    """The recipe's starting model when it names a Hub id (a local path means nothing to a reader): not a
    path here, and not under earl's own output folders (`runs/x`, `checkpoints/x` look like ids too)."""
    recipe = (manifest or {}).get("recipe") or {}
    init = recipe.get("init_from") or (recipe.get("model") or {}).get("init_from")
    if not isinstance(init, str) or Path(init).exists() or init.split("/")[0] in LOCAL_ROOTS:
        return None
    parsed = split_hub_id(init)
    return parsed[0] if parsed else None


def _model_index(manifest: dict | None, kind: str) -> list[dict]:
    """The manifest's metrics as the Hub's evaluation results: one result per evaluation."""
    out = []
    for name, summary in sorted(((manifest or {}).get("metrics") or {}).items()):
        if not isinstance(summary, dict):
            continue
        if "held_out" in summary:
            values = {k.removeprefix("eval/"): v for k, v in summary["held_out"].items()}
            names = {k: k.replace("_", " ") for k in values}
        else:
            values = {k: v for k, v in (summary.get("overall") or {}).items() if k in OVERALL}
            names = OVERALL
        metrics = [{"type": k, "value": round(float(v), 4), "name": names[k]} for k, v in values.items()]
        if metrics:
            task = "image-to-image" if kind == "editor" else "text-generation"
            out.append({"task": {"type": task, "name": TASKS[kind]}, "dataset": {"name": name, "type": name},
                        "metrics": metrics})
    return out


def _body(config: dict | None, manifest: dict | None, repo_id: str, kind: str) -> str:
    title = (manifest or {}).get("name") or repo_id.split("/")[-1]
    lines = [f"# {title}", "", f"An earl {kind}: {_describe(config)}.", "", "## Use", "",
             "```python", *_usage(repo_id, kind), "```", ""]
    if manifest and manifest.get("metrics"):
        lines += ["## Results", "", *_results_table(manifest["metrics"]), ""]
    if manifest:
        lines += [f"Made by `{manifest.get('command')}` (earl commit {manifest.get('commit')}, "
                  f"{manifest.get('created')}); the resolved recipe is in `manifest.json`.", ""]
    lines += ["## Files", "", "`manifest.json` holds the sha256 of every weight and config file; "
              "`earl checkpoint verify DIR` checks them. This card is written from it and is not itself hashed."
              if manifest else "Written by `UnifiedEditor.save_pretrained`; `earl checkpoint pack` adds a manifest "
              "with every file's sha256 and the evaluations.", ""]
    return "\n".join(lines)


def _describe(config: dict | None) -> str:
    if not config:
        return "an earl model directory"
    h, w = config.get("grid", ("?", "?"))
    size = (f"about {config['image_area']} pixels of area" if config.get("resize_rule") == "area"
            else f"{config.get('image_size')}x{config.get('image_size')} images")
    cot = "writes its reasoning before the image" if config.get("cot") else "no chain-of-thought"
    return f"{size}, {h}x{w} image codes ({config.get('image_tokenizer_kind', 'vq')} tokenizer), {cot}"


def _usage(repo_id: str, kind: str) -> list[str]:
    if kind == "reward model":
        return ["from earl.verify.base import build_verifier", "",
                f'rrm = build_verifier("rrm", model_path="{repo_id}")']
    if kind == "decomposer":
        return ["from earl.agents.pipeline import AgentPipeline", "",
                f'agent = AgentPipeline.from_pretrained(decomposer="{repo_id}")',
                'result = agent("in.png", "Make every circle red, then remove the square.")']
    return ["from earl.pipeline import EditPipeline", "", f'pipe = EditPipeline.from_pretrained("{repo_id}")',
            'pipe("in.png", "Make the red circle blue.").images[0].save("out.png")']


def _results_table(metrics: dict) -> list[str]:
    rows = ["| evaluation | metric | value |", "|---|---|---|"]
    for name, summary in sorted(metrics.items()):
        if not isinstance(summary, dict):
            continue
        flat = dict(summary.get("overall") or {})
        flat.update({f"success: {c}": v for c, v in (summary.get("per_category_success") or {}).items()})
        flat.update({k.removeprefix("eval/"): v for k, v in (summary.get("held_out") or {}).items()})
        rows += [f"| {name} | {k} | {_fmt(v)} |" for k, v in flat.items()]
    return rows


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _read(path: Path) -> dict | None:
    """A JSON file of the directory, or None when absent or unreadable (a card is written regardless)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None
