"""ShapesEdit as a Hugging Face dataset: the card that makes a written folder one, and its upload.

`write_dataset` puts a README.md beside data.parquet and meta.json. Its YAML names the folder's one
split (the part: train or test) and its file, so that

    datasets.load_dataset(DIR)          # -> DatasetDict({part: Dataset}), images as PIL (datasets.Image)

reads exactly data.parquet (not meta.json), locally or, after `push_dataset`, by the dataset's id.
The Markdown says what every field holds, how many samples of each category there are, and how the
oracle judges an edit, so a reader can use the data without earl.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from earl.errors import DataError
from earl.hub import upload
from earl.io import atomic_write_text, read_json

CARD = "README.md"
FIELDS = {
    "id": "`{split}-{part}-{index:06d}`",
    "split": "`simple` (one edit) or `complex` (compositional, relational, counting)",
    "part": "`train` or `test` (the fixed test set: its seed is reserved, so every copy is identical)",
    "category": "the kind of edit (see the counts below)",
    "instruction": "the edit request in English",
    "source_image": "the image to edit (PNG, `datasets.Image`)",
    "target_image": "the correct edit (PNG, `datasets.Image`)",
    "source_scene": "JSON scene graph of the source: background, grid, objects (shape, colour, size, row, col)",
    "target_scene": "JSON scene graph of the target",
    "program": "JSON edit program; applied to source_scene it gives target_scene exactly",
    "reasoning": "a short reasoning text that names the cells and objects involved",
}
ORACLE = """\
Every image is flat colours on a grid, so an edited image is read back into a scene graph
(`earl.shapes.oracle.parse_scene`: background from the border, a colour-mixture model per pixel,
ink per cell, the shape and size whose ideal mask fits best), robust to the blur, colour drift,
JPEG and noise of VQ reconstructions. The parsed scene is compared with `target_scene` as yes/no
principles: instruction principles (each changed cell, or the background, shows what the target
says), preservation principles (every other cell is unchanged) and quality principles (no stray
ink, clean objects). SC = 10 x min(instruction rate, preservation rate), PQ = 10 x quality rate,
overall = sqrt(SC x PQ); an edit succeeds when every principle passes. `earl judge shapes --data DIR
--images IMAGES` judges a folder of edited PNGs this way."""


def dataset_card(meta: dict, data_file: str) -> str:
    """The README.md of a dataset folder from its meta.json (see the module doc)."""
    part, split = meta["part"], meta["split"]
    front = {
        "license": "unknown",  # the publisher says; the generator sets no terms
        "pretty_name": "ShapesEdit",
        "task_categories": ["image-to-image"],
        "tags": ["image-editing", "synthetic", "earl", "shapesedit"],
        "size_categories": [_size_category(meta["n"])],
        "configs": [{"config_name": "default", "data_files": [{"split": part, "path": data_file}]}],
    }
    counts = "\n".join(f"| {c} | {k} |" for c, k in meta.get("counts", {}).items())
    fields = "\n".join(f"| `{name}` | {what} |" for name, what in FIELDS.items())
    return (f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n"
            f"# ShapesEdit ({split}, {part})\n\n"
            f"{meta['n']} synthetic image edits: coloured shapes on a {meta['grid']}x{meta['grid']} grid, "
            f"{meta['image_size']}x{meta['image_size']} pixels, each with its scene graphs and edit program, so "
            "every edit has one exactly checkable answer.\n\n"
            "```python\nimport datasets\n\n"
            f'ds = datasets.load_dataset("DIR or org/name")["{part}"]\n'
            'ds[0]["source_image"], ds[0]["instruction"], ds[0]["target_image"]  # PIL, str, PIL\n```\n\n'
            f"## Fields\n\n| field | holds |\n|---|---|\n{fields}\n\n"
            f"## Split\n\nOne split, `{part}`, of the `{split}` edits (seed {meta['seed']}"
            + (f"; train sets exclude the first {meta['test_keys_excluded']} test items)" if meta.get(
                "test_keys_excluded") else ")")
            + f".\n\n| category | samples |\n|---|---|\n{counts}\n\n"
            f"## How the oracle judges an edit\n\n{ORACLE}\n\n"
            f"## Provenance\n\nWritten by `{meta.get('created_by')}` (format {meta.get('format')} "
            f"v{meta.get('format_version')}); `meta.json` holds the generator's arguments. The same arguments "
            "give the same samples.\n")


def write_dataset_card(data_dir: str | os.PathLike, meta: dict, data_file: str = "data.parquet") -> Path:
    path = Path(data_dir) / CARD
    atomic_write_text(path, dataset_card(meta, data_file))
    return path


def push_dataset(data_dir: str | os.PathLike, repo_id: str, token: str | None = None,
                 private: bool | None = None) -> str:
    """Upload a dataset folder written by `earl data shapes` (`--push-to-hub`); returns the commit's URL.
    A folder written before datasets had cards gets one first."""
    data_dir = Path(data_dir)
    for name in ("data.parquet", "meta.json"):
        if not (data_dir / name).is_file():
            raise DataError(f"{data_dir}: no {name}; expected a folder written by `earl data shapes`")
    if not (data_dir / CARD).is_file():
        write_dataset_card(data_dir, read_json(data_dir / "meta.json"))
    return upload(data_dir, repo_id, token=token, private=private, repo_type="dataset",
                  commit_message=f"Upload ShapesEdit {data_dir.name} with earl")


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"
