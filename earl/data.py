"""Edit datasets as the trainers see them: resolved, encoded to codes once, cached.

A data source in a recipe is either a dataset directory or a ShapesEdit spec string

    shapes:SPLIT:PART:N[:SEED]      e.g. shapes:simple:train:20000:0, shapes:complex:test:200

which is generated on first use into a cache directory (deterministic, so the cache is only a
time saver). Images are encoded with the frozen image tokenizer once and the code grids cached
as safetensors keyed by the dataset and tokenizer fingerprints: training never re-encodes pixels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from earl.errors import DataError
from earl.io import atomic_path
from tokenizer import pil_to_tensor


@dataclass
class EncodedEdits:
    """Parallel columns of one or more datasets, with images as code grids."""

    ids: list[str]
    categories: list[str]
    instructions: list[str]
    reasoning: list[str]
    source_scenes: list[str]  # JSON (ShapesEdit) or "" for datasets without scene graphs
    target_scenes: list[str]
    source_codes: torch.Tensor | list[torch.Tensor]  # (N, h, w) int64, or a list when grid shapes differ
    target_codes: torch.Tensor | list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def concat(parts: list[EncodedEdits]) -> EncodedEdits:
        if len(parts) == 1:
            return parts[0]
        lists = {k: sum((getattr(p, k) for p in parts), []) for k in
                 ("ids", "categories", "instructions", "reasoning", "source_scenes", "target_scenes")}
        if all(isinstance(p.source_codes, torch.Tensor) and isinstance(p.target_codes, torch.Tensor) for p in parts):
            return EncodedEdits(**lists, source_codes=torch.cat([p.source_codes for p in parts]),
                                target_codes=torch.cat([p.target_codes for p in parts]))
        # grids of different shapes (aspect-preserving tokenizers) are kept as lists of (h, w) tensors
        return EncodedEdits(**lists, source_codes=[g for p in parts for g in p.source_codes],
                            target_codes=[g for p in parts for g in p.target_codes])


def parse_shapes_spec(spec: str) -> dict:
    parts = spec.split(":")
    if len(parts) not in (4, 5) or parts[0] != "shapes" or parts[1] not in ("simple", "complex") \
            or parts[2] not in ("train", "test") or not parts[3].isdigit() or (len(parts) == 5 and not parts[4].isdigit()):
        raise DataError(f"data source {spec!r}: expected shapes:SPLIT:PART:N[:SEED] with SPLIT simple|complex, "
                        "PART train|test, e.g. shapes:simple:train:20000:0")
    return {"split": parts[1], "part": parts[2], "n": int(parts[3]), "seed": int(parts[4]) if len(parts) == 5 else 0}


def resolve_source(source: str, cache_dir: Path, image_size: int = 64) -> Path:
    """A dataset directory for `source`, generating ShapesEdit data into the cache when needed."""
    if not source.startswith("shapes:"):
        path = Path(source)
        if not path.is_dir():
            raise DataError(f"data source {source}: directory not found")
        return path
    from earl.shapes.dataset import write_dataset  # here, not at the top: it loads `datasets`

    spec = parse_shapes_spec(source)
    name = f"shapes-{spec['split']}-{spec['part']}-n{spec['n']}-s{spec['seed']}-{image_size}px"
    out = Path(cache_dir) / name
    if not (out / "meta.json").is_file():
        write_dataset(out, split=spec["split"], n=spec["n"], seed=spec["seed"], part=spec["part"], image_size=image_size)
    return out


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in (".json", ".parquet", ".safetensors"):
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_dataset(data_dir: Path, image_tokenizer, tokenizer_dir: Path | None, cache_dir: Path,
                   batch_size: int = 256, progress: bool = True) -> EncodedEdits:
    """Encode a dataset directory's images to codes, reusing the cache when the inputs are unchanged."""
    from earl.shapes.dataset import load_dataset  # here, not at the top: it loads `datasets`

    key = _fingerprint(Path(data_dir)) + (("-" + _fingerprint(Path(tokenizer_dir))) if tokenizer_dir else "")
    cache = Path(cache_dir) / f"codes-{Path(data_dir).name}-{key}.safetensors"
    ds = load_dataset(data_dir)
    text_cols = {
        "ids": list(ds["id"]), "categories": list(ds["category"]), "instructions": list(ds["instruction"]),
        "reasoning": list(ds["reasoning"]) if "reasoning" in ds.column_names else [""] * len(ds),
        "source_scenes": list(ds["source_scene"]) if "source_scene" in ds.column_names else [""] * len(ds),
        "target_scenes": list(ds["target_scene"]) if "target_scene" in ds.column_names else [""] * len(ds),
    }
    if cache.is_file():
        t = load_file(str(cache))
        return EncodedEdits(**text_cols, source_codes=t["source_codes"], target_codes=t["target_codes"])
    codes = {"source_codes": [], "target_codes": []}
    device = next(image_tokenizer.parameters()).device if hasattr(image_tokenizer, "parameters") else "cpu"
    bar = tqdm(range(0, len(ds), batch_size), desc=f"encode {Path(data_dir).name}", disable=not progress)
    for start in bar:
        rows = ds[start : start + batch_size]
        for col in ("source", "target"):
            x = pil_to_tensor(rows[f"{col}_image"]).to(device)
            codes[f"{col}_codes"].append(image_tokenizer.encode(x).cpu())
    tensors = {k: torch.cat(v).contiguous() for k, v in codes.items()}
    with atomic_path(cache) as tmp:
        save_file(tensors, str(tmp), metadata={"data_dir": str(data_dir), "n": json.dumps(len(ds))})
    return EncodedEdits(**text_cols, **tensors)
