"""The bundled reward model (checkpoints/shapes-rrm-lenient, the cold start taught by a lenient
verifier in docs/REWARD_MODELS.md): its files match the manifest, the manifest says how it was
made and what it measured, and it really reads images: on held-out samples it has never seen, its
greedy traces parse, its scan names the objects, and its verdicts mostly agree with the oracle."""

from pathlib import Path

import pytest

from earl.checkpoint import verify_checkpoint
from earl.config import from_dict
from earl.model import UnifiedEditor
from earl.train.rrm import RRMRecipe, build_examples, evaluate_rrm

BUNDLE = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes-rrm-lenient"


def test_bundled_reward_model_matches_its_manifest():
    manifest = verify_checkpoint(BUNDLE)
    assert manifest["total_bytes"] <= 25 * 2**20
    assert manifest["recipe"]["data"]["verifier_miss"] == 0.5
    assert manifest["recipe"]["run"]["steps"] == 2700
    held_out = manifest["metrics"]["held-out"]["held_out"]
    assert held_out["eval/scan_objects_right"] >= 0.9  # what the docs quote, from the run's own evaluation
    assert manifest["metrics"]["held-out"]["step"] == 2700


@pytest.mark.slow
def test_bundled_reward_model_reads_held_out_images():
    manifest = verify_checkpoint(BUNDLE)
    cfg = from_dict(RRMRecipe, manifest["recipe"], where=str(BUNDLE / "manifest.json"))
    editor = UnifiedEditor.from_pretrained(BUNDLE)
    # a seed neither the training data (seed 0) nor the recipe's held-out set (seed 1_000_003) used
    examples = build_examples(cfg, editor.image_tokenizer, n=3, seed=424_242)[:16]
    metrics = evaluate_rrm(editor, examples, cfg.data.max_new_tokens)
    # The run's own evaluation (312 candidates, in the manifest): 0% parse failures, 94.5% of objects, 90.8% of points.
    # 16 candidates leave room for noise, not for a broken or untrained model: an untrained one
    # writes no parseable trace, and "nothing" in every cell gets no object right.
    assert metrics["eval/parse_failed"] <= 0.25, metrics
    assert metrics["eval/scan_objects_right"] >= 0.7, metrics
    assert metrics["eval/point_accuracy"] >= 0.75, metrics


def test_an_empty_batch_is_judged_without_a_model_call():
    """The agent pipeline's checks may hand a verifier no request at all (every step unapplicable)."""
    from earl.verify.base import build_verifier

    assert build_verifier("rrm", model_path=str(BUNDLE), expected_points=True).score([]) == []


REFRESH = BUNDLE.parent / "shapes-rrm-refresh"


def test_refreshed_reward_model_records_its_teacher_labels_and_start():
    """The reward model refreshed on the policy's own images (`--verifier learned` judges with it): its
    files match, it started from the lenient bundle, and its manifest counts every teacher label it
    consumed, its start's included."""
    manifest = verify_checkpoint(REFRESH)
    assert manifest["total_bytes"] <= 25 * 2**20
    assert manifest["recipe"]["model"]["init_from"] == "checkpoints/shapes-rrm-lenient"
    assert manifest["recipe"]["data"]["onpolicy"]  # trained on on-policy folders
    labels = manifest["teacher_labels"]
    assert labels["total"] == sum(v for k, v in labels.items() if k != "total")
    assert labels["init_from_shapes-rrm-lenient"] == 47_611
    assert manifest["metrics"]["held-out"]["step"] == manifest["recipe"]["run"]["steps"]
    assert UnifiedEditor.from_pretrained(REFRESH).config.image_size == 64
