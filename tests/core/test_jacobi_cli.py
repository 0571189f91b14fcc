"""The Jacobi schedule through what users run: `earl eval shapes`, `EditPipeline`, `earl bench generate`.
Greedy, the images (and so the success) are the sequential ones; results say what each cost in forwards."""

import json

import pytest

from earl.cli import main
from earl.shapes.dataset import write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), split="simple", n=6, seed=0, part="test", progress=False)


def test_eval_shapes_jacobi_gives_the_sequential_images_and_success_in_fewer_passes(tmp_path, data, capsys):
    """The bundled editor (a trained one: its guesses stand often enough to save forwards)."""
    runs = {"seq": [], "jac": ["--schedule", "jacobi", "--window", "8"]}
    for name, flags in runs.items():
        assert main(["eval", "shapes", "--data", str(data), "--out", str(tmp_path / name), "--batch-size", "4",
                     *flags]) == 0, capsys.readouterr().err
        assert "forward passes: " in capsys.readouterr().out
    seq, jac = (json.loads((tmp_path / n / "results.json").read_text()) for n in runs)
    for a, b in zip(sorted((tmp_path / "seq/images").glob("*.png")), sorted((tmp_path / "jac/images").glob("*.png"))):
        assert a.name == b.name and a.read_bytes() == b.read_bytes(), a.name
    assert seq["overall"] == jac["overall"]
    s, j = seq["generation"], jac["generation"]
    assert (s["schedule"], s["window"], j["schedule"], j["window"]) == ("sequential", None, "jacobi", 8)
    assert s["images"] == j["images"] == 6
    assert j["forward_passes"] < s["forward_passes"] and j["forward_passes_per_image"] < s["forward_passes_per_image"]
    assert j["tokens_per_pass"] > s["tokens_per_pass"]
    # batches of 4 and 2: each image waited for its batch's forwards
    assert s["forward_passes_per_image"] == pytest.approx(s["forward_passes"] / 2)
    # a resumed run that makes nothing keeps the count of the run that made the images
    assert main(["eval", "shapes", "--data", str(data), "--out", str(tmp_path / "jac"), "--schedule", "jacobi",
                 "--window", "8"]) == 0
    assert json.loads((tmp_path / "jac/results.json").read_text())["generation"] == j


def test_edit_pipeline_takes_the_schedule(data):
    from earl.pipeline import EditPipeline
    from earl.shapes.dataset import load_dataset

    pipe = EditPipeline.from_pretrained()
    row = load_dataset(data)[0]
    seq = pipe(row["source_image"], row["instruction"])
    jac = pipe(row["source_image"], row["instruction"], schedule="jacobi", window=4)
    assert jac.images[0].tobytes() == seq.images[0].tobytes()
    assert jac.forward_passes < seq.forward_passes and jac.tokens_per_pass > seq.tokens_per_pass
    from earl.errors import EarlError

    with pytest.raises(EarlError, match="schedule 'jacobi' needs window=N"):
        pipe(row["source_image"], row["instruction"], schedule="jacobi")


@pytest.mark.slow
def test_bench_generate_puts_jacobi_rows_beside_sequential(tmp_path, capsys):
    assert main(["bench", "generate", "--size", "shapes-test", "--image-size", "32", "--batch-sizes", "2",
                 "--repeats", "1", "--schedule", "jacobi", "--window", "2,16", "--out", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "b.json").read_text())
    (row,) = res["results"]
    assert res["config"]["windows"] == [2, 16]
    seq = row["earl_greedy"]
    assert seq["forward_passes"] == 1 + 1 + 15  # prefill, header, the 15 codes fed (4x4 grid)
    for n in (2, 16):
        j = row[f"earl_jacobi_w{n}"]
        assert j["same_as_sequential"] and j["forward_passes"] <= seq["forward_passes"]
        assert j["passes_vs_sequential"] == j["forward_passes"] / seq["forward_passes"]
        assert f"| 2 | jacobi w{n} | {j['forward_passes']} |" in out
    assert row["earl_cfg"]["forward_passes"] == 17 and "earl_cfg passes / tok per pass" in out
    assert main(["bench", "generate", "--window", "4"]) == 2
    assert "--window applies to --schedule jacobi" in capsys.readouterr().err
    assert main(["bench", "generate", "--schedule", "jacobi", "--window", "0"]) == 2
    assert "--window '0': expected comma-separated integers >= 1" in capsys.readouterr().err


def test_the_agents_editor_takes_the_schedule_and_counts_its_forwards(data):
    from earl.agents.editor import PipelineEditor
    from earl.agents.options import AgentOptions
    from earl.shapes.dataset import load_dataset

    rows = load_dataset(data).select(range(3))
    seq = PipelineEditor.from_pretrained()
    jac = PipelineEditor(seq.editor, schedule="jacobi", window=8)
    a = seq.edit(list(rows["source_image"]), list(rows["instruction"]))
    b = jac.edit(list(rows["source_image"]), list(rows["instruction"]))
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]
    assert seq.cost.images == jac.cost.images == 3
    assert jac.cost.forward_passes < seq.cost.forward_passes
    assert jac.cost.to_dict()["schedule"] == "jacobi" and jac.cost.to_dict()["window"] == 8
    with pytest.raises(ValueError, match="window 0: expected an integer >= 1"):  # a study recipe's agent section
        AgentOptions(schedule="jacobi", window=0)
    from earl.agents.build import agent_parts

    parts = agent_parts("ground-truth", None, AgentOptions(schedule="jacobi", window=4))
    assert (parts["editor"].schedule, parts["editor"].window) == ("jacobi", 4)
