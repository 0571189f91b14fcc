"""EditScore's EditReward-Bench, read from a local copy and scored as its own statistics script does.

`earl eval rewardbench --editreward-bench DIR --verifier ... --rrm ... --out OUT`. Nothing is
downloaded: DIR is a local copy of the Hugging Face dataset `EditScore/EditReward-Bench` (e.g.
`huggingface-cli download EditScore/EditReward-Bench --repo-type dataset --local-dir DIR`).

The layout (VectorSpaceLab/EditScore, `evaluation.py`, which loads it with
`datasets.load_dataset(DIR, split="train")`): Arrow files (the `datasets` writer's; Parquet is
read too), one row per human preference pair, with the fields
- `key`: two candidate ids [preferred, rejected]; a candidate sits in several rows (its tiered
  ranking was decomposed into pairs, and it is ranked on each dimension), and is scored once;
- `instruction`: the edit instruction; `input_image`: the source image;
- `output_images`: the two edited images, in the order of `key`: the first is the one the
  annotators preferred;
- `task_type`: one of 13 subtasks (`TASK_GROUPS`);
- `dimension`: `prompt_following`, `consistency` or `overall`, the criterion this pair was
  ranked on.
Images are `datasets.Image` values (a struct of `bytes` and `path`); a bare path or bytes is read
too. The edited image is resized to the source's size before scoring, as `evaluation.py` does.

The metrics (EditScore's `calculate_statistics.py`, restated): for each dimension and task type,
accuracy = the share of its rows where the preferred candidate's score is strictly higher
(`strict`: a tie is wrong); the later version of the script also reports `geq`, where a tie counts
as right. A dimension's average is the unweighted mean of its task types' accuracies (a macro
average, not the share of all pairs), and the four groups (object, appearance, scene, advanced)
are the unweighted means of their task types. The paper's "Overall" column is the `overall`
dimension's strict average.

Which score a verifier gives each dimension: its sub-score named like the dimension (`RewardResult
.scores["prompt_following"]`, ...) when it reports one, else its `reward`. A single-score reward
model (earl's `rrm`, `scalar`, `viescore`) is thus judged by that one score on every dimension, as
Edit-R1 ranks pairs with its single RRM score.

Deviations from the official script, all where it has no rule:
- a failed judgement (`RewardResult.failed`) makes every row with that candidate wrong, under both
  `strict` and `geq`, and is counted (`failed`); the official script has no failed state;
- a dimension's average is over the task types that have rows of that dimension (the official
  script expects all 13 for all three and stops otherwise); a group with none of its task types
  present is None.

OUT/editreward_bench.json and OUT/editreward_bench.md are rewritten after each scorer. A rerun
into the same OUT on the same benchmark (same rows, by a fingerprint of keys, task types and
dimensions) reuses a scorer's result when its source is known and unchanged (`--rrm` / `--scalar`
weights by sha256, as `earl.rrm.rewardbench` does); a `--verifier` is always judged again (a served model
can change behind its URL).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from earl.errors import DataError
from earl.io import atomic_write_json, atomic_write_text, load_dataset_image, read_json
from earl.rrm.rewardbench import weights_fingerprint
from earl.verify.base import EditRequest

DIMENSIONS = ("prompt_following", "consistency", "overall")
TASK_GROUPS = {
    "object": ("subject-add", "subject-remove", "subject-replace"),
    "appearance": ("color_alter", "material_alter", "style_change", "tone_transfer"),
    "scene": ("background_change", "extract"),
    "advanced": ("ps_human", "text_change", "motion_change", "compose"),
}
FIELDS = {
    "key": "a list of two distinct candidate ids (strings), the preferred one first",
    "instruction": "a non-empty string",
    "input_image": "an image (a {bytes, path} struct, a path or bytes)",
    "output_images": "a list of two images (preferred first)",
    "task_type": "a non-empty string",
    "dimension": f"one of {', '.join(DIMENSIONS)}",
}
RESULTS_JSON, RESULTS_MD = "editreward_bench.json", "editreward_bench.md"


@dataclass(frozen=True)
class BenchRow:
    """One preference pair: `keys` = (preferred, rejected) candidate ids; `where` names its file and row."""

    keys: tuple[str, str]
    task_type: str
    dimension: str
    where: str


def bench_files(bench_dir: str | Path) -> list[Path]:
    """The data files of a local copy: every .arrow (else every .parquet) under DIR, sorted, outside
    hidden folders (.cache, .git); both kinds at once would be the same rows twice."""
    root = Path(bench_dir)
    if not root.is_dir():
        raise DataError(f"{root}: EditReward-Bench directory not found (expected a local copy of the Hugging Face "
                        "dataset EditScore/EditReward-Bench)")

    def found(ext: str) -> list[Path]:
        return sorted(p for p in root.rglob(f"*.{ext}")
                      if not any(part.startswith(".") for part in p.relative_to(root).parts))

    files = found("arrow") or found("parquet")
    if not files:
        raise DataError(f"{root}: no .arrow or .parquet files (expected the dataset's data files, "
                        "with fields " + ", ".join(FIELDS) + ")")
    return files


def _record_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """A data file's record batches, one at a time (the images are large): `datasets` writes Arrow
    as an IPC stream; the IPC file form and Parquet are read too."""
    if path.suffix == ".parquet":
        try:
            yield from pq.ParquetFile(path).iter_batches(batch_size=64)
        except pa.ArrowInvalid as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        return
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            try:
                reader = pa.ipc.open_file(source)
            except pa.ArrowInvalid as e:
                raise DataError(f"{path}: not a readable Arrow file ({e})") from None
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
            return
        yield from reader


def _rows(files: list[Path]) -> Iterator[tuple[str, Path, dict]]:
    """(where, the file's folder, row) for every row of every file, in order."""
    for path in files:
        n = 0
        for batch in _record_batches(path):
            missing = [f for f in FIELDS if f not in batch.schema.names]
            if missing:
                raise DataError(f"{path}: no field {', '.join(repr(m) for m in missing)} (expected: "
                                + "; ".join(f"{f}: {FIELDS[f]}" for f in missing) + ")")
            for row in batch.select(list(FIELDS)).to_pylist():
                yield f"{path}: row {n}", path.parent, row
                n += 1


def _is_image(value) -> bool:
    if isinstance(value, dict):
        return bool(value.get("bytes")) or bool(value.get("path"))
    return isinstance(value, (bytes, str)) and bool(value)


def _check_row(where: str, row: dict) -> BenchRow:
    """The row's fields in the published form, or a DataError naming the row, field and expected form."""
    def bad(field: str) -> DataError:
        return DataError(f"{where}: field {field!r} is {_show(row.get(field))}; expected {FIELDS[field]}")

    keys = row["key"]
    if (not isinstance(keys, list) or len(keys) != 2 or not all(isinstance(k, str) and k for k in keys)
            or keys[0] == keys[1]):
        raise bad("key")
    for field in ("instruction", "task_type"):
        if not isinstance(row[field], str) or not row[field].strip():
            raise bad(field)
    if row["dimension"] not in DIMENSIONS:
        raise bad("dimension")
    if not _is_image(row["input_image"]):
        raise bad("input_image")
    outs = row["output_images"]
    if not isinstance(outs, list) or len(outs) != 2 or not all(_is_image(o) for o in outs):
        raise bad("output_images")
    return BenchRow((keys[0], keys[1]), row["task_type"], row["dimension"], where)


def _show(value) -> str:
    """A short description of a bad value for an error message (never a dump of image bytes)."""
    if value is None:
        return "missing"
    if isinstance(value, (bytes, dict)) or (isinstance(value, list) and value and isinstance(value[0], dict)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def load_rows(bench_dir: str | Path) -> list[BenchRow]:
    """Every preference pair of the benchmark, checked (images are checked for form, not decoded)."""
    rows = [_check_row(where, row) for where, _, row in _rows(bench_files(bench_dir))]
    if not rows:
        raise DataError(f"{bench_dir}: the data files hold no rows")
    return rows


def _open_image(value, folder: Path, where: str, field: str) -> Image.Image:
    """A `datasets.Image` value (bytes, else a path relative to the data file's folder) as RGB."""
    return load_dataset_image(value, folder, what=f"{where}: field {field!r}")


def candidate_requests(bench_dir: str | Path, wanted: set[str]) -> Iterator[tuple[str, EditRequest]]:
    """(candidate id, request) for each wanted candidate, at its first row; the edited image resized
    to the source's size, as EditScore's evaluation.py does before scoring."""
    todo = set(wanted)
    for where, folder, row in _rows(bench_files(bench_dir)):
        if not todo:
            return
        new = [(i, k) for i, k in enumerate(row["key"]) if k in todo]
        if not new:
            continue
        source = _open_image(row["input_image"], folder, where, "input_image")
        for i, k in new:
            edited = _open_image(row["output_images"][i], folder, where, "output_images")
            if edited.size != source.size:
                edited = edited.resize(source.size)
            todo.discard(k)
            yield k, EditRequest(source, row["instruction"], edited, meta={"id": k})


def dimension_score(result: dict | None, dimension: str) -> float | None:
    """The score a candidate gets on a dimension: the verifier's sub-score of that name when it has
    one, else its reward; None when the judgement failed."""
    if result is None or result.get("reward") is None:
        return None
    return result["scores"].get(dimension, result["reward"])


def score_candidates(verifier, bench_dir: str | Path, rows: list[BenchRow], batch_size: int = 32) -> dict[str, dict]:
    """{candidate id: {"reward", "scores"} or None if failed}, each candidate judged once, in batches."""
    wanted = {k for r in rows for k in r.keys}
    out: dict[str, dict | None] = {}
    batch: list[tuple[str, EditRequest]] = []

    def flush() -> None:
        results = verifier.score([req for _, req in batch])
        for (k, _), res in zip(batch, results):
            out[k] = None if res.failed else {"reward": res.reward, "scores": dict(res.scores)}
        batch.clear()

    for item in candidate_requests(bench_dir, wanted):
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def row_scores(rows: list[BenchRow], candidates: dict[str, dict | None]) -> list[list[float | None]]:
    """[preferred score, rejected score] of each row on its own dimension (the official output's `score`)."""
    return [[dimension_score(candidates.get(k), r.dimension) for k in r.keys] for r in rows]


def editreward_metrics(rows: list[BenchRow], scores: list[list[float | None]]) -> dict:
    """Per dimension: per task type `strict` / `geq` accuracy (and counts), their unweighted means
    (`strict_average`, `geq_average`) and the groups' means, as calculate_statistics.py computes them."""
    out = {}
    for dim in DIMENSIONS:
        tasks: dict[str, dict] = {}
        for r, (s_w, s_l) in zip(rows, scores):
            if r.dimension != dim:
                continue
            t = tasks.setdefault(r.task_type, {"n": 0, "strict_right": 0, "geq_right": 0, "ties": 0, "failed": 0})
            t["n"] += 1
            if s_w is None or s_l is None:
                t["failed"] += 1
                continue
            t["strict_right"] += s_w > s_l
            t["geq_right"] += s_w >= s_l
            t["ties"] += s_w == s_l
        per_task = {name: {"n": t["n"], "strict": t["strict_right"] / t["n"], "geq": t["geq_right"] / t["n"],
                           "ties": t["ties"], "failed": t["failed"]} for name, t in sorted(tasks.items())}
        groups = {g: {m: _mean([per_task[t][m] for t in members if t in per_task]) for m in ("strict", "geq")}
                  for g, members in TASK_GROUPS.items()}
        out[dim] = {"pairs": sum(t["n"] for t in per_task.values()),
                    "ties": sum(t["ties"] for t in per_task.values()),
                    "failed": sum(t["failed"] for t in per_task.values()),
                    "strict_average": _mean([t["strict"] for t in per_task.values()]),
                    "geq_average": _mean([t["geq"] for t in per_task.values()]),
                    "groups": groups, "per_task": per_task}
    return out


def rows_fingerprint(rows: list[BenchRow]) -> str:
    """sha256 over the rows' keys, task types and dimensions: an earlier result is reused only on these rows."""
    h = hashlib.sha256()
    for r in rows:
        h.update("\0".join((*r.keys, r.task_type, r.dimension)).encode() + b"\n")
    return h.hexdigest()


def model_source(kind: str, model_dir: str | Path, **settings) -> dict:
    """What a local model's result depends on (its weights' sha256 and settings), for reuse on a rerun."""
    return {"verifier": kind, "weights": weights_fingerprint(model_dir), **settings}


def _earlier(path: Path, fingerprint: str) -> dict:
    """Scorer results of an earlier run on the same rows, by name ({} if none, unreadable or other rows)."""
    try:
        old = read_json(path)
    except (DataError, OSError):
        return {}
    if not isinstance(old, dict) or old.get("fingerprint") != fingerprint:
        return {}
    return {k: v for k, v in (old.get("scorers") or {}).items() if isinstance(v, dict)}


def run_editreward_bench(bench_dir: str | Path, verifiers: dict, out_dir: str | Path, batch_size: int = 32,
                         sources: dict[str, dict] | None = None) -> dict:
    """EditReward-Bench metrics of each verifier (by label); `sources[label]` (when known) lets a rerun
    into the same OUT reuse that scorer's earlier result. Files are rewritten after each scorer."""
    rows = load_rows(bench_dir)
    fingerprint = rows_fingerprint(rows)
    out_dir = Path(out_dir)
    earlier = _earlier(out_dir / RESULTS_JSON, fingerprint)
    results = {"benchmark": "EditReward-Bench", "bench_dir": str(bench_dir), "pairs": len(rows),
               "candidates": len({k for r in rows for k in r.keys}), "fingerprint": fingerprint, "scorers": {}}
    for name, v in verifiers.items():
        source = (sources or {}).get(name)
        old = earlier.get(name)
        if source is not None and old is not None and old.get("source") == source:
            results["scorers"][name] = old
        else:
            scores = row_scores(rows, score_candidates(v, bench_dir, rows, batch_size))
            results["scorers"][name] = {**editreward_metrics(rows, scores), "row_scores": scores, "source": source}
        _write(out_dir, results)
    _write(out_dir, results)
    return results


def _write(out_dir: Path, results: dict) -> None:
    atomic_write_json(out_dir / RESULTS_JSON, results)
    atomic_write_text(out_dir / RESULTS_MD, format_editreward_table(results) + "\n")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def format_editreward_table(results: dict) -> str:
    """Markdown: each scorer's averages per dimension (strict, and geq), the groups, and the task types."""
    scorers = results["scorers"]
    lines = [f"EditReward-Bench ({results['bench_dir']}: {results['pairs']} preference pairs, "
             f"{results['candidates']} candidates). Accuracy (%) as EditScore's calculate_statistics.py computes it: "
             "per dimension and task type, the share of pairs whose preferred edit scores strictly higher (a tie "
             "is wrong; geq: a tie is right), averaged over task types unweighted; a failed judgement is wrong.", "",
             "| scorer | prompt following | consistency | overall | overall (geq) | ties | failed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in scorers.items():
        lines.append(f"| {name} | " + " | ".join(_pct(r[d]["strict_average"]) for d in DIMENSIONS)
                     + f" | {_pct(r['overall']['geq_average'])} | {sum(r[d]['ties'] for d in DIMENSIONS)} | "
                     f"{sum(r[d]['failed'] for d in DIMENSIONS)} |")
    lines += ["", "| scorer | dimension | " + " | ".join(TASK_GROUPS) + " |", "|---|---|" + "---:|" * len(TASK_GROUPS)]
    for name, r in scorers.items():
        for d in DIMENSIONS:
            lines.append(f"| {name} | {d} | " + " | ".join(_pct(r[d]["groups"][g]["strict"]) for g in TASK_GROUPS)
                         + " |")
    tasks = sorted({t for r in scorers.values() for d in DIMENSIONS for t in r[d]["per_task"]})
    cols = [(name, d) for name in scorers for d in DIMENSIONS]
    lines += ["", "| task type | " + " | ".join(f"{n} {d}" for n, d in cols) + " |", "|---|" + "---:|" * len(cols)]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(_pct(scorers[n][d]["per_task"][t]["strict"])
                                            if t in scorers[n][d]["per_task"] else "n/a" for n, d in cols) + " |")
    return "\n".join(lines)
