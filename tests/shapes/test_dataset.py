"""Writing and reading ShapesEdit datasets: deterministic, fixed test sets, clear errors."""

import io
import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from earl.errors import DataError
from earl.shapes import dataset as ds_mod
from earl.shapes.dataset import (
    REQUIRED_COLUMNS,
    TEST_KEY_COUNT,
    TEST_SEEDS,
    generate_samples,
    iter_samples,
    load_dataset,
    read_meta,
    reserved_keys,
    sample_key,
    write_dataset,
)
from earl.shapes.edits import SPLITS
from earl.shapes.render import render_array


def write(tmp_path_factory, name, **kwargs):
    return write_dataset(tmp_path_factory.mktemp(name), progress=False, **kwargs)


@pytest.fixture(scope="module")
def simple_dir(tmp_path_factory):
    return write(tmp_path_factory, "simple", split="simple", n=40, seed=1)


def test_same_arguments_give_identical_files(tmp_path_factory, simple_dir):
    again = write(tmp_path_factory, "again", split="simple", n=40, seed=1)
    assert (again / "data.parquet").read_bytes() == (simple_dir / "data.parquet").read_bytes()
    other = write(tmp_path_factory, "other", split="simple", n=40, seed=2)
    a = load_dataset(simple_dir)["instruction"]
    b = load_dataset(other)["instruction"]
    assert a != b


def test_test_part_ignores_the_seed(tmp_path_factory):
    a = write(tmp_path_factory, "t1", split="complex", n=20, seed=1, part="test")
    b = write(tmp_path_factory, "t2", split="complex", n=20, seed=999, part="test")
    assert (a / "data.parquet").read_bytes() == (b / "data.parquet").read_bytes()
    assert read_meta(a)["seed"] == TEST_SEEDS["complex"]
    # The content does not depend on n or image size either (prefix property, size-free keys).
    bigger = list(generate_samples("complex", 30, seed=5, part="test", image_size=128))
    assert [sample_key(s) for s in bigger[:20]] == [sample_key(s) for s in iter_samples(a)]


@pytest.mark.parametrize("split", list(SPLITS))
def test_train_never_contains_test_keys(split):
    keys = reserved_keys(split)
    assert len(keys) > 0.95 * TEST_KEY_COUNT  # a few test samples may coincide with each other
    train = list(generate_samples(split, 500, seed=0))
    assert not {sample_key(s) for s in train} & keys


def test_exclusion_really_skips_test_items(monkeypatch):
    """Make train draw exactly the test stream: the first TEST_KEY_COUNT items must all be skipped."""
    real = ds_mod._rng
    monkeypatch.setattr(ds_mod, "_rng", lambda split, part, seed, i: real(split, "test", seed, i))
    reserved_keys.cache_clear()
    try:
        (first,) = generate_samples("simple", 1, seed=TEST_SEEDS["simple"])
        test_stream = list(generate_samples("simple", TEST_KEY_COUNT + 50, seed=0, part="test"))
        later = {sample_key(s) for s in test_stream[TEST_KEY_COUNT:]}
        assert sample_key(first) not in reserved_keys("simple")
        assert sample_key(first) in later
    finally:
        reserved_keys.cache_clear()


def test_rows_images_and_meta(simple_dir):
    data = load_dataset(simple_dir)
    assert set(REQUIRED_COLUMNS) <= set(data.column_names) and len(data) == 40
    row = data[0]
    assert row["id"] == "simple-train-000000" and row["part"] == "train"
    assert isinstance(row["source_image"], Image.Image) and row["source_image"].size == (64, 64)
    samples = list(iter_samples(simple_dir))
    assert [s.id for s in samples] == data["id"]
    for s, r in zip(samples[:10], data.select(range(10))):
        assert np.array_equal(np.asarray(r["source_image"].convert("RGB")), render_array(s.source_scene))
        assert np.array_equal(np.asarray(r["target_image"].convert("RGB")), render_array(s.target_scene))
        assert s.program.apply(s.source_scene) == s.target_scene
    meta = read_meta(simple_dir)
    assert meta["format_version"] == 1 and meta["n"] == 40 and sum(meta["counts"].values()) == 40
    assert set(meta["counts"]) <= set(SPLITS["simple"]) and meta["created_by"]


def test_readable_by_plain_datasets(simple_dir):
    hf = datasets.load_dataset("parquet", data_files=str(simple_dir / "data.parquet"))["train"]
    assert isinstance(hf[0]["target_image"], Image.Image)
    assert json.loads(hf[0]["program"])["ops"]


def test_no_temporary_files_left(simple_dir):
    assert sorted(p.name for p in simple_dir.iterdir()) == ["README.md", "data.parquet", "meta.json"]


def test_bad_arguments():
    with pytest.raises(DataError, match="unknown split"):
        list(generate_samples("medium", 1, seed=0))
    with pytest.raises(DataError, match="unknown part"):
        list(generate_samples("simple", 1, seed=0, part="val"))
    with pytest.raises(DataError, match="positive integer"):
        write_dataset("/nonexistent", "simple", 0, seed=0)
    with pytest.raises(DataError, match="multiple of grid"):
        write_dataset("/nonexistent", "simple", 1, seed=0, image_size=30)


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(DataError, match="directory not found"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="data.parquet: file not found"):
        list(iter_samples(tmp_path))


def test_corrupt_parquet_names_the_file(tmp_path):
    (tmp_path / "data.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"data\.parquet: not a readable parquet file"):
        load_dataset(tmp_path)


def test_missing_columns_are_named(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "instruction": ["x"]}), tmp_path / "data.parquet")
    with pytest.raises(DataError, match="missing required column.*category"):
        load_dataset(tmp_path)


def _rewrite(src_dir, dst_dir, column, value):
    table = pq.read_table(src_dir / "data.parquet")
    values = table.column(column).to_pylist()
    values[3] = value
    table = table.set_column(table.column_names.index(column), column, pa.array(values))
    dst_dir.mkdir(exist_ok=True)
    pq.write_table(table, dst_dir / "data.parquet")
    return dst_dir


def test_corrupt_rows_name_file_row_and_field(simple_dir, tmp_path):
    scene = json.loads(load_dataset(simple_dir)[3]["source_scene"])
    scene["background"] = "mauve"
    bad = _rewrite(simple_dir, tmp_path / "a", "source_scene", json.dumps(scene))
    with pytest.raises(DataError, match=r"data\.parquet: row 3 .*field source_scene: unknown background colour 'mauve'"):
        list(iter_samples(bad))
    bad = _rewrite(simple_dir, tmp_path / "b", "program", "{not json")
    with pytest.raises(DataError, match=r"row 3 .*field program: not valid JSON"):
        list(iter_samples(bad))
    bad = _rewrite(simple_dir, tmp_path / "c", "target_scene", load_dataset(simple_dir)[3]["source_scene"])
    with pytest.raises(DataError, match=r"row 3 .*field target_scene: differs from program"):
        list(iter_samples(bad))


def test_images_without_feature_metadata_are_still_images(simple_dir, tmp_path):
    table = pq.read_table(simple_dir / "data.parquet").replace_schema_metadata(None)
    (tmp_path / "plain").mkdir()
    pq.write_table(table, tmp_path / "plain" / "data.parquet")
    row = load_dataset(tmp_path / "plain")[0]
    assert isinstance(row["source_image"], Image.Image)
    assert Image.open(io.BytesIO(table.column("source_image")[0].as_py()["bytes"])).size == (64, 64)
