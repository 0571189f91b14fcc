"""Edit records from real datasets, read through a small declarative field spec.

Edit datasets all hold the same thing, (source image, instruction, edited image), under different
names and in different containers. A `RecordSpec` (a YAML file, see `recipes/data/`) says where a
dataset is and which column is which; `iter_records` streams it as uniform `EditRecord`s:

    name: magicbrush
    format: parquet            # jsonl | parquet | hf   (hf = a datasets.save_to_disk directory)
    path: /data/MagicBrush     # a file, or a directory searched for *.jsonl / *.parquet
    fields: {id: img_id, instruction: instruction, source_image: source_img, target_image: target_img}
    image_root: null           # where relative image paths point (default: the data file's directory)

Images may be stored as bytes, as {"bytes", "path"} structs (parquet written by `datasets`), as
decoded images, or as paths. Reading streams (jsonl line by line, parquet by row group, an `hf`
directory memory-mapped), so a dataset larger than memory is fine. A record whose images cannot be
read is skipped and reported by `iter_records`'s `errors` list, never silently dropped.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from earl.errors import DataError
from earl.io import iter_jsonl, load_dataset_image

FORMATS = ("jsonl", "parquet", "hf")
REQUIRED_FIELDS = ("instruction", "source_image", "target_image")


@dataclass
class RecordSpec:
    name: str
    format: str
    path: str
    fields: dict[str, str]  # earl name -> column name: id (optional), instruction, source_image, target_image,
    #                         reasoning (optional)
    image_root: str | None = None
    instruction_pick: str = "first"  # when the instruction column holds a list: "first" or "random" (seeded)
    seed: int = 0

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        missing = [f for f in REQUIRED_FIELDS if f not in self.fields]
        if missing:
            raise ValueError(f"fields: missing {', '.join(missing)} (map each earl field to a column name)")
        unknown = set(self.fields) - {*REQUIRED_FIELDS, "id", "reasoning"}
        if unknown:
            raise ValueError(f"fields: unknown earl field(s) {sorted(unknown)}; expected id, instruction, "
                             "source_image, target_image, reasoning")
        if self.instruction_pick not in ("first", "random"):
            raise ValueError(f"instruction_pick must be 'first' or 'random', got {self.instruction_pick!r}")


@dataclass
class EditRecord:
    id: str
    instruction: str
    source: Image.Image
    target: Image.Image
    reasoning: str = ""


@dataclass
class ReadReport:
    """What `iter_records` skipped, by record id, with the reason."""

    errors: list[dict] = field(default_factory=list)


def _files(path: Path, suffix: str) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.rglob(f"*{suffix}"))
        if files:
            return files
        raise DataError(f"{path}: no {suffix} files found")
    raise DataError(f"{path}: dataset path not found")


def _rows(spec: RecordSpec) -> Iterator[tuple[dict, Path]]:
    """Raw rows with the directory their relative paths are relative to."""
    path = Path(spec.path)
    if spec.format == "jsonl":
        for f in _files(path, ".jsonl"):
            for _, row in iter_jsonl(f):
                yield row, f.parent
    elif spec.format == "parquet":
        import pyarrow.parquet as pq

        for f in _files(path, ".parquet"):
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=64):
                for row in batch.to_pylist():
                    yield row, f.parent
    else:
        import datasets

        if not path.is_dir():
            raise DataError(f"{path}: not a datasets.save_to_disk directory")
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        for row in ds:
            yield row, path


def _image(value, base: Path, root: str | None, what: str) -> Image.Image:
    return load_dataset_image(value, Path(root) if root else base, what=what)


def iter_records(spec: RecordSpec, report: ReadReport | None = None) -> Iterator[EditRecord]:
    """Stream a dataset as `EditRecord`s in its stored order (deterministic, so tokenising can resume)."""
    f = spec.fields
    rng = random.Random(spec.seed)
    checked = False
    for n, (row, base) in enumerate(_rows(spec)):
        if not checked:
            missing = [col for col in f.values() if col not in row]
            if missing:
                raise DataError(f"{spec.path}: column(s) {missing} not found (the spec '{spec.name}' maps "
                                f"{f}); the data has {sorted(row)}")
            checked = True
        rid = str(row[f["id"]]) if "id" in f else f"{spec.name}-{n}"
        instruction = row[f["instruction"]]
        if isinstance(instruction, (list, tuple)):
            if not instruction:
                (report.errors.append({"id": rid, "reason": "empty instruction list"}) if report else None)
                continue
            instruction = instruction[0] if spec.instruction_pick == "first" else rng.choice(list(instruction))
        if not isinstance(instruction, str) or not instruction.strip():
            if report is not None:
                report.errors.append({"id": rid, "reason": "empty or non-text instruction"})
            continue
        try:
            source = _image(row[f["source_image"]], base, spec.image_root, f"{spec.name} {rid} source image")
            target = _image(row[f["target_image"]], base, spec.image_root, f"{spec.name} {rid} target image")
        except DataError as e:
            if report is not None:
                report.errors.append({"id": rid, "reason": str(e)})
            continue
        reasoning = str(row[f["reasoning"]] or "") if "reasoning" in f else ""
        yield EditRecord(rid, instruction.strip(), source, target, reasoning)
