"""GEdit-Bench and ImgEdit-Bench runners: fixture sets and judge prompts in the benchmarks' published
formats (the prompts from conftest.py), a real judge server on loopback with a scripted engine, and the
official aggregation checked against numbers computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from earl.benchmarks import gedit, imgedit
from earl.benchmarks.runner import JudgeOptions, run_benchmark
from earl.errors import DataError
from earl.serve.judge import JudgeServer
from earl.verify.chat import OpenAIChatBackend
from earl.verify.local_vlm import Completion

OPTS = JudgeOptions(concurrency=4, retries=1, backoff=0.01)


def text_of(request) -> str:
    return "".join(p["text"] for m in request.messages if isinstance(m["content"], list) for p in m["content"]
                   if p["type"] == "text")


def images_of(request) -> list[Image.Image]:
    return [p["image"] for m in request.messages if isinstance(m["content"], list) for p in m["content"]
            if p["type"] == "image"]


WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "(one)", "(two)", "(three)", "(four)")


def colour_of(word: str) -> tuple[int, int, int]:
    return (20 * (WORDS.index(word) + 1), 7, 7)


def edit_by_word(image: Image.Image, instruction: str) -> Image.Image:
    """The 'editor': a flat image whose colour says which sample it answers (a PQ call sees only it)."""
    return Image.new("RGB", (256, 256), colour_of(next(w for w in WORDS if w in instruction)))


class ScriptedJudge:
    """A judge engine for `JudgeServer`: the reply is looked up by the colour of the edited (last) image."""

    def __init__(self, replies: dict[str, str | list[str]]):
        self.replies, self.requests = replies, []

    def __call__(self, requests):
        out = []
        for r in requests:
            self.requests.append(r)
            colour = images_of(r)[-1].convert("RGB").getpixel((0, 0))
            reply = next(v for k, v in self.replies.items() if colour_of(k) == colour)
            if isinstance(reply, list):  # one reply per call kind: [SC reply, PQ reply] (PQ has 1 image)
                reply = reply[0] if len(images_of(r)) == 2 else reply[1]
            out.append(Completion(reply, 10, 5, "stop"))
        return out


@pytest.fixture
def server():
    servers = []

    def start(engine):
        servers.append(JudgeServer(("127.0.0.1", 0), engine, model_name="scripted").start())
        return OpenAIChatBackend(base_url=servers[-1].url, timeout=30)

    yield start
    for s in servers:
        s.close()


# ---- GEdit-Bench ------------------------------------------------------------------------------
ROWS = [  # task_type, key, instruction, language, intersection
    ("background_change", "k1", "Change the background to a forest (alpha).", "en", True),
    ("background_change", "k2", "Change the background to a beach (beta).", "en", False),
    ("background_change", "k1", "把背景换成森林 (gamma)。", "cn", True),
    ("color_alter", "k3", "Make the car red (delta).", "en", True),
    ("color_alter", "k4", "Make the cup blue (epsilon).", "en", False),
]


def write_gedit(root: Path) -> Path:
    """A GEdit-Bench copy in the published schema, as the hub's parquet file under data/."""
    import datasets

    features = datasets.Features({
        "task_type": datasets.Value("string"), "key": datasets.Value("string"),
        "instruction": datasets.Value("string"), "instruction_language": datasets.Value("string"),
        "input_image": datasets.Image(), "input_image_raw": datasets.Image(),
        "Intersection_exist": datasets.Value("bool")})
    image = Image.new("RGB", (1024, 256), (30, 120, 200))  # 4:1, to check the judge's 512x512-area resize
    ds = datasets.Dataset.from_dict({
        "task_type": [r[0] for r in ROWS], "key": [r[1] for r in ROWS], "instruction": [r[2] for r in ROWS],
        "instruction_language": [r[3] for r in ROWS], "input_image": [image] * len(ROWS),
        "input_image_raw": [image] * len(ROWS), "Intersection_exist": [r[4] for r in ROWS]}, features=features)
    (root / "data").mkdir(parents=True)
    ds.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def sc_pq(sc, pq):
    return [json.dumps({"score": sc, "reasoning": "ok"}), json.dumps({"score": pq, "reasoning": "ok"})]


def test_gedit_scores_like_the_official_script(tmp_path, server, gedit_prompts):
    items = gedit.load_gedit(write_gedit(tmp_path / "gedit"), language="en")
    assert [it.key for it in items] == ["en/background_change/k1", "en/background_change/k2",
                                        "en/color_alter/k3", "en/color_alter/k4"]
    judge = ScriptedJudge({"alpha": sc_pq([8, 6], [9, 7]), "beta": sc_pq([4, 10], [5, 5]),
                           "delta": sc_pq([10, 9], [8, 8]), "epsilon": ["I cannot rate this.", '{"score": [7, 7]}']})
    edits = []

    def edit(image, instruction):
        edits.append(instruction)
        return edit_by_word(image, instruction)

    out = tmp_path / "out"
    res = run_benchmark(gedit, items, gedit.judge_specs(gedit.load_prompts(gedit_prompts)), out, edit=edit,
                        backend=server(judge), opts=OPTS, progress=False)
    # the benchmark's own prompt with the instruction filled in; both images near 512x512 in area
    sc_req = next(r for r in judge.requests if "alpha" in text_of(r) and len(images_of(r)) == 2)
    assert text_of(sc_req) == (gedit_prompts / "sc_prompt.txt").read_text().replace(
        "<instruction>", ROWS[0][2])
    assert [im.size for im in images_of(sc_req)] == [(1024, 256), (512, 512)]
    # per sample: SC = min, PQ = min, O = sqrt(SC*PQ); epsilon's SC reply never parses -> failed
    o1, o2, o3 = math.sqrt(6 * 7), math.sqrt(4 * 5), math.sqrt(9 * 8)
    full = res["full"]
    assert full["per_group"]["background_change"]["SC"] == pytest.approx((6 + 4) / 2)
    assert full["per_group"]["background_change"]["O"] == pytest.approx((o1 + o2) / 2)
    assert full["per_group"]["color_alter"]["O"] == pytest.approx(o3)  # only delta was scored
    assert full["per_group"]["color_alter"]["failed"] == 1
    # the reported number: the unweighted mean of the group means (not the mean over samples)
    assert full["overall"]["O"] == pytest.approx(((o1 + o2) / 2 + o3) / 2)
    assert full["overall"]["PQ"] == pytest.approx(((7 + 5) / 2 + 8) / 2)
    assert (full["overall"]["judged"], full["overall"]["failed"], full["overall"]["missing"]) == (3, 1, 0)
    # intersection subset: alpha and delta
    assert res["intersection"]["overall"]["O"] == pytest.approx((o1 + o3) / 2)
    assert "| full |" in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().splitlines()[0] == "set,group,n,judged,failed,missing,SC,PQ,O"

    # resume: nothing is generated or asked again; a deleted judgement is asked alone
    n_requests = len(judge.requests)
    failed_file = next((out / "judgements/sc").glob("en_color_alter_k4*.json"))
    assert json.loads(failed_file.read_text())["value"] is None and "unparseable" in json.loads(
        failed_file.read_text())["error"]
    judge.replies["epsilon"] = sc_pq([6, 6], [7, 7])
    failed_file.unlink()
    res2 = run_benchmark(gedit, items, gedit.judge_specs(gedit.load_prompts(gedit_prompts)), out, edit=edit,
                         backend=server(judge), opts=OPTS, progress=False)
    assert len(edits) == 4 and len(judge.requests) == n_requests + 1
    # the new SC [6, 6] with the PQ [7, 7] kept from the first run
    assert res2["full"]["per_group"]["color_alter"]["O"] == pytest.approx((o3 + math.sqrt(6 * 7)) / 2)


def test_gedit_counts_missing_images_and_names_bad_data(tmp_path):
    items = gedit.load_gedit(write_gedit(tmp_path / "gedit"), language="cn")
    assert len(items) == 1
    res = gedit.score(items, tmp_path / "empty")
    assert res["full"]["overall"]["missing"] == 1 and res["full"]["overall"]["O"] is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no parquet files"):
        gedit.load_gedit(tmp_path / "empty")
    import datasets

    (tmp_path / "other").mkdir()
    datasets.Dataset.from_dict({"key": ["a"], "prompt": ["b"]}).to_parquet(str(tmp_path / "other/x.parquet"))
    with pytest.raises(DataError, match="missing field.*task_type"):
        gedit.load_gedit(tmp_path / "other")
    with pytest.raises(DataError, match="sc_prompt.txt"):
        gedit.load_prompts(tmp_path)


# ---- ImgEdit-Bench ----------------------------------------------------------------------------
def write_imgedit(root: Path) -> tuple[Path, Path]:
    edits = {"11": {"id": "animal/a.jpg", "prompt": "Replace the cat with a dog (one).", "edit_type": "replace"},
             "12": {"id": "animal/b.jpg", "prompt": "Replace the hat with a crown (two).", "edit_type": "replace"},
             "13": {"id": "food/c.jpg", "prompt": "Add a spoon next to the bowl (three).", "edit_type": "add"},
             "14": {"id": "food/d.jpg", "prompt": "Add a fork (four).", "edit_type": "add"}}
    for rec in edits.values():
        (root / "images" / rec["id"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (200, 180, 20)).save(root / "images" / rec["id"])
    (root / "basic_edit.json").write_text(json.dumps(edits))
    return root / "basic_edit.json", root / "images"


def test_imgedit_scores_like_the_official_script(tmp_path, server, imgedit_prompts):
    prompts = imgedit.load_prompts(imgedit_prompts)
    assert imgedit.criteria(prompts["add"]) == ["Prompt Compliance", "Visual Naturalness",
                                                "Physical & Detail Coherence"]
    items = imgedit.load_imgedit(*write_imgedit(tmp_path / "bench"))
    judge = ScriptedJudge({
        "(one)": "Brief reasoning: fine.\nPrompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Integrity: 5",
        "(two)": "Brief reasoning: good.\n**Prompt Compliance:** 5\nVisual Naturalness: 4\n"  # bold: not a score
                 "Physical & Detail Integrity: 4",
        "(three)": "Brief reasoning: weak.\nPrompt Compliance: 2\nVisual Naturalness: 3\n"
                   "Physical & Detail Coherence: 3",
        "(four)": "Prompt Compliance: 2\nVisual Naturalness: 9\nPhysical & Detail Coherence: 3"})  # 9: out of range
    out = tmp_path / "out"
    res = run_benchmark(imgedit, items, imgedit.judge_specs(prompts), out, edit=edit_by_word,
                        backend=server(judge), opts=OPTS, progress=False)
    req = next(r for r in judge.requests if "(one)" in text_of(r))
    assert text_of(req) == prompts["replace"].replace("<edit_prompt>", "Replace the cat with a dog (one).")
    assert len(images_of(req)) == 2  # [text, original, edited]
    # sample = round(mean of 3, 2); type = round(mean of samples, 2); overall = mean of type scores
    replace = round((round(12 / 3, 2) + round(8 / 2, 2)) / 2, 2)
    add = round(8 / 3, 2)
    assert res["per_type"]["replace"]["score"] == replace and res["per_type"]["add"]["score"] == add
    assert res["per_type"]["add"]["failed"] == 1
    assert res["overall"]["score"] == round((replace + add) / 2, 2)
    md = (out / "results.md").read_text()
    assert md.index("| Add |") < md.index("| Replace |") and "failed 1" in md


def test_imgedit_parser_and_bad_inputs(tmp_path):
    assert imgedit.parse_reply("Prompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Integrity: 5"
                               ) == [4.0, 3.0, 5.0]
    assert imgedit.parse_reply("Prompt Compliance: 4\nVisual Naturalness: 3") == [4.0, 3.0]  # the rest is averaged
    assert imgedit.parse_reply("") is None
    assert imgedit.parse_reply("Prompt Compliance: 0\nVisual Naturalness: 3\nPhysical & Detail Integrity: 5") is None
    edits, images = write_imgedit(tmp_path / "bench")
    (images / "food/c.jpg").unlink()
    with pytest.raises(DataError, match="1 source image.*food/c.jpg"):
        imgedit.load_imgedit(edits, images)
    edits.write_text("[1, 2]")
    with pytest.raises(DataError, match="expected an object"):
        imgedit.load_imgedit(edits, images)


def test_gibberish_from_a_real_tiny_vlm_is_failed_never_scored(tmp_path, tiny_vlm_server, gedit_prompts):
    """The tiny random VLM behind `earl serve judge` writes gibberish: every judgement failed and counted."""
    items = gedit.load_gedit(write_gedit(tmp_path / "gedit"))[:2]
    res = run_benchmark(gedit, items, gedit.judge_specs(gedit.load_prompts(gedit_prompts)), tmp_path / "out",
                        edit=lambda im, ins: im.resize((32, 32)), backend=tiny_vlm_server,
                        opts=JudgeOptions(concurrency=2, retries=0, max_tokens=6), progress=False)
    assert res["full"]["overall"]["failed"] == 2 and res["full"]["overall"]["O"] is None


def test_cli_runs_an_earl_editor_through_imgedit(tmp_path, server, tiny_editor, capsys,
                                                 imgedit_prompts):
    """`earl eval imgedit` end to end: a saved tiny editor makes the edits, a judge server scores them."""
    from earl.cli import main

    tiny_editor.save_pretrained(tmp_path / "editor")
    edits, images = write_imgedit(tmp_path / "bench")
    reply = "Brief reasoning: ok.\n"

    def engine(requests):  # every edit gets 3 / 4 / 5 on the three criteria of its type
        from earl.benchmarks.imgedit import criteria

        prompts = imgedit.load_prompts(imgedit_prompts)
        out = []
        for r in requests:
            t = "add" if "Add " in text_of(r) else "replace"
            names = criteria(prompts[t])
            out.append(Completion(reply + "\n".join(f"{n}: {v}" for n, v in zip(names, (3, 4, 5))), 10, 5, "stop"))
        return out

    backend = server(engine)
    argv = ["eval", "imgedit", "--edits", str(edits), "--images", str(images), "--prompts",
            str(imgedit_prompts), "--model", str(tmp_path / "editor"), "--out", str(tmp_path / "out"),
            "--judge-base-url", backend.base_url, "--retries", "0"]
    assert main(argv) == 0
    assert "| 4.00 | 4.00 | 4.00 |" in capsys.readouterr().out  # Add, Replace, Overall
    assert len(list((tmp_path / "out/images").glob("*.png"))) == 4
    seq = json.loads((tmp_path / "out/results.json").read_text())["generation"]
    assert seq["schedule"] == "sequential" and seq["images"] == 4 and seq["forward_passes"] > 4
    # the Jacobi schedule: the same greedy images, its cost beside the scores
    argv[argv.index(str(tmp_path / "out"))] = str(tmp_path / "jac")
    assert main([*argv, "--schedule", "jacobi", "--window", "4"]) == 0
    for a in sorted((tmp_path / "out/images").glob("*.png")):
        assert a.read_bytes() == (tmp_path / "jac/images" / a.name).read_bytes(), a.name
    jac = json.loads((tmp_path / "jac/results.json").read_text())["generation"]
    assert (jac["schedule"], jac["window"], jac["images"]) == ("jacobi", 4, 4)
    assert jac["forward_passes"] <= seq["forward_passes"]
    # bad input names the problem, no traceback
    assert main(["eval", "imgedit", "--edits", str(tmp_path / "nope.json"), "--images", str(images), "--prompts",
                 str(imgedit_prompts), "--out", str(tmp_path / "o2"), "--no-judge"]) == 2
    assert "nope.json: ImgEdit edits file not found" in capsys.readouterr().err


# ---- ImgEdit-Bench UGE ------------------------------------------------------------------------
# The official UGE prompt lives in the official script, so users save it to a file; the tests write
# a prompt of their own in the same form (an <edit_prompt> placeholder, [text, original, edited]).
UGE_PROMPT = "Judge this edit from 1 to 5 and end with a line 'Score: n'.\nInstruction: <edit_prompt>.\n"


def write_uge(root: Path) -> tuple[Path, Path, Path]:
    edits = {"1": {"id": "000001.jpg", "prompt": "Remove the lemon and add a cherry (one)."},
             "2": {"id": "000002.jpg", "prompt": "Make the left door red (two)."},
             "3": {"id": "000003.jpg", "prompt": "Swap the two cups (three)."},
             "4": {"id": "000004.jpg", "prompt": "Turn the sign into a clock (four)."}}
    (root / "images").mkdir(parents=True)
    for rec in edits.values():
        Image.new("RGB", (40, 30), (90, 90, 200)).save(root / "images" / rec["id"])
    (root / "UGE_edit.json").write_text(json.dumps(edits))
    (root / "uge_prompt.txt").write_text(UGE_PROMPT)
    return root / "UGE_edit.json", root / "images", root / "uge_prompt.txt"


def test_imgedit_uge_scores_like_the_official_script(tmp_path, server):
    from earl.benchmarks import imgedit_uge

    edits, images, prompt_file = write_uge(tmp_path / "uge")
    items = imgedit_uge.load_uge(edits, images)
    judge = ScriptedJudge({
        "(one)": "Brief reasoning: clean removal, cherry added.\nScore: 4",
        "(two)": "Brief reasoning: red: but a little\nAdherence: 5\nNaturalness: 4",  # 3 parts at ': ': not a score
        "(three)": "Brief reasoning: the cups are swapped, 3/5 overall",  # no score line: a counted failure
        "(four)": "Brief reasoning: no clock.\nScore: 7"})  # outside 1-5: earl's one deviation, a failure
    out = tmp_path / "out"
    res = run_benchmark(imgedit_uge, items, imgedit_uge.judge_specs(imgedit_uge.load_prompt(prompt_file)), out,
                        edit=edit_by_word, backend=server(judge), opts=OPTS, progress=False)
    req = next(r for r in judge.requests if "(one)" in text_of(r))
    assert text_of(req) == UGE_PROMPT.replace("<edit_prompt>", "Remove the lemon and add a cherry (one).")
    assert len(images_of(req)) == 2
    # sample = round(mean of its score lines, 2); suite = round(mean of samples, 2)
    assert [s["score"] for s in res["samples"]] == [4.0, 4.5, None, None]
    assert res["overall"] == {"score": round((4.0 + 4.5) / 2, 2), "n": 4, "judged": 2, "failed": 2, "missing": 0}
    assert "| 4.25 |" in (out / "results.md").read_text() and "failed 2" in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().splitlines()[1].startswith("UGE,4,2,2,0,4.25")


def test_imgedit_uge_reads_an_edit_list_in_the_published_shape_and_names_bad_inputs(tmp_path, capsys):
    from earl.benchmarks import imgedit_uge
    from earl.cli import main

    # UGE_edit.json's shape: {key: {id, prompt}}, no edit type; keys need not be in order
    published = {"3": {"id": "000303.jpg", "prompt": "Paint the kite yellow and remove its tail."},
                 "1": {"id": "000101.jpg", "prompt": "Move the mug to the left of the book."},
                 "2": {"id": "000202.jpg", "prompt": "Remove the bicycle."}}
    (tmp_path / "uge_edit.json").write_text(json.dumps(published, indent=4))
    (tmp_path / "img").mkdir()
    for rec in published.values():
        Image.new("RGB", (8, 8)).save(tmp_path / "img" / rec["id"])
    items = imgedit_uge.load_uge(tmp_path / "uge_edit.json", tmp_path / "img")
    assert {it.key: it.instruction for it in items} == {k: rec["prompt"] for k, rec in published.items()}
    assert {it.group for it in items} == {"uge"}
    assert imgedit_uge.parse_reply("Score: 4.5") is None  # the official reader takes digits only
    assert imgedit_uge.parse_reply("Score:4") is None and imgedit_uge.parse_reply("") is None
    edits, images, prompt_file = write_uge(tmp_path / "uge")
    prompt_file.write_text("Judge this edit.")
    with pytest.raises(DataError, match="<edit_prompt> placeholder"):
        imgedit_uge.load_prompt(prompt_file)
    assert main(["eval", "imgedit-uge", "--edits", str(edits), "--images", str(images), "--prompt",
                 str(tmp_path / "none.txt"), "--out", str(tmp_path / "o"), "--no-judge", "--no-generate"]) == 2
    assert "none.txt: UGE judge prompt not found" in capsys.readouterr().err


def test_cli_runs_the_agent_pipeline_through_imgedit(tmp_path, server, capsys, imgedit_prompts):
    """`earl eval imgedit --agent checkpoints/shapes-decomposer`: the bundled decomposer plans each item, the
    bundled editor carries the plan out step by step, and each item's result row records the plan it ran."""
    from earl.agents.decomposer import DecomposeRequest
    from earl.agents.unified import UnifiedDecomposer
    from earl.cli import main
    from earl.io import load_image
    from earl.shapes.dataset import generate_samples
    from earl.shapes.render import render

    root = Path(__file__).resolve().parents[2]
    samples = list(generate_samples("complex", 3, seed=12345))
    (tmp_path / "bench/images").mkdir(parents=True)
    edits = {}
    for i, s in enumerate(samples):
        render(s.source_scene).save(tmp_path / f"bench/images/{i}.png")
        edits[str(i)] = {"id": f"{i}.png", "prompt": s.instruction, "edit_type": "replace"}
    (tmp_path / "bench/basic_edit.json").write_text(json.dumps(edits))
    reply = "Brief reasoning: ok.\nPrompt Compliance: 3\nVisual Naturalness: 4\nPhysical & Detail Integrity: 5"
    backend = server(lambda requests: [Completion(reply, 10, 5, "stop") for _ in requests])
    out = tmp_path / "out"
    argv = ["eval", "imgedit", "--edits", str(tmp_path / "bench/basic_edit.json"), "--images",
            str(tmp_path / "bench/images"), "--prompts", str(imgedit_prompts),
            "--agent", str(root / "checkpoints/shapes-decomposer"), "--model", str(root / "checkpoints/shapes-editor"),
            "--out", str(out), "--judge-base-url", backend.base_url, "--retries", "0"]
    assert main(argv) == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["overall"]["score"] == 4.0 and len(res["samples"]) == 3
    # the plans are the bundled decomposer's greedy plans of these very images, and each step was one editor call
    decomposer = UnifiedDecomposer.from_pretrained(root / "checkpoints/shapes-decomposer")
    plans = decomposer.decompose([DecomposeRequest(load_image(tmp_path / f"bench/images/{i}.png"), s.instruction)
                                  for i, s in enumerate(samples)])
    for row, d in zip(res["samples"], plans):
        assert d.plan is not None
        assert row["agent"]["plan"] == [s.text() for s in d.plan.steps], row
        assert row["agent"]["failure"] is None and row["agent"]["fallback"] is False
        assert row["agent"]["editor_calls"] == row["agent"]["n_steps"] == len(d.plan)
        assert json.loads((out / "agent" / f"{row['key']}.json").read_text())["plan"] == d.plan.to_dict()
    n_steps = sum(len(d.plan) for d in plans)
    assert n_steps > 3  # at least one multi-step plan: the editor alone would have made 3 calls
    assert res["agent"] == {"edits": 3, "plan_failures": {}, "fallbacks": 0, "steps_per_edit": n_steps / 3,
                            "editor_calls_per_edit": n_steps / 3, "check_calls_per_edit": 0.0, "plans_tried_per_edit": 1.0,
                            "repairs_kept_per_edit": 0.0}
    assert "agent: 3 edits" in capsys.readouterr().out
