"""Model cards and upload: `save_pretrained` and `earl checkpoint pack` write a README.md whose YAML the
Hub's own parser reads (license, base model, datasets, tags, the manifest's metrics and the command that
made them); the card is outside the manifest's hashes, so a checkpoint with its card still verifies and
loads to the same weights; `push_to_hub` hands the Hub exactly the saved folder (HfApi's methods are
replaced in these tests only: nothing is uploaded)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from earl.cards import CARD, model_card
from earl.checkpoint import pack_checkpoint, push_to_hub, verify_checkpoint
from earl.errors import EarlError
from earl.model import UnifiedEditor


def _results(path, success):
    path.write_text(json.dumps({"overall": {"success": success, "sc": 7.25, "pq": 9.0, "overall": 8.0, "n": 10},
                                "per_category": {"add": {"success": success}}, "samples": []}))
    return path


@pytest.fixture
def packed(tiny_editor, tmp_path):
    model = tiny_editor.save_pretrained(tmp_path / "model")
    recipe = {"init_from": "earl-test/base-editor", "steps": 10}  # a Hub id: the card's base_model
    pack_checkpoint(model, tmp_path / "ckpt", name="grpo-editor", command="earl train grpo recipes/x.yaml",
                    recipe=recipe, evals={"simple-test": _results(tmp_path / "r.json", 0.625)})
    return tmp_path / "ckpt"


def test_save_pretrained_writes_a_card_the_hub_reads(tiny_editor, tmp_path):
    path = tiny_editor.save_pretrained(tmp_path / "my-editor")
    card = ModelCard.load(path / CARD)
    assert card.data.library_name == "earl" and card.data.license == "unknown"
    assert {"earl", "image-editing", "image-to-image"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "image-to-image"
    assert 'EditPipeline.from_pretrained("my-editor")' in card.text
    assert "32x32 images" in card.text  # the tiny editor's editor.json, described
    # the saved config is the editor's, with its kind recorded
    assert UnifiedEditor.from_pretrained(path).config == dataclasses.replace(tiny_editor.config, kind=tiny_editor.kind)


def test_packed_card_carries_the_manifests_metrics_and_command(packed):
    manifest = verify_checkpoint(packed)
    card = ModelCard.load(packed / CARD)
    assert card.data.base_model == "earl-test/base-editor"
    result = card.data.eval_results[0]
    assert result.dataset_name == "simple-test"
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics == {"success": 0.625, "sc": 7.25, "pq": 9.0, "overall": 8.0}
    assert "`earl train grpo recipes/x.yaml`" in card.text
    assert manifest["commit"] in card.text
    assert "| simple-test | success: add | 0.625 |" in card.text


def test_card_is_outside_the_hashes_and_the_round_trip_keeps_the_weights(tiny_editor, packed, tmp_path):
    manifest = verify_checkpoint(packed)
    assert CARD not in manifest["files"]
    (packed / CARD).write_text((packed / CARD).read_text() + "\nEdited on the Hub.\n")
    verify_checkpoint(packed)  # a card edited by hand does not fail verification
    loaded = UnifiedEditor.from_pretrained(packed)
    a, b = loaded.backbone.state_dict(), tiny_editor.backbone.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # re-packing a checkpoint that has a card: the old card is not hashed in, a new one is written
    again = pack_checkpoint(packed, tmp_path / "again", name="again", command="repack",
                            card={"repo_id": "org/again", "license": "mit", "datasets": ["org/shapesedit"]})
    assert CARD not in again["files"] and "`repack`" in (tmp_path / "again" / CARD).read_text()
    card = ModelCard.load(tmp_path / "again" / CARD)
    assert (card.data.license, card.data.datasets) == ("mit", ["org/shapesedit"])
    assert 'from_pretrained("org/again")' in card.text
    verify_checkpoint(tmp_path / "again")


def test_metadata_for_a_reward_model_and_explicit_fields():
    manifest = {"name": "rrm", "command": "bash make.sh", "recipe": {"model": {"init_from": "runs/local"}},
                "metrics": {"held-out": {"held_out": {"eval/point_accuracy": 0.9}, "step": 5}}}
    text = model_card({"cot": True}, manifest, "org/rrm", license="apache-2.0", datasets=["org/shapesedit"],
                      tags=["shapes"])
    card = ModelCard(text)
    assert card.data.license == "apache-2.0" and card.data.datasets == ["org/shapesedit"]
    assert "reward-model" in card.data.tags and "chain-of-thought" in card.data.tags and "shapes" in card.data.tags
    assert card.data.base_model is None  # a local init_from names nothing a reader can fetch
    assert card.data.pipeline_tag is None
    assert card.data.eval_results[0].metric_type == "point_accuracy"
    assert 'build_verifier("rrm", model_path="org/rrm")' in card.text


@pytest.fixture
def hub_calls(monkeypatch):
    """HfApi.create_repo / upload_folder recorded instead of sent."""
    calls = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))

    def upload_folder(self, **kw):
        calls.append(("upload", kw["repo_id"], kw))
        return "https://huggingface.co/x/commit/1"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_hands_the_exact_folder_to_the_upload(packed, hub_calls):
    url = push_to_hub(packed, "org/grpo-editor", private=True)
    assert url == "https://huggingface.co/x/commit/1"
    (_, repo, create), (_, repo2, up) = hub_calls
    assert repo == repo2 == "org/grpo-editor" and create["private"] is True and create["exist_ok"]
    assert up["folder_path"] == packed and up["repo_type"] == "model"
    assert sorted(p.name for p in packed.iterdir()) == sorted(["backbone", "image_tokenizer", "text_tokenizer",
                                                               "editor.json", "manifest.json", CARD])


def test_push_refuses_before_uploading(packed, tmp_path, hub_calls, monkeypatch):
    (packed / "editor.json").write_text("{}")
    with pytest.raises(EarlError, match="does not match its manifest"):
        push_to_hub(packed, "org/x")
    with pytest.raises(EarlError, match="expected 'org/name'"):
        push_to_hub(tmp_path / "model", "not an id")
    with pytest.raises(EarlError, match="not an editor directory"):
        push_to_hub(tmp_path, "org/x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EarlError, match="HF_HUB_OFFLINE"):
        push_to_hub(tmp_path / "model", "org/x")
    assert hub_calls == []


def test_save_pretrained_push_to_hub(tiny_editor, tmp_path, hub_calls):
    with pytest.raises(EarlError, match="repo_id"):
        tiny_editor.save_pretrained(tmp_path / "nowhere", push_to_hub=True)
    assert not (tmp_path / "nowhere").exists() and hub_calls == []
    path = tiny_editor.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="org/tiny")
    assert [c[0] for c in hub_calls] == ["create", "upload"] and hub_calls[1][2]["folder_path"] == path
    assert 'from_pretrained("org/tiny")' in (path / CARD).read_text()


def test_an_average_gets_its_own_card_and_a_pack_takes_an_id(tiny_editor, tmp_path, monkeypatch):
    from earl.averaging import average_editors
    from tests.hub_cache import add_snapshot

    a, b = tiny_editor.save_pretrained(tmp_path / "a"), tiny_editor.save_pretrained(tmp_path / "b")
    out = average_editors([a, b], tmp_path / "soup")
    assert 'from_pretrained("soup")' in (out / CARD).read_text()
    add_snapshot(tmp_path / "hub", "org/tiny", a, "c" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manifest = pack_checkpoint("org/tiny", tmp_path / "ckpt", name="tiny", command="")
    assert verify_checkpoint(tmp_path / "ckpt") == manifest and "editor.json" in manifest["files"]
