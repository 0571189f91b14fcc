"""The `earl` command end to end: data -> judge -> edit -> eval, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from earl.errors import EarlError


def earl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "earl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.mark.slow
def test_data_judge_edit_eval(tmp_path, tiny_editor):
    data = tmp_path / "data"
    r = earl("data", "shapes", "--out", data, "--n", 6, "--split", "complex", "--part", "test")
    assert r.returncode == 0, r.stderr
    # judge a folder where the edited images are the targets themselves: every principle passes
    from earl.io import save_png
    from earl.shapes.dataset import load_dataset

    ds = load_dataset(data)
    for row in ds:
        save_png(row["target_image"], tmp_path / "imgs" / f"{row['id']}.png")
    r = earl("judge", "shapes", "--data", data, "--images", tmp_path / "imgs", "--out", tmp_path / "res.json")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["overall"]["success"] == 1.0 and res["overall"]["n"] == 6

    # edit and eval with a tiny (untrained) editor saved to disk
    tiny_editor.save_pretrained(tmp_path / "model")
    src = tmp_path / "in.png"
    ds[0]["source_image"].resize((50, 40)).save(src)
    r = earl("edit", "--model", tmp_path / "model", "--image", src, "--instruction", ds[0]["instruction"],
             "--out", tmp_path / "out.png")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "out.png").size == (50, 40)
    r = earl("eval", "shapes", "--model", tmp_path / "model", "--data", data, "--out", tmp_path / "eval",
             "--decoder", "compiled")
    assert r.returncode == 2 and "'compiled'" in r.stderr and "needs a CUDA device" in r.stderr, r.stderr
    assert not (tmp_path / "eval" / "images").exists() or not any((tmp_path / "eval" / "images").iterdir())
    r = earl("eval", "shapes", "--model", tmp_path / "model", "--data", data, "--out", tmp_path / "eval",
             "--decoder", "static")
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert out["overall"]["n"] == 6 and (tmp_path / "eval" / "grid.png").is_file()
    assert len(list((tmp_path / "eval" / "images").glob("*.png"))) == 6
    # resumable: a second run generates nothing new and gives the same numbers
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "eval" / "images").glob("*.png")}
    r = earl("eval", "shapes", "--model", tmp_path / "model", "--data", data, "--out", tmp_path / "eval")
    assert r.returncode == 0
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "eval" / "images").glob("*.png")}


@pytest.mark.parametrize(
    "args,message",
    [
        (["edit", "--model", "{tmp}/nope", "--image", "x.png", "--instruction", "a", "--out", "o.png"],
         "model directory not found"),
        (["judge", "shapes", "--data", "{tmp}/nodata", "--images", "{tmp}", "--out", "{tmp}/r.json"], "nodata"),
        (["train", "sft", "{tmp}/missing.yaml"], "recipe file not found"),
        (["train", "sft", "recipes/shapes/sft.yaml", "run.steps=many"], "run.steps"),
    ],
)
@pytest.mark.slow
def test_bad_input_gives_one_line_errors(tmp_path, args, message):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = earl(*[a.replace("{tmp}", str(tmp_path)) for a in args], cwd=root)
    assert r.returncode == 2
    assert r.stderr.startswith("earl: error:") and message in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "out,message",
    [
        ("{tmp}", "is a directory"),
        ("{tmp}/edited", "no image extension"),
        ("{tmp}/edited.xyz", "unknown image extension '.xyz'"),
        ("{tmp}/file.txt/edited.png", "not a directory"),
    ],
)
def test_edit_bad_out_is_one_line_error_before_the_model_loads(tmp_path, capsys, out, message):
    """`--model` does not exist either: the `--out` error comes first, so it is checked before loading."""
    from earl.cli import main

    (tmp_path / "file.txt").write_text("x")
    code = main(["edit", "--model", str(tmp_path / "nope"), "--image", "x.png", "--instruction", "a",
                 "--out", out.replace("{tmp}", str(tmp_path))])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("earl: error: --out ") and message in err and err.count("\n") == 1, err


def test_edit_unwritable_out_directory(tmp_path, capsys, monkeypatch):
    import os

    from earl.cli import main

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: the permission check is what is tested then
            access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else access(p, mode))
        code = main(["edit", "--model", str(tmp_path / "nope"), "--image", "x.png", "--instruction", "a",
                     "--out", str(locked / "sub" / "o.png")])
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("earl: error: --out ") and "not writable" in err, err


def test_edit_writes_the_format_of_the_extension(tmp_path, capsys):
    from earl.cli import main

    src = tmp_path / "in.png"
    Image.new("RGB", (64, 64), "white").save(src)
    code = main(["edit", "--image", str(src), "--instruction", "Add a red circle.", "--out", str(tmp_path / "o.jpg")])
    assert code == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "o.jpg").format == "JPEG"


def test_the_command_loads_no_heavy_package():
    """`earl --help` builds every subcommand's flags; the handlers load torch and the rest when they run."""
    code = ("import sys\nfrom earl.cli import build_parser\nbuild_parser()\n"
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'pyarrow', 'trl', 'fastapi', 'gradio', "
            "'matplotlib', 'triton') if m in sys.modules]\nassert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_agent_flags_are_the_agent_options():
    """One flag per `AgentOptions` field, with the field's default; values reach the options unchanged."""
    from dataclasses import fields

    from earl.agents.options import AgentOptions
    from earl.cli import build_parser
    from earl.cli.agent import agent_options

    parser = build_parser()
    for command in (["agent", "edit", "--image", "i.png", "--instruction", "a", "--out", "o.png"],
                    ["eval", "shapes", "--data", "d", "--out", "o"]):
        assert agent_options(parser.parse_args(command)) == AgentOptions()
        args = parser.parse_args([*command, "--check", "rrm", "--attempts", "2", "--step-temperature", "0.5",
                                  "--rrm", "my-rrm", "--rrm-threshold", "0.7", "--plan-votes", "8",
                                  "--plan-temperature", "0.8", "--plans", "3", "--plan-judge", "oracle",
                                  "--sequencer", "dependency", "--fallback", "--schedule", "jacobi", "--window", "4"])
        picked = AgentOptions(check="rrm", attempts=2, step_temperature=0.5, rrm="my-rrm", rrm_threshold=0.7,
                              plan_votes=8, plan_temperature=0.8, plans=3, plan_judge="oracle",
                              sequencer="dependency", fallback=True, schedule="jacobi", window=4)
        assert agent_options(args) == picked
        chat = parser.parse_args([*command, "--sequencer", "chat", "--sequencer-base-url", "http://127.0.0.1:1/v1",
                                  "--sequencer-model", "m"])
        assert agent_options(chat) == AgentOptions(sequencer="chat", sequencer_base_url="http://127.0.0.1:1/v1",
                                                   sequencer_model="m")
        exercised = {f.name for f in fields(AgentOptions) if getattr(picked, f.name) != f.default}
        learned = parser.parse_args([*command, "--check", "learned", "--writer", "my-writer"])
        assert agent_options(learned) == AgentOptions(check="learned", writer="my-writer")
        exercised |= {"repairs", "verifier", "plan_vote_by"}
        one_flag = parser.parse_args([*command, "--verifier", "learned", "--repairs", "2"])
        assert agent_options(one_flag) == AgentOptions(check="learned", plan_judge="learned", writer="plan",
                                                       plan_votes=16, plan_vote_by="outcome", plans=2, attempts=2,
                                                       repairs=2, verifier="learned",
                                                       rrm="checkpoints/shapes-rrm-refresh")
        with pytest.raises(EarlError, match="reads no answer"):
            agent_options(parser.parse_args([*command, "--verifier", "learned", "--check", "oracle"]))
        with pytest.raises(EarlError, match="repairs need a verifier"):
            agent_options(parser.parse_args([*command, "--repairs", "1"]))
        exercised |= {"sequencer_base_url", "sequencer_model", "writer"}
        assert exercised == {f.name for f in fields(AgentOptions)}  # every flag was exercised
    with pytest.raises(SystemExit):  # a choice outside the field's choices is refused by the parser
        parser.parse_args(["eval", "shapes", "--data", "d", "--out", "o", "--check", "maybe"])


def test_a_bad_agent_option_combination_is_a_usage_error(tmp_path, capsys):
    from earl.cli import main

    Image.new("RGB", (64, 64), "white").save(tmp_path / "in.png")
    code = main(["agent", "edit", "--image", str(tmp_path / "in.png"), "--instruction", "a",
                 "--out", str(tmp_path / "o.png"), "--plans", "3"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("earl: error: agent options: ") and "--plan-judge" in err, err


def test_the_schedules_the_flags_offer_are_the_samplers():
    from earl.agents.options import SCHEDULES
    from earl.generate import SCHEDULES as SAMPLER_SCHEDULES

    assert SCHEDULES == SAMPLER_SCHEDULES


EDIT_COMMANDS = {
    "edit": ["edit", "--image", "i.png", "--instruction", "a", "--out", "{tmp}/o.png"],
    "eval shapes": ["eval", "shapes", "--data", "{tmp}/d", "--out", "{tmp}/o"],
    "eval shapes --agent": ["eval", "shapes", "--agent", "--data", "{tmp}/d", "--out", "{tmp}/o"],
    "eval gedit": ["eval", "gedit", "--data", "{tmp}/d", "--prompts", "{tmp}/p", "--out", "{tmp}/o"],
    "eval imgedit": ["eval", "imgedit", "--edits", "{tmp}/e.json", "--images", "{tmp}", "--prompts", "{tmp}/p.json",
                     "--out", "{tmp}/o"],
    "agent edit": ["agent", "edit", "--image", "i.png", "--instruction", "a", "--out", "{tmp}/o.png"],
}


@pytest.mark.parametrize("command", list(EDIT_COMMANDS))
@pytest.mark.parametrize("flags,message", [
    (["--schedule", "jacobi"], "--schedule jacobi needs --window N"),
    (["--schedule", "jacobi", "--window", "0"], "--window 0: expected an integer >= 1"),
    (["--window", "4"], "--window 4 applies to --schedule jacobi"),
])
def test_bad_schedule_flags_are_usage_errors_naming_the_flag(tmp_path, capsys, command, flags, message):
    """Checked before anything loads (no model, data or image is read: none of them exists here)."""
    from earl.cli import main

    argv = [a.replace("{tmp}", str(tmp_path)) for a in EDIT_COMMANDS[command]]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("earl: error: ") and message in err and "Traceback" not in err, err
    with pytest.raises(SystemExit):  # an unknown schedule is refused by the parser, naming the flag
        main([*argv, "--schedule", "rows"])
    assert "--schedule: invalid choice: 'rows'" in capsys.readouterr().err


def test_every_benchmark_row_is_an_eval_subcommand_the_runner_can_score():
    from earl.cli import build_parser
    from earl.cli.benchmarks import BENCHMARKS

    parser = build_parser()
    for name, bench in BENCHMARKS.items():
        for attr in ("score", "format_table", "csv_rows"):
            assert callable(getattr(bench.module, attr)), (name, attr)
        required = [a for flag, kwargs in bench.flags if kwargs.get("required") for a in (flag, "x")]
        args = parser.parse_args(["eval", name, *required, "--out", "o"])
        assert args.what == name and args.out == "o"
