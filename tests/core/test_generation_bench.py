"""`earl bench generate` runs end to end on a tiny model; timings are reported, never asserted."""

import json

from earl.generation_bench import METHODS, bench_generate, format_table


def test_bench_generate_structure_and_well_formed_grids(tmp_path):
    res = bench_generate(size="shapes-test", image_size=32, batch_sizes=(2,), repeats=1)
    assert res["config"]["grid"] == [4, 4] and res["config"]["guidance_scale"] == 3.0
    (row,) = res["results"]
    assert row["batch_size"] == 2
    for name in METHODS:
        m = row[name]
        assert m["well_formed"], name  # every output parsed as a 4x4 grid by layout.parse_image
        assert m["tokens_per_s"] > 0 and m["ms_per_image"] > 0 and len(m["seconds_all"]) == 1
    assert row["speedup_cfg"] > 0 and row["speedup_cfg_static"] > 0 and row["speedup_cfg_hf"] > 0
    assert row["matmul_floor"]["seconds"] > 0 and row["ceiling_vs_transformers"] > 0
    assert res["floor"]["ms_per_decode_step"] is None  # no bandwidth floor without a GPU
    assert res["config"]["decoders"] == {"earl_cfg": "lean", "earl_cfg_hf": "hf", "earl_cfg_static": "static"}
    table = format_table(res)
    assert "| 2 |" in table
    floor_row = next(line for line in table.splitlines()[table.splitlines().index(
        next(x for x in table.splitlines() if "time over the matmul floor" in x)):] if line.startswith("| 2 |"))
    ratios = [f"{row[k]['seconds'] / row['matmul_floor']['seconds']:.2f}x"
              for k in ("earl_cfg", "earl_cfg_hf", "earl_cfg_static", "transformers_cfg")]
    assert floor_row.split(" | ")[2:] == [*ratios[:-1], ratios[-1] + " |"]  # each path's ratio to the floor
    json.dumps(res)  # JSON-serialisable as written by --out


def test_transformers_path_does_the_same_job_greedy_codes_match_earl():
    """At temperature 0, transformers' CFG (log-softmax mix + grid mask) picks earl's codes exactly."""
    import torch

    from earl.generation_bench import INSTRUCTIONS, build_bench_model, parse_grids, run_earl, run_transformers

    backbone, layout, grid = build_bench_model("shapes-test", 32)
    assert grid == (4, 4)
    src = torch.randint(0, layout.vocab.codebook_size, (3, 4, 4), generator=torch.Generator().manual_seed(0))
    ins = INSTRUCTIONS[1:4]  # different lengths: the conditional prompts are left-padded
    theirs = parse_grids(layout, run_transformers(backbone, layout, ins, src, 3.0, seed=0, greedy=True), 4, 4)
    for decoder in ("auto", "hf", "static", "lean"):
        ours = run_earl(backbone, layout, ins, src, 3.0, generator=None, temperature=0.0, decoder=decoder).completions
        assert torch.equal(parse_grids(layout, ours, 4, 4), theirs), decoder


def test_the_matmul_floor_runs_the_feeds_the_sampler_runs(monkeypatch):
    """The floor's shapes are the sampler's: the same tokens per forward after the prefill."""
    import torch

    from earl.generation_bench import INSTRUCTIONS, build_bench_model, feed_sizes, run_earl
    from earl.lean import LeanLlama

    backbone, layout, (h, w) = build_bench_model("shapes-test", 32)
    fed, forward = [], LeanLlama.forward
    monkeypatch.setattr(LeanLlama, "forward", lambda self, ids, *a: fed.append(ids.shape[1]) or forward(self, ids, *a))
    src = torch.zeros(2, h, w, dtype=torch.long)
    run_earl(backbone, layout, INSTRUCTIONS[:2], src, 3.0, generator=None, temperature=0.0)
    assert fed[1:] == feed_sizes(layout, h, w) and len(fed[1:]) == h * w


def test_emu3_8b_shape_is_emu3s():
    """The GPU benchmark's stand-in for Emu3-8B, built on the meta device (no memory): 8.49B parameters."""
    import torch

    from earl.generation_bench import build_bench_model

    backbone, layout, grid = build_bench_model("emu3-8b", 256, device="meta", dtype=torch.bfloat16)
    c = backbone.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (4096, 32, 32, 8)
    assert c.vocab_size == 184_622 and layout.vocab.codebook_size == 32_768 and grid == (32, 32)
    assert next(backbone.parameters()).dtype == torch.bfloat16
    assert abs(sum(p.numel() for p in backbone.parameters()) / 1e9 - 8.49) < 0.01


def test_bench_text_times_both_loops_on_equal_work(tmp_path):
    """`earl bench text`: the lean and Hugging Face loops write the same tokens (same seed), so the
    comparison is of equal work; timings are reported, never asserted."""
    from earl.cli import main
    from earl.generation_bench import TEXT_METHODS, bench_text, format_text_table

    res = bench_text(size="shapes-test", batch_size=3, prompt_len=12, new_tokens=9, prompts=2, traces=2, repeats=1)
    assert set(res["results"]) == set(TEXT_METHODS)
    assert res["same_output"] == {"greedy": True, "sampler": True}
    assert all(r["seconds"] > 0 for r in res["results"].values())
    assert "| GCPO sampler | 4 |" in format_text_table(res)
    out = tmp_path / "text.json"
    assert main(["bench", "text", "--size", "shapes-test", "--batch-size", "2", "--prompt-len", "8", "--new-tokens",
                 "4", "--prompts", "1", "--traces", "2", "--repeats", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["new_tokens"] == 4
