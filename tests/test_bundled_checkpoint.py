"""The bundled reference checkpoint: its files match the manifest, its recorded metrics meet the
target, and it really edits: on 24 fixed simple test samples the oracle passes most of its edits."""

from earl.checkpoint import verify_checkpoint
from earl.evaluate import run_shapes_eval
from earl.pipeline import EditPipeline, default_checkpoint
from earl.shapes.dataset import write_dataset


def test_bundled_checkpoint_matches_its_manifest_and_target():
    manifest = verify_checkpoint(default_checkpoint())
    assert manifest["total_bytes"] <= 25 * 2**20
    assert manifest["metrics"]["simple-test"]["overall"]["n"] == 200
    assert manifest["metrics"]["simple-test"]["overall"]["success"] >= 0.70
    assert "complex-test" in manifest["metrics"]
    assert manifest["recipe"]["model"]["size"] == "shapes-tiny"


def test_bundled_checkpoint_edits_test_samples(tmp_path):
    data = write_dataset(tmp_path / "data", split="simple", n=24, seed=0, part="test")
    pipe = EditPipeline.from_pretrained()  # the default path is the bundled checkpoint
    results = run_shapes_eval(default_checkpoint(), data, tmp_path / "eval", progress=False, editor=pipe.editor)
    # The manifest records ~75-80% on 200 samples; 24 samples leave room for sampling noise, not for a broken model.
    assert results["overall"]["success"] >= 0.5, results["overall"]
    assert (tmp_path / "eval" / "grid.png").is_file()
