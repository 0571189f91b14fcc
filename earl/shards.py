"""Offline pre-tokenisation: edit records -> shards of code grids (`earl data tokenize`).

Encoding images is the expensive part of reading an edit dataset, and an image tokenizer is frozen,
so earl encodes each dataset once, with the editor's own preprocessing (its resize rule) and image
tokenizer, and training reads codes only. A shard directory holds

    shard_00000.safetensors   source/target codes of up to `shard_size` records, flattened, with
                              per-record offsets and (h, w) grid shapes (grids may differ: Emu3 keeps
                              each image's aspect ratio)
    shard_00000.jsonl         id, instruction, reasoning per record, in the same order
    manifest.json             the spec, the tokenizer's fingerprint, the shards and their sizes,
                              skipped records with reasons, and whether the dataset is complete

Each shard is written atomically and the manifest after it, so an interrupted run resumes at the
first record of the first missing shard (records stream in a deterministic order). `ShardedEdits`
reads the shards lazily (safetensors slices), so a dataset larger than memory trains fine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from earl.errors import DataError
from earl.io import atomic_path, atomic_write_json, atomic_write_text, read_json, read_jsonl
from earl.records import ReadReport, RecordSpec, iter_records

MANIFEST = "manifest.json"


def tokenizer_fingerprint(editor) -> str:
    """Identifies the image tokenizer and resize rule that made the codes (weights included)."""
    h = hashlib.sha256()
    for name, t in sorted(editor.image_tokenizer.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().float().numpy().tobytes()[:4096])
        h.update(str(tuple(t.shape)).encode())
    c = editor.config
    rule = [c.resize_rule, c.image_size, c.image_area]
    if c.resize_rule == "pixels":  # an Emu3 checkpoint's own processor rule
        rule += [c.min_pixels, c.max_pixels, c.spatial_factor]
    h.update(json.dumps(rule).encode())
    return h.hexdigest()[:16]


def _encode(editor, images) -> list[torch.Tensor]:
    """Codes of each image (batched by size after the editor's preprocessing)."""
    pils = [editor.preprocess(im)[0] for im in images]
    out: list[torch.Tensor | None] = [None] * len(pils)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(pils):
        by_size.setdefault(p.size, []).append(i)
    for idx in by_size.values():
        codes = editor.encode_images([pils[i] for i in idx]).cpu()
        for i, c in zip(idx, codes):
            out[i] = c
    return out


def _write_shard(out_dir: Path, index: int, records: list, editor) -> int:
    src = _encode(editor, [r.source for r in records])
    tgt = _encode(editor, [r.target for r in records])
    tensors = {}
    for name, grids in (("source", src), ("target", tgt)):
        lengths = torch.tensor([g.numel() for g in grids])
        tensors[f"{name}_codes"] = torch.cat([g.flatten() for g in grids]).to(torch.int32)
        tensors[f"{name}_offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        tensors[f"{name}_shapes"] = torch.tensor([tuple(g.shape) for g in grids], dtype=torch.long)
    stem = out_dir / f"shard_{index:05d}"
    atomic_write_text(stem.with_suffix(".jsonl"), "".join(
        json.dumps({"id": r.id, "instruction": r.instruction, "reasoning": r.reasoning}) + "\n" for r in records))
    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp))
    return len(records)


def tokenize_dataset(spec: RecordSpec, editor, out_dir: str | Path, shard_size: int = 1000, limit: int = 0,
                     progress: bool = True) -> dict:
    """Encode a dataset into shards under `out_dir`; resumes after the last complete shard."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = tokenizer_fingerprint(editor)
    manifest = read_json(out_dir / MANIFEST) if (out_dir / MANIFEST).is_file() else None
    if manifest is not None and manifest["tokenizer"] != fp:
        raise DataError(f"{out_dir}: its shards were made by another image tokenizer ({manifest['tokenizer']}, "
                        f"this one is {fp}); use a new output directory")
    if manifest is None:
        manifest = {"spec": asdict(spec), "tokenizer": fp, "shards": [], "skipped": [], "complete": False}
    if manifest["complete"]:
        return manifest
    # Records stream in a fixed order; a finished shard consumed its records plus the ones it skipped.
    consumed_before = sum(sh["n"] + sh["skipped"] for sh in manifest["shards"])
    written = sum(sh["n"] for sh in manifest["shards"])
    report = ReadReport()
    records: list = []
    bar = tqdm(desc=f"tokenize {spec.name}", initial=written, disable=not progress)

    def flush():
        nonlocal records
        if records or report.errors:
            index = len(manifest["shards"])
            n = _write_shard(out_dir, index, records, editor) if records else 0
            manifest["shards"].append({"name": f"shard_{index:05d}", "n": n, "skipped": len(report.errors)})
            manifest["skipped"] += report.errors
            report.errors.clear()
            atomic_write_json(out_dir / MANIFEST, manifest)
        records = []

    position = 0  # stream positions (records and skipped ones) consumed so far
    for rec in iter_records(spec, report):
        here = position + len(report.errors) + 1
        if here <= consumed_before:  # already in a finished shard
            position = here
            report.errors.clear()
            continue
        records.append(rec)
        bar.update(1)
        if limit and written + len(records) >= limit:
            break
        if len(records) + len(report.errors) >= shard_size:
            written += len(records)
            position = here
            flush()
    flush()
    bar.close()
    manifest["complete"] = True
    manifest["limit"] = limit or None
    manifest["records"] = sum(sh["n"] for sh in manifest["shards"])
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


class ShardedEdits(Dataset):
    """Pre-tokenised edits read lazily from a shard directory: item i -> (id, instruction, reasoning,
    source codes (h, w), target codes (h', w'))."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise DataError(f"{self.path}: no {MANIFEST} (expected a directory written by `earl data tokenize`)")
        self.manifest = read_json(self.path / MANIFEST)
        if not self.manifest.get("complete"):
            raise DataError(f"{self.path}: tokenisation did not finish; run `earl data tokenize` again to complete it")
        self.shards = [s for s in self.manifest["shards"] if s["n"]]
        self.starts = [0]
        for s in self.shards:
            self.starts.append(self.starts[-1] + s["n"])
        self._texts: dict[int, list[dict]] = {}
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def texts(self, key: str) -> list[str]:
        """One text field ("id", "instruction", "reasoning") of every item, from the jsonl files only."""
        return [self._shard_texts(k)[j][key] for k in range(len(self.shards)) for j in range(self.shards[k]["n"])]

    def _shard_texts(self, k: int) -> list[dict]:
        if k not in self._texts:
            stem = self.path / self.shards[k]["name"]
            self._texts[k] = read_jsonl(stem.with_suffix(".jsonl"))
        return self._texts[k]

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        import bisect

        k = bisect.bisect_right(self.starts, i) - 1
        return k, i - self.starts[k]

    def _shard(self, k: int):
        if k not in self._files:
            stem = self.path / self.shards[k]["name"]
            self._files[k] = safe_open(str(stem.with_suffix(".safetensors")), "pt")
        return self._files[k], self._shard_texts(k)

    def _grid(self, f, name: str, j: int) -> torch.Tensor:
        off = f.get_slice(f"{name}_offsets")[j : j + 2].tolist()
        h, w = f.get_slice(f"{name}_shapes")[j].tolist()
        return f.get_slice(f"{name}_codes")[off[0] : off[1]].long().view(h, w)

    def __getitem__(self, i: int) -> dict:
        k, j = self._locate(i)
        f, texts = self._shard(k)
        return {**texts[j], "source_codes": self._grid(f, "source", j), "target_codes": self._grid(f, "target", j)}
