"""The benchmark runners against restatements of the official scoring rules.

Each test feeds the same judge replies to earl (through a judge server on loopback) and to a
restatement, written here, of what the benchmark's official script does with them, and checks that
both give the same numbers; the deviations earl documents are checked as deviations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from earl.benchmarks import imgedit, imgedit_uge
from earl.benchmarks.runner import run_benchmark
from tests.benchmarks.test_runners import OPTS, ScriptedJudge, edit_by_word, server  # noqa: F401


# ---- ImgEdit-Bench: Benchmark/Basic/step1_get_avgscore.py and step2_typescore.py, restated ------------
def official_sample_score(reply: str) -> float | None:
    """step1: every line that, stripped, holds exactly one ": " with only digits after it is a
    score, whatever the name before it; the sample is their mean rounded to 2 decimals, or absent."""
    found = []
    for line in reply.splitlines():
        _, sep, tail = line.strip().partition(": ")
        if sep and ": " not in tail and tail.isdigit():
            found.append(int(tail))
    return round(sum(found) / len(found), 2) if found else None


def official_type_scores(sample_scores: dict[str, float], edits: dict[str, dict]) -> dict[str, float]:
    """step2: per edit type, the mean of the samples that have a score, rounded to 2 decimals."""
    by_type: dict[str, list[float]] = {}
    for key, value in sample_scores.items():
        by_type.setdefault(edits[key]["edit_type"], []).append(value)
    return {t: round(sum(v) / len(v), 2) for t, v in by_type.items()}


# One reply per sample; the word in the instruction picks the reply (see ScriptedJudge).
REPLIES = {
    "(one)": "Brief reasoning: fine.\nPrompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Integrity: 5",
    # a bold name is not a score line: the mean of the other two
    "(two)": "Brief reasoning: good.\n**Prompt Compliance:** 5\nVisual Naturalness: 4\nPhysical & Detail Integrity: 4",
    # "4/5" and "3.5" are not all digits: not scores
    "(three)": "Brief reasoning: weak.\nPrompt Compliance: 4/5\nVisual Naturalness: 3\nPhysical & Detail Coherence: 3",
    "(four)": "Brief reasoning: ok.\nPrompt Compliance: 3.5\nVisual Naturalness: 4\nPhysical & Detail Coherence: 4",
    # an extra line is averaged in: (5 + 4 + 4 + 3) / 4 = 4.0
    "alpha": "Brief reasoning: gone.\nPrompt Compliance: 5\nVisual Naturalness: 4\nPhysical & Detail Integrity: 4\n"
             "Overall: 3",
    # a missing criterion: the others are averaged
    "beta": "Brief reasoning: partly removed.\nPrompt Compliance: 5\nVisual Naturalness: 2",
    # three parts at ": " (not a score); two spaces before the digit (not a score); trailing space (a score)
    "gamma": "Brief reasoning: palette: warm.\nStyle Fidelity: 4\nContent Preservation:  5\nRendering Quality: 3 ",
    # no score line at all: absent officially, a counted failure in earl (same type mean)
    "delta": "I cannot judge these images.",
    # full-width digits are digits to str.isdigit and int()
    "epsilon": "Brief reasoning: both edits done.\nPrompt Compliance: \uff15\nVisual Naturalness: 4\nQuality: 3",
}
EDITS = {  # key: {id, prompt, edit_type}, as basic_edit.json
    "1": ("replace", "Replace the cat with a dog (one)."), "2": ("replace", "Replace the hat with a crown (two)."),
    "3": ("add", "Add a spoon (three)."), "4": ("add", "Add a fork (four)."),
    "5": ("remove", "Remove the lamp (alpha)."), "6": ("remove", "Remove the car (beta)."),
    "7": ("style", "Make it an oil painting (gamma)."), "8": ("style", "Make it a sketch (delta)."),
    "9": ("compose", "Add a cup and remove the plate (epsilon)."),
}


def write_basic(root: Path) -> tuple[Path, Path, dict]:
    edits = {k: {"id": f"src/{k}.jpg", "prompt": p, "edit_type": t} for k, (t, p) in EDITS.items()}
    (root / "images/src").mkdir(parents=True)
    for rec in edits.values():
        Image.new("RGB", (48, 32), (120, 60, 30)).save(root / "images" / rec["id"])
    (root / "basic_edit.json").write_text(json.dumps(edits))
    return root / "basic_edit.json", root / "images", edits


def reply_of(prompt: str) -> str:
    return next(v for k, v in REPLIES.items() if k in prompt)


def test_imgedit_basic_reads_replies_as_the_official_script(tmp_path, server, imgedit_prompts):  # noqa: F811
    edits_json, images, edits = write_basic(tmp_path / "bench")
    items = imgedit.load_imgedit(edits_json, images)
    res = run_benchmark(imgedit, items, imgedit.judge_specs(imgedit.load_prompts(imgedit_prompts)),
                        tmp_path / "out", edit=edit_by_word, backend=server(ScriptedJudge(REPLIES)), opts=OPTS,
                        progress=False)

    official = {k: official_sample_score(reply_of(rec["prompt"])) for k, rec in edits.items()}
    assert official == {"1": 4.0, "2": 4.0, "3": 3.0, "4": 4.0, "5": 4.0, "6": 3.5, "7": 3.5, "8": None, "9": 4.0}
    # per sample: the same score; a sample without one is absent officially, a counted failure in earl
    assert {r["key"]: r["score"] for r in res["samples"]} == official
    assert [r["key"] for r in res["samples"] if r["status"] == "failed"] == ["8"]
    # per type: the same rounded means
    types = official_type_scores({k: v for k, v in official.items() if v is not None}, edits)
    assert {t: s["score"] for t, s in res["per_type"].items()} == types
    assert res["per_type"]["style"]["failed"] == 1
    # Overall: the leaderboard's mean of the type scores
    assert res["overall"]["score"] == round(sum(types.values()) / len(types), 2)


def test_imgedit_parser_equals_the_restated_rule_and_names_its_deviation():
    odd = ["Score: 4", "Score:4", "Score: 4.0", " Score: 4 ", "a: b: 4", "Score: 04", "Score: -1", "Score: ",
           "Score: \u0664", "Score:\t4", "**Score**: 5", "Score: 4\r\nOther: 2", "Brief reasoning: 5\nScore: 3"]
    for reply in [*REPLIES.values(), *odd]:
        mine = imgedit.parse_reply(reply)
        assert (round(sum(mine) / len(mine), 2) if mine else None) == official_sample_score(reply), reply
    # the UGE suite reads replies with the same rule
    assert imgedit_uge.parse_reply is imgedit.parse_reply
    # earl's documented deviation: a score outside 1-5 fails the reply; officially it is averaged in
    assert official_sample_score("Prompt Compliance: 9\nVisual Naturalness: 3") == 6.0
    assert imgedit.parse_reply("Prompt Compliance: 9\nVisual Naturalness: 3") is None
    assert official_sample_score("Score: 0") == 0.0 and imgedit.parse_reply("Score: 0") is None


def test_judgements_stored_by_an_older_parser_are_read_again(tmp_path, server, imgedit_prompts):  # noqa: F811
    """A run judged before the parser changed: its stored replies are re-read when scoring, and
    --retry-failed asks again exactly the replies that the current parser cannot read."""
    edits_json, images, edits = write_basic(tmp_path / "bench")
    items = [it for it in imgedit.load_imgedit(edits_json, images) if it.key in ("2", "8")]
    out = tmp_path / "out"
    specs = imgedit.judge_specs(imgedit.load_prompts(imgedit_prompts))
    run_benchmark(imgedit, items, specs, out, edit=edit_by_word, backend=server(ScriptedJudge(REPLIES)), opts=OPTS,
                  progress=False)
    # rewrite the stored values as the former by-name parser had them: sample 2 read as [5, 4, 4]
    stored = next((out / "judgements/judge").glob("2*.json"))
    j = json.loads(stored.read_text())
    stored.write_text(json.dumps({**j, "value": [5.0, 4.0, 4.0]}))
    res = imgedit.score(items, out)
    assert {r["key"]: r["score"] for r in res["samples"]} == {"2": 4.0, "8": None}  # not 4.33
    judge = ScriptedJudge(REPLIES)
    run_benchmark(imgedit, items, specs, out, backend=server(judge), opts=OPTS, retry_failed=True, progress=False)
    assert len(judge.requests) == 1 + OPTS.retries  # only sample 8 (no score line) is asked again


def test_uge_suite_mean_equals_the_restated_rule(tmp_path, server):  # noqa: F811
    """Benchmark/UGE/get_average_score.py: the same line rule, then the mean of the sample means."""
    replies = {"(one)": "Brief reasoning: ok.\nScore: 4", "(two)": "**Score:** 5\nAdherence: 3\nQuality: 4",
               "(three)": "Score: 4/5", "(four)": "Brief reasoning: mostly.\nScore: 3\nOverall: 5"}
    edits = {str(i): {"id": f"{i}.jpg", "prompt": f"Edit number {w}."} for i, w in enumerate(replies, 1)}
    (tmp_path / "img").mkdir()
    for rec in edits.values():
        Image.new("RGB", (24, 24), (9, 90, 9)).save(tmp_path / "img" / rec["id"])
    (tmp_path / "uge.json").write_text(json.dumps(edits))
    items = imgedit_uge.load_uge(tmp_path / "uge.json", tmp_path / "img")
    res = run_benchmark(imgedit_uge, items, imgedit_uge.judge_specs("Rate it: <edit_prompt>"), tmp_path / "out",
                        edit=edit_by_word, backend=server(ScriptedJudge(replies)), opts=OPTS, progress=False)
    samples = [s for s in (official_sample_score(r) for r in replies.values()) if s is not None]
    assert samples == [4.0, 3.5, 4.0]
    assert res["overall"]["score"] == round(sum(samples) / len(samples), 2) and res["overall"]["failed"] == 1


# ---- GEdit-Bench: the judge's resize in the official runner (test_gedit_score.py), restated ----------
def official_judge_size(width: int, height: int, area: int = 512 * 512) -> tuple[int, int]:
    """calculate_dimensions(512 * 512, w / h): the width from the area and the ratio, the height from
    that width, each cut to an int (not rounded)."""
    ratio = width / height
    new_width = math.sqrt(area * ratio)
    return int(new_width), int(new_width / ratio)


SIZES = [(1280, 720), (720, 1280), (1024, 256), (1000, 750), (640, 427), (1920, 1080), (333, 999), (512, 512),
         (4032, 3024), (1024, 683), (300, 200), (2000, 1333)]


def test_gedit_judge_resize_truncates_as_the_official_runner():
    from earl.benchmarks.runner import resize_to_area

    for w, h in SIZES:
        assert resize_to_area(Image.new("RGB", (w, h)), 512 * 512).size == official_judge_size(w, h), (w, h)
    assert official_judge_size(1280, 720) == (682, 384)  # rounding would give 683x384


def write_gedit_copy(root: Path, with_raw: bool) -> Path:
    """Two rows in the published schema; input_image (600x400, green) and input_image_raw (1280x720,
    blue) differ so that the test can tell which one each party was given."""
    import datasets

    columns = {"task_type": ["color_alter", "color_alter"], "key": ["k1", "k2"],
               "instruction": ["Make the car red (alpha).", "Make the cup blue (beta)."],
               "instruction_language": ["en", "en"],
               "input_image": [Image.new("RGB", (600, 400), (0, 200, 0))] * 2,
               "Intersection_exist": [True, False]}
    features = {k: datasets.Value("string") for k in ("task_type", "key", "instruction", "instruction_language")}
    features.update(input_image=datasets.Image(), Intersection_exist=datasets.Value("bool"))
    if with_raw:
        columns["input_image_raw"] = [Image.new("RGB", (1280, 720), (0, 0, 200))] * 2
        features["input_image_raw"] = datasets.Image()
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).to_parquet(
        str(root / "data/train-00000-of-00001.parquet"))
    return root


def test_gedit_judge_sees_input_image_raw_and_the_editor_input_image(tmp_path, server, caplog,  # noqa: F811
                                                                    gedit_prompts):
    from earl.benchmarks import gedit
    from tests.benchmarks.test_runners import colour_of, images_of, sc_pq

    given = []

    def edit(image, instruction):  # a 1000x750 edit whose colour names the sample
        given.append((image.size, image.getpixel((0, 0))))
        return Image.new("RGB", (1000, 750), colour_of(next(w for w in ("alpha", "beta") if w in instruction)))

    prompts = gedit.load_prompts(gedit_prompts)
    for with_raw in (True, False):
        judge = ScriptedJudge({"alpha": sc_pq([8, 6], [9, 7]), "beta": sc_pq([4, 10], [5, 5])})
        items = gedit.load_gedit(write_gedit_copy(tmp_path / f"data{with_raw}", with_raw))
        out = tmp_path / f"out{with_raw}"
        res = run_benchmark(gedit, items, gedit.judge_specs(prompts), out, edit=edit, backend=server(judge),
                            opts=OPTS, progress=False)
        assert given[-2:] == [((600, 400), (0, 200, 0))] * 2  # the editor always gets input_image
        sc = [images_of(r) for r in judge.requests if len(images_of(r)) == 2]
        pq = [images_of(r) for r in judge.requests if len(images_of(r)) == 1]
        assert len(sc) == len(pq) == 2
        src = [im[0] for im in sc]
        if with_raw:  # the official runner's source: input_image_raw, sized by its arithmetic
            assert {(im.size, im.getpixel((0, 0))) for im in src} == {(official_judge_size(1280, 720), (0, 0, 200))}
            assert res["judge_source"] == "input_image_raw"
            assert "shown to the judge: input_image_raw" in (out / "results.md").read_text()
        else:  # no such column: input_image, and the run says so
            assert {(im.size, im.getpixel((0, 0))) for im in src} == {(official_judge_size(600, 400), (0, 200, 0))}
            assert res["judge_source"] == "input_image"
            assert "has no input_image_raw column" in (out / "results.md").read_text()
            assert "no input_image_raw column" in caplog.text
        assert {im[1].size for im in sc} | {im[0].size for im in pq} == {official_judge_size(1000, 750)}
        assert res["full"]["overall"]["O"] == pytest.approx((math.sqrt(6 * 7) + math.sqrt(4 * 5)) / 2)
