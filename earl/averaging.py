"""Weight averaging of editors fine-tuned from one start: model soups, and WARM for reward models.

Models fine-tuned from the same weights stay in one basin, so the mean of their weights is a model
too, often better and steadier than any one of them (Wortsman et al. 2022, "Model soups"; Ramé et al.
2024, "WARM: On the Benefits of Weight Averaged Reward Models", for reward models that RL would
otherwise exploit). earl uses it for GCPO, whose checkpoints swing from one to the next: average the
last few checkpoints of one run, or the final models of several seeds.

Only the backbone is averaged. The image and text tokenizers and `editor.json` must be the same in
every model (they are frozen in every earl recipe), so they are copied from the first. Floating
tensors are averaged in float32 and stored in their own dtype; integer tensors must agree. The output
is a plain editor directory, written atomically, with `averaging.json` saying what it was made of.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from earl.cards import CARD, write_model_card
from earl.errors import EarlError
from earl.io import atomic_directory, atomic_write_json

BACKBONE = "backbone"
RECORD = "averaging.json"


def _weight_files(model: Path) -> dict[str, Path]:
    """{tensor name: the backbone's safetensors file holding it} (one file, or the shards of one)."""
    from safetensors import safe_open

    files = sorted((model / BACKBONE).glob("*.safetensors"))
    if not files:
        raise EarlError(f"{model / BACKBONE}: no *.safetensors weights (expected an editor directory "
                        "written by UnifiedEditor.save_pretrained)")
    where = {}
    for f in files:
        with safe_open(f, framework="pt") as sf:
            where.update(dict.fromkeys(sf.keys(), f))
    return where


def _same_files(first: Path, other: Path, sub: str) -> None:
    """Everything in `sub` (a tokenizer directory, editor.json, the backbone's config) byte-identical."""
    a, b = first / sub, other / sub
    if a.is_file() or b.is_file():
        pairs = [(a, b)]
    else:
        names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        if names != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
            raise EarlError(f"{b}: its files differ from {a}; averaged models must share their {sub}")
        pairs = [(a / n, b / n) for n in names]
    for x, y in pairs:
        if not y.is_file() or not _same_content(x, y):
            raise EarlError(f"{y} differs from {x}: averaged models must be fine-tuned from one start "
                            f"with the same {sub}")


# Keys that transformers writes into configs from how a model was loaded or saved, not what it is:
# a tokenizer loaded from a path and saved again gains "is_local" and "local_files_only".
BOOKKEEPING_KEYS = ("transformers_version", "is_local", "local_files_only", "name_or_path", "_name_or_path")


def _same_content(x: Path, y: Path) -> bool:
    """Whether two files hold the same thing: equal tensors for safetensors (whose bytes need not be
    equal for equal tensors), JSON as data, anything else byte for byte."""
    if x.suffix == ".safetensors":
        from safetensors.torch import load_file

        a, b = load_file(x), load_file(y)
        return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    return _content(x) == _content(y)


def _content(path: Path):
    """A file's content for comparison; a JSON file as data without transformers' bookkeeping keys."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return path.read_bytes()
        if isinstance(data, dict):
            for key in BOOKKEEPING_KEYS:
                data.pop(key, None)
        return data
    return path.read_bytes()


def average_editors(models: list[str | os.PathLike], out_dir: str | os.PathLike,
                    weights: list[float] | None = None) -> Path:
    """Write the weighted mean of the backbones of `models` (editor directories) to `out_dir`.

    `weights` (default: equal) are normalised to sum to one; each must be positive. Returns `out_dir`.
    A model that is missing, of another architecture or vocabulary, or with other tokenizers is an
    error naming it; nothing is written then.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    paths = [Path(m) for m in models]
    if len(paths) < 2:
        raise EarlError("averaging needs at least two models")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise EarlError(f"{len(weights)} weights for {len(paths)} models")
    if any(not w > 0 for w in weights):
        raise EarlError(f"weights must be positive, got {weights}")
    weights = [w / sum(weights) for w in weights]
    for p in paths:
        if not (p / "editor.json").is_file() or not (p / BACKBONE).is_dir():
            raise EarlError(f"{p}: not an earl editor (expected editor.json and backbone/)")
    out_dir = Path(out_dir)
    if any(out_dir.resolve() == p.resolve() for p in paths):
        raise EarlError(f"{out_dir}: the output must not be one of the models averaged")
    first = paths[0]
    for p in paths[1:]:
        for sub in ("editor.json", f"{BACKBONE}/config.json", "image_tokenizer", "text_tokenizer"):
            _same_files(first, p, sub)
    layouts = [_weight_files(p) for p in paths]
    for p, layout in zip(paths[1:], layouts[1:]):
        if set(layout) != set(layouts[0]):
            extra = sorted(set(layout) ^ set(layouts[0]))[:3]
            raise EarlError(f"{p}: its tensors differ from {first}'s (e.g. {', '.join(extra)})")

    with atomic_directory(out_dir) as tmp:
        for item in first.iterdir():  # tokenizers, editor.json, backbone config; weights replaced below
            if item.name in ("manifest.json", RECORD, CARD):  # a bundle's hashes, an average's record, a card
                continue
            if item.name == BACKBONE:
                shutil.copytree(item, tmp / item.name, ignore=shutil.ignore_patterns("*.safetensors"))
            elif item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        for shard in sorted(set(layouts[0].values())):
            averaged = {}
            for name in (n for n, f in layouts[0].items() if f == shard):
                tensors = []
                for layout in layouts:
                    with safe_open(layout[name], framework="pt") as sf:
                        tensors.append(sf.get_tensor(name))
                averaged[name] = _mean(name, tensors, weights, paths)
            with safe_open(shard, framework="pt") as sf:
                metadata = sf.metadata()
            save_file(averaged, tmp / BACKBONE / shard.name, metadata=metadata)
        atomic_write_json(tmp / RECORD, {"models": [str(p) for p in paths], "weights": weights,
                                         "what": "mean of the backbones' weights; tokenizers from the first"})
        write_model_card(tmp, repo_id=out_dir.name)
    return out_dir


def _mean(name: str, tensors: list[torch.Tensor], weights: list[float], paths: list[Path]) -> torch.Tensor:
    ref = tensors[0]
    for p, t in zip(paths[1:], tensors[1:]):
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise EarlError(f"{p}: tensor {name} is {tuple(t.shape)} {t.dtype}, "
                            f"{paths[0]} has {tuple(ref.shape)} {ref.dtype}")
    if not ref.is_floating_point():
        if any(not torch.equal(t, ref) for t in tensors[1:]):
            raise EarlError(f"tensor {name} is an integer tensor and differs between the models; cannot average")
        return ref
    total = torch.zeros(ref.shape, dtype=torch.float32)
    for w, t in zip(weights, tensors):
        total += w * t.float()
    return total.to(ref.dtype).contiguous()

