"""Bundled checkpoints: pack a trained editor with a manifest, and verify one before trusting it.

A bundled checkpoint is a `UnifiedEditor` directory plus `manifest.json`:

    {"format": "earl-checkpoint", "format_version": 1,
     "name", "created" (UTC ISO date), "commit" (git HEAD of the tree that packed it, "+dirty" if
     it had uncommitted changes), "command" (how to re-make it), "recipe" (the resolved training
     recipe, from the run's recipe.json), "metrics" ({eval name: the results.json "overall" and
     per-category success, or for a reward model its run's held-out "eval/..." figures}),
     "files" ({relative path: {"sha256", "bytes"}}), "total_bytes"}

plus `README.md`, the model card (`earl.cards`), written from the manifest and therefore not among its
hashed files: a card edited on the Hub never fails verification, and the weights never go unchecked.

`pack_checkpoint` writes the whole directory next to the destination and renames it into place,
so a reader never sees half a checkpoint; `verify_checkpoint` recomputes every hash; `push_to_hub`
verifies, then uploads the directory as it is.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from earl.cards import CARD, write_model_card
from earl.errors import EarlError
from earl.hub import resolve_model, upload
from earl.io import atomic_directory, atomic_write_json, read_json

FORMAT = "earl-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(repo: str | os.PathLike) -> str:
    """HEAD of the git tree at `repo`, with "+dirty" if it has uncommitted changes; "unknown" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def _summarise_results(results: dict) -> dict:
    """An editor's `earl eval` results.json -> its overall and per-category figures; a training run's
    final_metrics.json (e.g. a reward model's held-out evaluation from `earl train rrm-sft`) -> its
    "eval/..." figures, since such a model is judged by its verdicts, not by edit success."""
    if isinstance(results, dict) and "overall" not in results:
        held_out = {k: v for k, v in results.items() if k.startswith("eval/") and isinstance(v, (int, float))}
        if not held_out:
            raise KeyError("overall (an `earl eval` results.json) or eval/... (a run's final_metrics.json)")
        return {"held_out": held_out, "step": results.get("step")}
    overall = {k: results["overall"][k] for k in ("success", "sc", "pq", "overall", "n") if k in results["overall"]}
    per_category = {cat: round(v["success"], 4) for cat, v in sorted(results.get("per_category", {}).items())}
    summary = {"overall": overall, "per_category_success": per_category}
    if isinstance(results.get("agent"), dict):  # an agent evaluation: how good the plans were, at what cost
        summary["agent"] = {k: results["agent"][k] for k in ("plan_f1", "exact_plans", "steps_per_edit",
                                                               "editor_calls_per_edit", "plan_failures")
                            if k in results["agent"]}
    return summary


def pack_checkpoint(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, name: str, command: str,
                    recipe: dict | None = None, evals: dict[str, str | os.PathLike] | None = None,
                    max_bytes: int | None = None, repo: str | os.PathLike | None = None,
                    card: dict | None = None, teacher_labels: dict | None = None) -> dict:
    """Copy the editor at `model_dir` to `out_dir` with a manifest and a model card; returns the manifest.
    `teacher_labels`: for a reward model, the teacher labels it consumed (recorded as given).

    `evals` maps an evaluation's name (e.g. "simple-test") to its results.json. Refuses a model
    larger than `max_bytes`. An existing `out_dir` is replaced only once the new one is complete.
    `card`: `earl.cards.write_model_card` fields (repo_id, license, base_model, datasets, tags).
    """
    model_dir, out_dir = resolve_model(model_dir), Path(out_dir)  # a directory, or a Hub id fetched
    if not (model_dir / "editor.json").is_file():
        raise EarlError(f"{model_dir}: not an editor directory (no editor.json); expected UnifiedEditor.save_pretrained output")
    derived = {CARD, MANIFEST}  # re-packing a packed checkpoint writes both afresh
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.relative_to(model_dir).as_posix() not in derived)
    total = sum(p.stat().st_size for p in files)
    if max_bytes is not None and total > max_bytes:
        raise EarlError(f"{model_dir}: {total / 2**20:.1f} MiB is over the {max_bytes / 2**20:.1f} MiB limit for a bundled checkpoint")
    metrics = {}
    for eval_name, path in (evals or {}).items():
        results = read_json(path)  # a missing or non-JSON file is a DataError naming the path
        try:
            metrics[eval_name] = _summarise_results(results)
        except (KeyError, TypeError, AttributeError) as e:
            raise EarlError(f"{path}: not a readable results.json or final_metrics.json "
                           f"({type(e).__name__}: {e})") from None
    with atomic_directory(out_dir) as staging:
        entries = {}
        for src in files:
            rel = src.relative_to(model_dir)
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, staging / rel)
            entries[rel.as_posix()] = {"sha256": sha256_file(staging / rel), "bytes": src.stat().st_size}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": git_commit(repo or Path(__file__).resolve().parent.parent),
            "command": command,
            "recipe": recipe,
            "metrics": metrics,
            **({"teacher_labels": teacher_labels} if teacher_labels is not None else {}),
            "files": entries,
            "total_bytes": total,
        }
        atomic_write_json(staging / MANIFEST, manifest)
        write_model_card(staging, **{"repo_id": name, **(card or {})})  # from the manifest: not hashed
    return manifest


def verify_checkpoint(ckpt_dir: str | os.PathLike) -> dict:
    """Check every file of a packed checkpoint against its manifest; returns the manifest or raises EarlError."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / MANIFEST
    if not path.is_file():
        raise EarlError(f"{ckpt_dir}: no {MANIFEST}; expected a checkpoint written by `earl checkpoint pack`")
    manifest = read_json(path)  # non-JSON is a DataError naming the path
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise EarlError(f'{path}: not a checkpoint manifest (expected "format": "{FORMAT}" and a "files" table)')
    problems = []
    for rel, entry in sorted(manifest["files"].items()):
        f = ckpt_dir / rel
        if not f.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(f) != entry.get("sha256"):
            problems.append(f"{rel}: sha256 differs from the manifest")
    if problems:
        raise EarlError(f"{ckpt_dir}: checkpoint does not match its manifest: " + "; ".join(problems))
    return manifest


def push_to_hub(model_dir: str | os.PathLike, repo_id: str, token: str | None = None, private: bool | None = None,
                commit_message: str | None = None) -> str:
    """Upload a saved editor or packed checkpoint to the Hub (`earl checkpoint push`); returns the commit's URL.

    A packed checkpoint is verified against its manifest first, so what is uploaded is what was evaluated;
    a directory without a card gets one (`earl.cards`) naming `repo_id`."""
    model_dir = Path(model_dir)
    if (model_dir / MANIFEST).is_file():
        verify_checkpoint(model_dir)
    elif not (model_dir / "editor.json").is_file():
        raise EarlError(f"{model_dir}: not an editor directory (no editor.json) nor a checkpoint (no {MANIFEST})")
    if not (model_dir / CARD).is_file():
        write_model_card(model_dir, repo_id=repo_id)
    return upload(model_dir, repo_id, token=token, private=private, commit_message=commit_message)
