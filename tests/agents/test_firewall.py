"""The ground-truth firewall: an agent that does not read the answer gives byte-identical outputs
when every sample's answer (target image, scene graphs, program, reasoning) is another sample's."""

import json

import pyarrow.parquet as pq
import pytest

from earl.agents.decomposer import GroundTruthDecomposer
from earl.agents.editor import PipelineEditor
from earl.agents.evaluate import run_agent_eval
from earl.agents.firewall import ANSWER_FIELDS, agent_request, pipeline_reads_answer
from earl.agents.pipeline import AgentPipeline
from earl.shapes.dataset import load_dataset, write_dataset


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A small complex test set, and the same set with each row's answer taken from the next row."""
    d = tmp_path_factory.mktemp("firewall")
    write_dataset(d / "real", "complex", 4, seed=0, part="test", progress=False)
    table = pq.read_table(d / "real" / "data.parquet")
    shifted = [*range(1, table.num_rows), 0]
    for name in ANSWER_FIELDS:
        table = table.set_column(table.column_names.index(name), table.schema.field(name),
                                 table.column(name).take(shifted))
    (d / "swapped").mkdir()
    pq.write_table(table, d / "swapped" / "data.parquet")
    (d / "swapped" / "meta.json").write_text((d / "real" / "meta.json").read_text())
    return d / "real", d / "swapped"


@pytest.fixture(scope="module")
def editor():
    return PipelineEditor.from_pretrained()


def _outputs(out):
    return ({p.name: p.read_bytes() for p in sorted((out / "images").iterdir())},
            {p.name: p.read_bytes() for p in sorted((out / "agent").iterdir())})


def test_the_swap_changes_every_answer_and_nothing_else(sets):
    real, swapped = (load_dataset(d) for d in sets)
    for a, b in zip(real, swapped):
        assert (a["id"], a["instruction"], a["source_image"].tobytes()) == (b["id"], b["instruction"], b["source_image"].tobytes())
        assert a["target_scene"] != b["target_scene"] and a["program"] != b["program"]


def test_the_bundled_agent_reads_no_answer(sets, editor, tmp_path):
    pipe = AgentPipeline.from_pretrained()
    pipe.editor = editor
    assert not pipeline_reads_answer(pipe)
    seen = []
    decompose = pipe.decomposer.decompose
    pipe.decomposer.decompose = lambda reqs: (seen.extend(r.meta for r in reqs), decompose(reqs))[1]
    run_agent_eval(pipe, sets[0], tmp_path / "real", batch_size=2, progress=False)
    run_agent_eval(pipe, sets[1], tmp_path / "swapped", batch_size=2, progress=False)
    assert seen and all(set(m) == {"id"} for m in seen)
    assert _outputs(tmp_path / "real") == _outputs(tmp_path / "swapped")


def test_an_oracle_arm_is_named_and_the_swap_shows_it(sets, editor, tmp_path):
    pipe = AgentPipeline(GroundTruthDecomposer(), editor)
    assert pipeline_reads_answer(pipe)
    run_agent_eval(pipe, sets[0], tmp_path / "real", batch_size=2, progress=False)
    run_agent_eval(pipe, sets[1], tmp_path / "swapped", batch_size=2, progress=False)
    assert _outputs(tmp_path / "real")[1] != _outputs(tmp_path / "swapped")[1]  # its plans come from the program


def test_a_request_carries_the_answer_only_for_a_reader(sets):
    row = next(iter(load_dataset(sets[0])))
    assert set(agent_request(row, answer=False).meta) == {"id"}
    got = agent_request(row, answer=True).meta
    assert {"program", "source_scene", "target_scene"} <= set(got) and json.loads(got["program"])
