"""A Hugging Face Hub cache laid out by hand, as `huggingface_hub` writes it, so tests load models by id
with no network (HF_HUB_OFFLINE=1):

    HF_HUB_CACHE/models--{org}--{name}/
        blobs/{sha256 of the file}                 the bytes, once per distinct file
        snapshots/{commit}/{relative path}         a relative symlink to blobs/{sha256}, two levels up
        refs/{branch or tag}                       the commit it points to
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def add_snapshot(cache: Path, repo_id: str, source: Path, commit: str, refs: tuple[str, ...] = ("main",),
                 repo_type: str = "models") -> Path:
    """Copy the directory `source` into `cache` as `repo_id` at `commit`; returns the snapshot directory."""
    repo = cache / f"{repo_type}--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for f in sorted(p for p in Path(source).rglob("*") if p.is_file()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(f, blob)
        link = snapshot / f.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # huggingface_hub writes the hash with no newline
    return snapshot
