"""On-policy data for the reasoning reward model: traces on the policy's own images, labelled by a teacher.

The cold start (`earl.rrm.coldstart`) judges synthetic candidates (the target, the source, half-done
edits, a wrong colour, stray blobs). A reward model that never saw the editor's own mistakes orders
the editor's rollouts poorly; RLHF practice refreshes reward models on the current policy's samples,
with the labelling budget reported. This module builds that data from images the policy wrote:

    images an editor or agent wrote for a ShapesEdit set      (`earl eval shapes --out O`: O/images/{id}.png;
                                                                 several folders, each an `origin`)
      + the principles of each (source, instruction)          (a principle writer reading only those two,
                                                                 as at test time, or the exact points)
      -> a teacher's verdict on each point of each image       (ShapesEdit: the oracle standing in for
                                                                 annotators; `noise` flips verdicts as a
                                                                 fallible annotator or VLM would)
      -> one judge example per image, in the reward model's own trace format (its recipe's flags)

The oracle's scene graphs are read here because this builds training labels (and test-set labels
for measuring a verifier); nothing that runs at test time reads this data.

Bookkeeping a researcher needs: every teacher call is counted (`labels`: images judged, each
covering all its points), the budget stops labelling at a fixed count, and failures are named and
counted, never guessed (`principles:<kind>` when the writer fails, `teacher_error` /
`teacher_timeout` when the teacher does). Work is written in chunks, one JSONL shard each, atomically;
a rerun skips the chunks already written, and each item's randomness comes from its key, so an
interrupted build resumed equals an uninterrupted one.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from earl.errors import ConfigError, DataError
from earl.io import atomic_write_json, atomic_write_text, load_image, read_jsonl
from earl.rrm.coldstart import judge_parsed, score_rule, write_trace
from earl.rrm.principles import EvalPoint, shapes_points
from earl.seeds import derive_seed, sample_seed
from earl.shapes.dataset import iter_samples, load_dataset
from earl.shapes.oracle import parse_scene

TEACHER_FAILURES = ("teacher_error", "teacher_timeout")
FORMAT_FLAGS = ("reason_first", "scan", "quote_scan", "expect")


class TeacherError(Exception):
    """A teacher that could not label an item; `kind` is one of `TEACHER_FAILURES`."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


@dataclass
class OracleTeacher:
    """The ShapesEdit oracle as the labeller: the true verdict of each point, each flipped with
    probability `noise` (a fallible annotator), and a call that fails with probability `fail_rate`
    (an annotator or a VLM server that errs; for measuring how failures are handled). Draws come from
    (seed, item key), so a label does not depend on which other items were labelled first."""

    noise: float = 0.0
    fail_rate: float = 0.0
    seed: int = 0
    name: str = "oracle"

    def __post_init__(self):
        for field_name in ("noise", "fail_rate"):
            if not 0.0 <= getattr(self, field_name) < 1.0:
                raise ConfigError(f"teacher.{field_name} must be in [0, 1), got {getattr(self, field_name)}")

    def label(self, key: str, truth: list[bool]) -> list[bool]:
        rng = random.Random(derive_seed(self.seed, key, sep="|", bits=63))
        if rng.random() < self.fail_rate:
            raise TeacherError("teacher_error", f"simulated teacher failure on {key}")
        return [(not ok) if rng.random() < self.noise else ok for ok in truth]


def trace_format(rrm_dir: str | Path) -> dict:
    """The trace flags (`FORMAT_FLAGS`) a reward model was trained with, from its manifest's recipe,
    so that on-policy traces read as the ones it learned from."""
    manifest = Path(rrm_dir) / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(f"{rrm_dir}: no manifest.json (expected a reward model saved by `earl train rrm-sft`)")
    data = json.loads(manifest.read_text()).get("recipe", {}).get("data", {})
    return {k: bool(data.get(k, k == "reason_first")) for k in FORMAT_FLAGS}


def _points_to_json(points: list[EvalPoint]) -> list[dict]:
    return [asdict(p) for p in points]


def points_from_json(rows: list[dict]) -> list[EvalPoint]:
    return [EvalPoint(**r) for r in rows]


def collect_items(data_dir: str | Path, ids: list[str], image_dirs: dict[str, str | Path]) -> list[tuple[str, int, Path]]:
    """(key, dataset row, image path) for every image in each origin's folder that belongs to a sample
    (`ids`: the dataset's, in order) of `data_dir`; the key is `origin/id`. Origins are taken in the
    order given, ids in dataset order."""
    items = []
    for origin, folder in image_dirs.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"images {origin}={folder}: not a directory (expected an `earl eval shapes` OUT/images)")
        if "/" in origin:
            raise ConfigError(f"images {origin}={folder}: an origin name may not contain '/'")
        items += [(f"{origin}/{sid}", i, folder / f"{sid}.png") for i, sid in enumerate(ids)
                  if (folder / f"{sid}.png").is_file()]
    if not items:
        raise DataError(f"no image in {', '.join(map(str, image_dirs.values()))} belongs to a sample of {data_dir}")
    return items


class VerifierDataBuilder:
    """Builds on-policy judge examples (see the module docstring) into `out_dir/shards/*.jsonl`.

    `writer`: a principle writer (`earl.rrm.writer`'s interface) or the string "exact" for the exact
    scene-graph points; `image_tokenizer`: the reward model's; `fmt`: its trace flags (`trace_format`);
    `budget`: the most teacher labels (images judged) to spend, 0 for no limit."""

    def __init__(self, writer, image_tokenizer, teacher, fmt: dict, budget: int = 0, chunk: int = 32,
                 point_seed: int = 0):
        if budget < 0:
            raise ConfigError(f"budget must be >= 0 (0: no limit), got {budget}")
        if chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {chunk}")
        self.writer, self.image_tokenizer, self.teacher = writer, image_tokenizer, teacher
        self.fmt, self.budget, self.chunk, self.point_seed = fmt, budget, chunk, point_seed

    def build(self, data_dir: str | Path, image_dirs: dict[str, str | Path], out_dir: str | Path,
              progress: bool = True) -> dict:
        out = Path(out_dir)
        shards = out / "shards"
        shards.mkdir(parents=True, exist_ok=True)
        samples = list(iter_samples(data_dir))
        ds = load_dataset(data_dir)
        items = collect_items(data_dir, [s.id for s in samples], image_dirs)
        chunks = [items[i:i + self.chunk] for i in range(0, len(items), self.chunk)]
        labels = 0
        bar = tqdm(total=len(items), desc="verifier data", disable=not progress)
        points_cache: dict[int, list[EvalPoint] | str] = {}
        for c, chunk in enumerate(chunks):
            path = shards / f"{c:05d}.jsonl"
            if path.is_file():  # written by an earlier run: count its labels, do not redo it
                labels += sum(1 for r in read_jsonl(path) if r.get("failure") is None)
                bar.update(len(chunk))
                continue
            if self.budget and labels >= self.budget:
                break
            rows = self._chunk(chunk, samples, ds, points_cache, self.budget - labels if self.budget else None)
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
            labels += sum(1 for r in rows if r.get("failure") is None)
            bar.update(len(chunk))
        bar.close()
        manifest = summarise(out, items=len(items), teacher=self.teacher, budget=self.budget,
                             writer=getattr(self.writer, "name", str(self.writer)), fmt=self.fmt)
        atomic_write_json(out / "manifest.json", manifest)
        return manifest

    def _points(self, i: int, samples, ds, cache) -> list[EvalPoint] | str:
        """The points of sample `i` (written once per sample, shared by every origin), or a failure kind."""
        if i not in cache:
            s = samples[i]
            if self.writer == "exact":
                cache[i] = shapes_points(s.source_scene, s.target_scene, seed=sample_seed(self.point_seed, s.id))
            else:
                got = self.writer.write([ds[i]["source_image"]], [s.instruction])[0]
                cache[i] = got if isinstance(got, list) else f"principles:{got.kind}"
        return cache[i]

    def _chunk(self, chunk, samples, ds, points_cache, room: int | None) -> list[dict]:
        import torch

        from tokenizer import pil_to_tensor, tensor_to_pil  # here: it loads torch

        rows = []
        for key, i, image_path in chunk:
            s = samples[i]
            row = {"key": key, "id": s.id, "origin": key.split("/", 1)[0], "instruction": s.instruction}
            points = self._points(i, samples, ds, points_cache)
            if isinstance(points, str):
                rows.append({**row, "failure": points})
                continue
            if room is not None and room <= 0:
                break  # the budget is spent: the rest of this chunk stays unlabelled, for good
            try:
                candidate = load_image(image_path, what=f"image of {key}")
            except DataError as e:
                rows.append({**row, "failure": "unreadable_image", "detail": str(e)})
                continue
            with torch.no_grad():
                codes = self.image_tokenizer.encode(pil_to_tensor([ds[i]["source_image"].convert("RGB"), candidate]))
                seen = tensor_to_pil(self.image_tokenizer.decode(codes[1:]))[0]
            parsed = parse_scene(seen, image_size=s.target_scene.image_size, grid=s.target_scene.grid)
            truth, reasons, _ = judge_parsed(points, s.source_scene, s.target_scene, parsed)
            try:
                passed = self.teacher.label(key, truth)
            except TeacherError as e:
                rows.append({**row, "failure": e.kind, "detail": str(e)})
                continue
            except TimeoutError as e:
                rows.append({**row, "failure": "teacher_timeout", "detail": str(e)})
                continue
            score = score_rule(passed, points, s.source_scene, s.target_scene, parsed.scene)
            trace = write_trace(points, parsed.scene, passed, reasons, score, **self.fmt)
            rows.append({**row, "failure": None, "points": _points_to_json(points),
                         "source_codes": codes[0].tolist(), "codes": codes[1].tolist(), "trace": trace,
                         "passed": passed, "true_passed": truth, "score": score})
            if room is not None:
                room -= 1
        return rows


def summarise(out_dir: str | Path, **info) -> dict:
    """Counts over every shard written so far: items labelled (teacher labels), point labels, labels
    the teacher got wrong, failures by kind, per origin."""
    rows = [r for p in sorted((Path(out_dir) / "shards").glob("*.jsonl")) for r in read_jsonl(p)]
    done = [r for r in rows if r.get("failure") is None]
    failures: dict[str, int] = {}
    for r in rows:
        if r.get("failure") is not None:
            failures[r["failure"]] = failures.get(r["failure"], 0) + 1
    origins: dict[str, int] = {}
    for r in done:
        origins[r["origin"]] = origins.get(r["origin"], 0) + 1
    flipped = sum(a != b for r in done for a, b in zip(r["passed"], r["true_passed"]))
    points = sum(len(r["passed"]) for r in done)
    failing = sum(not b for r in done for b in r["true_passed"])
    teacher = info.pop("teacher", None)
    return {"format": "earl-verifier-data", "labels": len(done), "point_labels": points,
            "point_labels_wrong": flipped, "failing_points": failing, "failures": dict(sorted(failures.items())),
            "per_origin": origins,
            "teacher": None if teacher is None else {"name": teacher.name, "noise": teacher.noise,
                                                      "fail_rate": teacher.fail_rate, "seed": teacher.seed},
            **info}


def load_examples(data_dirs: list[str | Path], truth: bool = False) -> tuple[list[dict], int]:
    """The judge examples of built verifier-data folders (failures left out) in the form the reward
    model's SFT and evaluation read (`earl.train.rrm`), and the teacher labels they cost. `truth`
    swaps the teacher's verdicts for the oracle's (to measure a verifier, not to train one)."""
    import torch

    out, labels = [], 0
    for d in data_dirs:
        shards = sorted((Path(d) / "shards").glob("*.jsonl"))
        if not shards:
            raise ConfigError(f"{d}: no shards/*.jsonl (expected a folder written by `earl data verifier`)")
        for p in shards:
            for r in read_jsonl(p):
                if r.get("failure") is not None:
                    continue
                labels += 1
                passed = r["true_passed"] if truth else r["passed"]
                out.append({"sample": r["key"], "kind": r["origin"], "instruction": r["instruction"],
                            "points": points_from_json(r["points"]), "source_codes": torch.tensor(r["source_codes"]),
                            "codes": torch.tensor(r["codes"]), "trace": r["trace"], "passed": passed,
                            "score": r["score"], "true_passed": r["true_passed"]})
    return out, labels


def measure_verifier(editor, examples: list[dict], max_new_tokens: int = 320, batch_size: int = 16,
                     progress: bool = True) -> dict:
    """A reward model's greedy verdicts on judge examples against their labels (load them with
    `truth=True` to measure against the oracle): point accuracy and the share of failing points it
    catches, with Wilson 95% intervals, overall and per origin; unparsable replies counted apart
    (their points are not counted as right or wrong)."""
    from earl.rrm.scoring import generate_verdicts
    from earl.rrm.trace import parse_trace
    from earl.stats import wilson_ci

    editor.backbone.eval()
    texts = []
    for i in tqdm(range(0, len(examples), batch_size), desc="verdicts", disable=not progress):
        part = examples[i:i + batch_size]
        texts += generate_verdicts(editor, [e["instruction"] for e in part], [e["points"] for e in part],
                                   [e["source_codes"] for e in part], [e["codes"] for e in part],
                                   max_new_tokens=max_new_tokens)
    counts: dict[str, dict[str, int]] = {}
    for text, e in zip(texts, examples):
        for group in ("all", e["kind"]):
            c = counts.setdefault(group, {"images": 0, "unparsed": 0, "right": 0, "points": 0, "caught": 0,
                                          "failing": 0, "image_right": 0})
            c["images"] += 1
            v = parse_trace(text, len(e["points"]))
            if v is None:
                c["unparsed"] += 1
                continue
            pairs = list(zip(v.passed, e["passed"]))
            c["right"] += sum(a == b for a, b in pairs)
            c["points"] += len(pairs)
            c["failing"] += sum(not b for _, b in pairs)
            c["caught"] += sum(not a for a, b in pairs if not b)
            c["image_right"] += all(a == b for a, b in pairs)

    def share(k, n):
        return {"k": k, "n": n, "share": k / n if n else None, "ci95": list(wilson_ci(k, n)) if n else None}

    return {g: {"images": c["images"], "unparsed": c["unparsed"], "point_accuracy": share(c["right"], c["points"]),
                "failing_points_caught": share(c["caught"], c["failing"]),
                "images_all_points_right": share(c["image_right"], c["images"] - c["unparsed"])}
            for g, c in counts.items()}
