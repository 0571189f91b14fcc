"""`earl eval earl-suite`: local benchmark directories, earl's VIEScore judge calls answered by a scripted
judge server, and the protocol (SC = min, PQ = min, O = sqrt(SC*PQ), per benchmark, then the unweighted
mean of the benchmarks) checked against numbers computed here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from earl.benchmarks import earl_suite
from earl.benchmarks.runner import generate_missing, run_benchmark
from earl.errors import DataError
from earl.verify.viescore import PERCEPTUAL_PROMPT
from tests.benchmarks.test_runners import OPTS, ScriptedJudge, edit_by_word, images_of, sc_pq, server, text_of  # noqa: F401

SUITE = {  # benchmark directory: [(id, instruction)]
    "magicbrush": [("mb-1", "Put a hat on the dog (alpha)."), ("mb-2", "Make the sky pink (beta).")],
    "omniedit": [("0001", "Remove the car (gamma)."), ("0002", "Turn it into a watercolour (delta)."),
                 ("0003", "Add snow (epsilon).")],
}
REPLIES = {"alpha": sc_pq([8, 6], [9, 7]), "beta": sc_pq([4, 10], [5, 5]), "gamma": sc_pq([10, 9], [8, 8]),
           "delta": sc_pq([2, 7], [6, 9]), "epsilon": ["No scores here.", '{"score": [7, 7]}']}


def write_suite(root: Path) -> Path:
    for bench, rows in SUITE.items():
        (root / bench / "images").mkdir(parents=True)
        lines = []
        for i, (id_, instruction) in enumerate(rows):
            Image.new("RGB", (40, 30), (10 * i, 100, 100)).save(root / bench / "images" / f"{id_}.png")
            lines.append(json.dumps({"id": id_, "instruction": instruction, "source_image": f"images/{id_}.png"}))
        (root / bench / "items.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_earl_suite_scores_the_viescore_protocol(tmp_path, server):  # noqa: F811
    items = earl_suite.load_suite(write_suite(tmp_path / "suite"))
    # the named benchmarks in the suite's order (omniedit before magicbrush), keys unique across them
    assert [it.key for it in items] == ["omniedit/0001", "omniedit/0002", "omniedit/0003", "magicbrush/mb-1",
                                        "magicbrush/mb-2"]
    judge = ScriptedJudge(REPLIES)
    res = run_benchmark(earl_suite, items, earl_suite.judge_specs(), tmp_path / "out", edit=edit_by_word,
                        backend=server(judge), opts=OPTS, progress=False)
    # earl's VIEScore calls: SC on [source, edited] with the instruction, PQ on [edited]
    sc_req = next(r for r in judge.requests if "alpha" in text_of(r))
    assert len(images_of(sc_req)) == 2 and images_of(sc_req)[0].size == (40, 30)
    assert any(text_of(r).endswith(PERCEPTUAL_PROMPT) and len(images_of(r)) == 1 for r in judge.requests)

    def o(sc, pq):
        return math.sqrt(min(sc) * min(pq))

    magicbrush = {"SC": (6 + 4) / 2, "PQ": (7 + 5) / 2, "O": (o([8, 6], [9, 7]) + o([4, 10], [5, 5])) / 2}
    omniedit = {"SC": (9 + 2) / 2, "PQ": (8 + 6) / 2, "O": (o([10, 9], [8, 8]) + o([2, 7], [6, 9])) / 2}  # 0003 failed
    for name, want in (("magicbrush", magicbrush), ("omniedit", omniedit)):
        for k, v in want.items():
            assert res["per_benchmark"][name][k] == pytest.approx(v), (name, k)
    assert list(res["per_benchmark"]) == ["omniedit", "magicbrush"]
    assert res["per_benchmark"]["omniedit"]["failed"] == 1
    for k in ("SC", "PQ", "O"):  # the unweighted mean of the benchmarks, not the mean over the 4 scored samples
        assert res["overall"][k] == pytest.approx((magicbrush[k] + omniedit[k]) / 2)
    assert (res["overall"]["judged"], res["overall"]["failed"], res["overall"]["missing"]) == (4, 1, 0)
    md = (tmp_path / "out/results.md").read_text()
    assert md.index("| OmniEdit |") < md.index("| MagicBrush |") < md.index("| average |")
    assert (tmp_path / "out/results.csv").read_text().splitlines()[0] == "benchmark,n,judged,failed,missing,SC,PQ,O"


def test_earl_suite_cli_and_bad_inputs(tmp_path, server, capsys):  # noqa: F811
    from earl.cli import main

    root = write_suite(tmp_path / "suite")
    items = earl_suite.load_suite(root, benchmarks=["magicbrush"])
    assert {it.group for it in items} == {"magicbrush"}
    generate_missing(items, edit_by_word, tmp_path / "out", progress=False)  # edits already on disk
    backend = server(ScriptedJudge(REPLIES))
    assert main(["eval", "earl-suite", "--data", str(root), "--benchmarks", "magicbrush", "--out",
                 str(tmp_path / "out"), "--no-generate", "--judge-base-url", backend.base_url, "--retries", "0"]) == 0
    mean_o = (math.sqrt(6 * 7) + math.sqrt(4 * 5)) / 2
    assert f"| MagicBrush | 2 | 5.000 | 6.000 | {mean_o:.3f} | 0 | 0 |" in capsys.readouterr().out

    with pytest.raises(DataError, match="no vismin/items.jsonl"):
        earl_suite.load_suite(root, benchmarks=["vismin"])
    with pytest.raises(DataError, match="no benchmark directories"):
        earl_suite.load_suite(tmp_path / "out")
    (root / "omniedit/images/0002.png").unlink()
    with pytest.raises(DataError, match="1 source image.*images/0002.png"):
        earl_suite.load_suite(root)
    (root / "omniedit/items.jsonl").write_text('{"id": "x", "instruction": "Do it."}\n')
    with pytest.raises(DataError, match="items.jsonl:1: expected an object"):
        earl_suite.load_suite(root)
    (root / "omniedit/items.jsonl").write_text(
        '{"id": "x", "instruction": "a", "source_image": "images/0001.png"}\n' * 2)
    with pytest.raises(DataError, match="id 'x' appears twice"):
        earl_suite.load_suite(root)
    assert main(["eval", "earl-suite", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2"),
                 "--no-judge", "--no-generate"]) == 2
    assert "suite directory not found" in capsys.readouterr().err
