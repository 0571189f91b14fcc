"""ShapesEdit as a Hugging Face dataset: `datasets.load_dataset(DIR)` on what `earl data shapes` writes
gives the part as the split, Image features and the same rows earl reads; the card's YAML is what the Hub
parses; `push_dataset` hands the Hub exactly the folder (HfApi's methods replaced here only)."""

from __future__ import annotations

import shutil

import datasets
import pytest
from huggingface_hub import DatasetCard, HfApi
from PIL import Image

from earl.errors import DataError
from earl.shapes.dataset import load_dataset, read_meta, write_dataset
from earl.shapes.publish import CARD, push_dataset


@pytest.fixture(scope="module")
def test_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("shapes") / "complex-test", split="complex", n=12, seed=0,
                         part="test", progress=False, created_by="earl data shapes --split complex --part test")


def test_load_dataset_reads_the_folder_with_image_features(test_dir, tmp_path):
    ds = datasets.load_dataset(str(test_dir), cache_dir=str(tmp_path / "cache"))
    assert list(ds) == ["test"]  # the part is the split; meta.json is not read as data
    hf = ds["test"]
    assert isinstance(hf.features["source_image"], datasets.Image)
    assert isinstance(hf.features["target_image"], datasets.Image)
    assert isinstance(hf[0]["target_image"], Image.Image) and hf[0]["target_image"].size == (64, 64)
    ours = load_dataset(test_dir)
    assert hf["id"] == ours["id"] and hf["instruction"] == ours["instruction"]
    assert hf[3]["source_image"].tobytes() == ours[3]["source_image"].tobytes()


def test_card_yaml_and_content(test_dir):
    card = DatasetCard.load(test_dir / CARD)
    meta = read_meta(test_dir)
    assert card.data.configs == [{"config_name": "default", "data_files": [{"split": "test", "path": "data.parquet"}]}]
    assert card.data.task_categories == ["image-to-image"] and card.data.size_categories == ["n<1K"]
    for category, count in meta["counts"].items():
        assert f"| {category} | {count} |" in card.text
    for field in ("source_scene", "program", "reasoning"):
        assert f"| `{field}` |" in card.text
    assert "an edit succeeds when every principle passes" in card.text
    assert "`earl data shapes --split complex --part test`" in card.text


def test_push_dataset_hands_the_folder_to_the_upload(test_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw["repo_id"], kw)) or "url")
    with pytest.raises(DataError, match="no data.parquet"):
        push_dataset(tmp_path, "org/shapesedit")
    assert calls == []
    push_dataset(test_dir, "org/shapesedit", private=False)
    (_, repo, create), (_, _, up) = calls
    assert repo == "org/shapesedit" and create["repo_type"] == "dataset" and create["private"] is False
    assert up["folder_path"] == test_dir and up["repo_type"] == "dataset"
    # a folder written before datasets had cards gets one before it goes up
    old = tmp_path / "old"
    shutil.copytree(test_dir, old)
    (old / CARD).unlink()
    push_dataset(old, "org/old")
    assert calls[-1][2]["folder_path"] == old and (old / CARD).read_text() == (test_dir / CARD).read_text()
