"""EditScore's EditReward-Bench read in its published layout and scored as its statistics script does."""

import io
import json

import pyarrow as pa
import pytest
from PIL import Image

from earl.errors import DataError
from earl.rrm.editreward_bench import load_rows, run_editreward_bench
from earl.verify.base import VERIFIERS, RewardResult

# candidate id -> grey level of its image; FAIL's level makes the scripted verifier fail
LEVELS = {"A": 200, "B": 100, "C": 100, "D": 50, "FAIL": 7}
SOURCE_SIZE = (24, 16)

# (task_type, dimension, preferred, rejected); the scripted verifier scores brightness, and on
# `consistency` reports its own sub-score, 255 - level (the darker edit preserved more)
ROWS = [
    ("color_alter", "overall", "A", "B"),  # 200 > 100: right
    ("color_alter", "overall", "B", "C"),  # 100 = 100: a tie, wrong (strict), right (geq)
    ("color_alter", "overall", "D", "A"),  # 50 < 200: wrong
    ("subject-add", "overall", "A", "D"),  # right
    ("subject-add", "overall", "FAIL", "A"),  # failed judgement: wrong under both
    ("color_alter", "consistency", "D", "A"),  # sub-score 205 > 55: right
    ("color_alter", "prompt_following", "D", "A"),  # no such sub-score: reward 50 < 200, wrong
]


def _png(level: int, size=SOURCE_SIZE) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (level, level, level)).save(buf, format="PNG")
    return buf.getvalue()


IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # how `datasets.Image()` is stored
SCHEMA = pa.schema([("key", pa.list_(pa.string())), ("instruction", pa.string()), ("input_image", IMAGE),
                    ("output_images", pa.list_(IMAGE)), ("task_type", pa.string()), ("dimension", pa.string())])


def _record(task, dim, w, lo):
    # D's image is larger than the source: the benchmark's script resizes it to the source's size
    def image(k):
        return {"bytes": _png(LEVELS[k], (48, 32) if k == "D" else SOURCE_SIZE), "path": None}

    return {"key": [w, lo], "instruction": f"edit for {task}", "input_image": {"bytes": _png(10), "path": None},
            "output_images": [image(w), image(lo)], "task_type": task, "dimension": dim}


def write_bench(root, records, schema=SCHEMA, name="data-00000-of-00001.arrow"):
    """A local copy in the published layout: the `datasets` Arrow writer's IPC stream, Image structs."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(root / "data" / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(pa.Table.from_pylist(records, schema=schema))
    return root


class Brightness:
    """A scripted verifier: reward = grey level of the edited image, a `consistency` sub-score of
    255 - level, a failure on level 7; it records every image it saw (and its size)."""

    name = "brightness"

    def __init__(self):
        self.seen = []

    def score(self, requests):
        out = []
        for r in requests:
            level = r.edited.getpixel((0, 0))[0]
            self.seen.append((r.meta["id"], level, r.edited.size))
            out.append(RewardResult.failure("scripted failure") if level == 7
                       else RewardResult(reward=float(level), scores={"consistency": 255.0 - level}))
        return out


def test_metrics_by_hand_macro_average_ties_failures_and_dimensions(tmp_path):
    root = write_bench(tmp_path / "bench", [_record(*r) for r in ROWS])
    v = Brightness()
    res = run_editreward_bench(root, {"bright": v}, tmp_path / "out", batch_size=2)
    r = res["scorers"]["bright"]
    assert res["pairs"] == 7 and res["candidates"] == 5
    assert sorted(k for k, _, _ in v.seen) == ["A", "B", "C", "D", "FAIL"]  # each candidate judged once
    assert all(size == SOURCE_SIZE for _, _, size in v.seen)  # D resized to the source's size

    o = r["overall"]
    assert o["per_task"]["color_alter"] == {"n": 3, "strict": pytest.approx(1 / 3), "geq": pytest.approx(2 / 3),
                                            "ties": 1, "failed": 0}
    assert o["per_task"]["subject-add"] == {"n": 2, "strict": 0.5, "geq": 0.5, "ties": 0, "failed": 1}
    # the unweighted mean over task types (1/3 + 1/2) / 2, not the share of all pairs (2/5)
    assert o["strict_average"] == pytest.approx(5 / 12) and o["geq_average"] == pytest.approx(7 / 12)
    assert o["groups"]["appearance"]["strict"] == pytest.approx(1 / 3) and o["groups"]["object"]["strict"] == 0.5
    assert o["groups"]["scene"] == {"strict": None, "geq": None}
    assert (o["pairs"], o["ties"], o["failed"]) == (5, 1, 1)
    # the verifier's own `consistency` sub-score ranks that dimension; prompt following falls back to the reward
    assert r["consistency"]["strict_average"] == 1.0 and r["prompt_following"]["strict_average"] == 0.0
    assert r["row_scores"][5] == [205.0, 55.0] and r["row_scores"][4] == [None, 200.0]

    saved = json.loads((tmp_path / "out/editreward_bench.json").read_text())
    assert saved["scorers"]["bright"]["overall"]["strict_average"] == pytest.approx(5 / 12)
    md = (tmp_path / "out/editreward_bench.md").read_text()
    assert "| bright | 0.0 | 100.0 | 41.7 | 58.3 | 1 | 1 |" in md


def test_a_rerun_reuses_a_scorer_only_when_its_source_is_known_and_unchanged(tmp_path):
    root = write_bench(tmp_path / "bench", [_record(*r) for r in ROWS])
    first = Brightness()
    run_editreward_bench(root, {"m": first, "judge": Brightness()}, tmp_path / "out", sources={"m": {"weights": "1"}})
    again, judge = Brightness(), Brightness()
    res = run_editreward_bench(root, {"m": again, "judge": judge}, tmp_path / "out", sources={"m": {"weights": "1"}})
    assert again.seen == [] and len(judge.seen) == 5  # the model reused; the served judge (no source) judged again
    assert res["scorers"]["m"]["overall"]["strict_average"] == pytest.approx(5 / 12)
    retrained = Brightness()
    run_editreward_bench(root, {"m": retrained}, tmp_path / "out", sources={"m": {"weights": "2"}})
    assert len(retrained.seen) == 5
    other_rows = write_bench(tmp_path / "other", [_record(*r) for r in ROWS[:3]])
    moved = Brightness()
    run_editreward_bench(other_rows, {"m": moved}, tmp_path / "out", sources={"m": {"weights": "2"}})
    assert len(moved.seen) == 4  # other rows (candidates A-D): nothing reused


@pytest.mark.parametrize("drop,needle", [("dimension", "no field 'dimension'"),
                                         ("output_images", "no field 'output_images'")])
def test_a_missing_field_is_named(tmp_path, drop, needle):
    schema = pa.schema([f for f in SCHEMA if f.name != drop])
    records = [{k: v for k, v in _record(*r).items() if k != drop} for r in ROWS[:2]]
    root = write_bench(tmp_path / "bench", records, schema=schema)
    with pytest.raises(DataError, match=needle) as e:
        load_rows(root)
    assert "data-00000-of-00001.arrow" in str(e.value) and "expected" in str(e.value)


@pytest.mark.parametrize("field,value,needle", [
    ("dimension", "aesthetics", "row 1: field 'dimension' is 'aesthetics'; expected one of prompt_following"),
    ("key", ["A"], "row 1: field 'key' is \\['A'\\]; expected a list of two distinct candidate ids"),
    ("instruction", None, "row 1: field 'instruction' is missing"),
])
def test_a_bad_value_names_the_row_and_field(tmp_path, field, value, needle):
    records = [_record(*r) for r in ROWS[:2]]
    records[1][field] = value
    with pytest.raises(DataError, match=needle):
        load_rows(write_bench(tmp_path / "bench", records))


def test_a_missing_image_and_an_empty_copy_are_errors(tmp_path):
    records = [_record(*r) for r in ROWS[:2]]
    records[0]["output_images"] = records[0]["output_images"][:1]
    with pytest.raises(DataError, match="row 0: field 'output_images' is a list; expected a list of two images"):
        load_rows(write_bench(tmp_path / "bench", records))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .arrow or .parquet files"):
        load_rows(tmp_path / "empty")
    with pytest.raises(DataError, match="directory not found"):
        load_rows(tmp_path / "nowhere")


def test_parquet_copies_and_image_paths_are_read(tmp_path):
    import pyarrow.parquet as pq

    root = tmp_path / "bench"
    root.mkdir()
    for k, level in LEVELS.items():
        Image.new("RGB", SOURCE_SIZE, (level,) * 3).save(root / f"{k}.png")
    Image.new("RGB", SOURCE_SIZE, (10,) * 3).save(root / "src.png")
    records = [{**_record(*r), "input_image": {"bytes": None, "path": "src.png"},
                "output_images": [{"bytes": None, "path": f"{r[2]}.png"}, {"bytes": None, "path": f"{r[3]}.png"}]}
               for r in ROWS]
    pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), root / "train.parquet")
    res = run_editreward_bench(root, {"b": Brightness()}, tmp_path / "out")
    assert res["scorers"]["b"]["overall"]["strict_average"] == pytest.approx(5 / 12)


def test_the_datasets_writer_output_is_read(tmp_path):
    """The dataset as `datasets` itself saves it (Image features), e.g. a `save_to_disk` copy."""
    datasets = pytest.importorskip("datasets")
    seq = getattr(datasets, "List", datasets.Sequence)
    features = datasets.Features({"key": seq(datasets.Value("string")), "instruction": datasets.Value("string"),
                                  "input_image": datasets.Image(), "output_images": seq(datasets.Image()),
                                  "task_type": datasets.Value("string"), "dimension": datasets.Value("string")})

    def pil(k):
        return Image.new("RGB", SOURCE_SIZE, (LEVELS[k],) * 3)

    rows = {"key": [[w, lo] for _, _, w, lo in ROWS], "instruction": ["edit"] * len(ROWS),
            "input_image": [Image.new("RGB", SOURCE_SIZE, (10,) * 3) for _ in ROWS],
            "output_images": [[pil(w), pil(lo)] for _, _, w, lo in ROWS],
            "task_type": [t for t, _, _, _ in ROWS], "dimension": [d for _, d, _, _ in ROWS]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "bench"))
    res = run_editreward_bench(tmp_path / "bench", {"b": Brightness()}, tmp_path / "out")
    assert res["scorers"]["b"]["overall"]["strict_average"] == pytest.approx(5 / 12)


def test_cli_editreward_bench_with_a_verifier(tmp_path, capsys, monkeypatch):
    from earl.cli import main

    monkeypatch.setitem(VERIFIERS, "scripted-brightness", "tests.rrm.test_editreward_bench:Brightness")
    root = write_bench(tmp_path / "bench", [_record(*r) for r in ROWS])
    assert main(["eval", "rewardbench", "--editreward-bench", str(root), "--out", str(tmp_path / "rb"),
                 "--verifier", "bright=scripted-brightness"]) == 0
    assert "| bright | 0.0 | 100.0 | 41.7 | 58.3 | 1 | 1 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "rb/editreward_bench.json").read_text())["pairs"] == 7
    assert main(["eval", "rewardbench", "--editreward-bench", str(root), "--out", str(tmp_path / "rb")]) != 0
    assert "--editreward-bench needs at least one scorer" in capsys.readouterr().err
