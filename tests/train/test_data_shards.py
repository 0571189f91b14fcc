"""Real edit datasets: field specs over jsonl/parquet, offline tokenisation into shards (resumable),
lazy shard reading, and SFT on shards mixed with other sources by weight."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from earl.config import load_config
from earl.errors import ConfigError, DataError
from earl.records import ReadReport, RecordSpec, iter_records
from earl.shards import ShardedEdits, tokenize_dataset

ROOT = Path(__file__).resolve().parents[2]


def photo(i: int, size=(48, 40)) -> Image.Image:
    from skimage import data

    crop = data.astronaut()[40 * i : 40 * i + 200, 60 * i : 60 * i + 240]
    return Image.fromarray(crop).resize(size)


def jsonl_dataset(root: Path, n: int = 5, broken: int | None = 2) -> RecordSpec:
    (root / "imgs").mkdir(parents=True)
    lines = []
    for i in range(n):
        photo(i).save(root / "imgs" / f"in{i}.png")
        photo(i + 1).save(root / "imgs" / f"out{i}.png")
        src = f"imgs/in{i}.png" if i != broken else "imgs/missing.png"
        lines.append(json.dumps({"uid": f"r{i}", "prompt": f"make the sky red {i}", "input": src,
                                 "output": f"imgs/out{i}.png"}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return RecordSpec(name="toy", format="jsonl", path=str(root / "train.jsonl"),
                      fields={"id": "uid", "instruction": "prompt", "source_image": "input", "target_image": "output"})


def test_jsonl_records_skip_broken_images_with_a_reason(tmp_path):
    report = ReadReport()
    recs = list(iter_records(jsonl_dataset(tmp_path), report))
    assert [r.id for r in recs] == ["r0", "r1", "r3", "r4"]
    assert report.errors[0]["id"] == "r2" and "missing.png" in report.errors[0]["reason"]
    bad = RecordSpec(name="toy", format="jsonl", path=str(tmp_path / "train.jsonl"),
                     fields={"instruction": "text", "source_image": "input", "target_image": "output"})
    with pytest.raises(DataError, match=r"column\(s\) \['text'\] not found.*'prompt'"):
        next(iter_records(bad))


def test_parquet_bytes_and_instruction_lists(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(im):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    table = pa.table({"omni_edit_id": ["a", "b"], "edited_prompt_list": [["add a hat", "put on a hat"], ["remove it"]],
                      "src_img": [{"bytes": png(photo(0)), "path": None}, {"bytes": png(photo(1)), "path": None}],
                      "edited_img": [{"bytes": png(photo(2)), "path": None}, {"bytes": png(photo(3)), "path": None}]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    spec = load_config(RecordSpec, ROOT / "recipes/data/omniedit.yaml", [f"path={tmp_path}", "instruction_pick=first"])
    recs = list(iter_records(spec))
    assert [(r.id, r.instruction) for r in recs] == [("a", "add a hat"), ("b", "remove it")]
    assert recs[0].source.size == (48, 40)


def test_tokenize_resume_and_lazy_reading(tmp_path, tiny_editor, monkeypatch):
    import earl.shards as shards

    spec = jsonl_dataset(tmp_path / "data", n=7)
    fresh = tokenize_dataset(spec, tiny_editor, tmp_path / "fresh", shard_size=2, progress=False)
    assert fresh["records"] == 6 and len(fresh["skipped"]) == 1 and fresh["complete"]
    ds = ShardedEdits(tmp_path / "fresh")
    assert len(ds) == 6 and ds.texts("id") == ["r0", "r1", "r3", "r4", "r5", "r6"]
    item = ds[2]
    expect = tiny_editor.encode_images([tiny_editor.preprocess(Image.open(tmp_path / "data/imgs/in3.png"))[0]])[0]
    assert item["id"] == "r3" and torch.equal(item["source_codes"], expect)

    # an interrupted run (crash while writing the third shard) resumes to the same shards
    real = shards._write_shard
    calls = {"n": 0}

    def crash_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(shards, "_write_shard", crash_on_third)
    with pytest.raises(RuntimeError):
        tokenize_dataset(spec, tiny_editor, tmp_path / "resumed", shard_size=2, progress=False)
    partial = json.loads((tmp_path / "resumed/manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == 2
    with pytest.raises(DataError, match="did not finish"):
        ShardedEdits(tmp_path / "resumed")
    monkeypatch.setattr(shards, "_write_shard", real)
    resumed = tokenize_dataset(spec, tiny_editor, tmp_path / "resumed", shard_size=2, progress=False)
    assert resumed["shards"] == fresh["shards"] and resumed["skipped"] == fresh["skipped"]
    again = ShardedEdits(tmp_path / "resumed")
    assert all(torch.equal(again[i]["target_codes"], ds[i]["target_codes"]) for i in range(len(ds)))


def test_sft_on_shards_mixed_with_shapes_by_weight(tmp_path, tiny_editor):
    from earl.train.sft import SFTRecipe, mixture_sampler, train_sft

    lengths, weights = [10, 100], [0.9, 0.1]
    draws = torch.tensor(list(mixture_sampler(lengths, weights, seed=0)))
    share = float((draws < 10).double().mean())
    assert 0.85 < share < 0.95  # ~90% of draws from the small source, as its weight says
    with pytest.raises(ConfigError, match="every source or to none"):
        mixture_sampler(lengths, [0.5, None], 0)

    tokenize_dataset(jsonl_dataset(tmp_path / "data"), tiny_editor, tmp_path / "shards", progress=False)
    tiny_editor.save_pretrained(tmp_path / "start")
    over = {"out_dir": str(tmp_path / "run"), "model.init_from": str(tmp_path / "start"), "model.image_size": 32,
            "data.train": f"[tokenized:{tmp_path / 'shards'}@0.5, shapes:simple:train:8:0@0.5]",
            "data.eval": "null", "data.cache_dir": str(tmp_path / "cache"), "run.steps": 2, "run.batch_size": 4,
            "run.save_every": 2, "run.log_every": 1, "optim.warmup_steps": 1}
    cfg = load_config(SFTRecipe, ROOT / "recipes/shapes/sft.yaml", [f"{k}={v}" for k, v in over.items()])
    final = train_sft(cfg, progress=False)
    assert final["step"] == 2 and torch.isfinite(torch.tensor(final["train/loss"]))
    bad = load_config(SFTRecipe, ROOT / "recipes/shapes/sft.yaml",
                      [f"{k}={v}" for k, v in {**over, "data.train": f"[tokenized:{tmp_path / 'shards'}@x]"}.items()])
    with pytest.raises(ConfigError, match="mixing weight"):
        train_sft(bad, progress=False)
