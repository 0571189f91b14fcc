"""GCPO end to end: a few steps on a tiny LM raise the pairwise accuracy on a learnable synthetic
preference; the trainer updates a tiny reward model and saves it; a failing parser gives no update."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from earl.train.gcpo import GCPOSection, gcpo_step

PAD, EOS, BOS, A, B, D0 = 0, 1, 2, 3, 4, 5  # digits 0-9 are tokens 5..14


def tiny_lm():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, pad_token_id=PAD,
                                        bos_token_id=BOS, eos_token_id=EOS))


def parse(ids, k):
    """A 'trace' starts with one digit: its score (anything else does not parse)."""
    return float(ids[0] - D0) if ids and D0 <= ids[0] < D0 + 10 else None


@torch.no_grad()
def p_ranked_right(model) -> float:
    """P(score given prompt A > score given prompt B) under the model's first-token distributions."""
    def digits(tok):
        logits = model(input_ids=torch.tensor([[BOS, tok]])).logits[0, -1, D0 : D0 + 10]
        return torch.softmax(logits, -1)
    pa, pb = digits(A), digits(B)
    return float(sum(pa[i] * pb[:i].sum() for i in range(10)))


def test_gcpo_steps_learn_a_synthetic_preference():
    model = tiny_lm()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    g = GCPOSection(traces=8, pairs_per_step=2, max_new_tokens=1)
    before = p_ranked_right(model)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss, stats = gcpo_step(model, None, [[BOS, A]] * 2, [[BOS, B]] * 2, parse, g, EOS, PAD, gen)
        if loss is not None:
            loss.backward()
            opt.step()
            opt.zero_grad()
    after = p_ranked_right(model)
    assert after > before + 0.2, (before, after)


def test_no_parseable_trace_no_update():
    model = tiny_lm()
    loss, stats = gcpo_step(model, None, [[BOS, A]], [[BOS, B]], lambda ids, k: None,
                            GCPOSection(traces=4, max_new_tokens=2), EOS, PAD, torch.Generator().manual_seed(0))
    assert loss is None and stats["gcpo/valid"] == 0.0


def test_watched_logits_are_the_logits_each_word_was_sampled_from():
    """`sample_traces_watching` keeps, per sampled step, the raw logits of the watched tokens: the
    same numbers a full forward over prompt + completion gives at those positions."""
    from earl.generate import sample_traces_watching

    model = tiny_lm().eval()
    watch = list(range(D0, D0 + 10))
    comps, watched = sample_traces_watching(model, [[BOS, A], [BOS, B, A]], 3, 1.0, 4, EOS, PAD,
                                            torch.Generator().manual_seed(0), watch)
    assert len(comps) == len(watched) == 6
    for r, (c, w) in enumerate(zip(comps, watched)):
        prompt = [[BOS, A], [BOS, B, A]][r // 3]
        assert w.shape == (len(c), 10)
        with torch.no_grad():
            full = model(input_ids=torch.tensor([prompt + c])).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(c)]
        torch.testing.assert_close(w, full[:, watch], rtol=1e-4, atol=1e-4)


def test_with_watch_the_parser_gets_each_traces_watched_logits():
    """τ from the watched logits: here the first step's logit of digit 0, the same for every trace of a
    prompt, so the pairs' order is that of the two prompts' logits (and all-win pairs give no loss)."""
    model = tiny_lm()
    with torch.no_grad():
        first = {t: float(model(input_ids=torch.tensor([[BOS, t]])).logits[0, -1, D0]) for t in (A, B)}

    def from_logit(ids, k, watched):
        assert watched.shape == (len(ids), 2)
        return float(watched[0, 0])

    loss, stats = gcpo_step(model, None, [[BOS, A]], [[BOS, B]], from_logit, GCPOSection(traces=3, max_new_tokens=2),
                            EOS, PAD, torch.Generator().manual_seed(0), watch=[D0, D0 + 1])
    assert stats["gcpo/valid"] == 1.0
    assert stats["gcpo/pair_correct"] == float(first[A] > first[B])
    assert loss is None and stats["gcpo/nonzero_adv"] == 0.0


def test_trace_score_reads_the_written_the_expected_score_or_the_points():
    """A sampled trace's τ: None unless it parses; the written 7, or with watched logits the
    expectation over the words 0-10 at the step after `<score>`, or 10 x the mean P(yes) at its
    verdict words (not at the other words, whose logits here would say otherwise)."""
    import math
    import types

    from earl.rrm.readouts import score_words, trace_score, watched_words
    from earl.text import build_word_tokenizer

    tok = build_word_tokenizer(["1. yes - ok 2. no - gone <score>7</score>"])
    layout = types.SimpleNamespace(encode_text=lambda t: tok(t, add_special_tokens=False)["input_ids"])
    ids = layout.encode_text("1. yes - ok 2. no - gone <score> 7 </score>")
    watched = torch.full((len(ids), 11), -1e9)
    at = len(layout.encode_text("1. yes - ok 2. no - gone <score>"))
    watched[at, 4] = watched[at, 8] = 0.0  # half 4, half 8
    assert trace_score(layout, tok, ids, 2) == 7.0
    assert trace_score(layout, tok, ids, 2, watched) == 7.0  # the written score unless told otherwise
    assert trace_score(layout, tok, ids, 2, watched, "expected") == pytest.approx(6.0)
    assert trace_score(layout, tok, ids, 3, watched, "expected") is None  # three points asked, two answered
    assert len(score_words(layout)) == 11 and score_words(layout)[7] == ids[at]
    assert watched_words(layout, "expected") == score_words(layout) and watched_words(layout, "written") is None

    yes, no = watched_words(layout, "points")
    assert (yes, no) == (ids[2], ids[7])  # `1 . yes - ok 2 . no`
    yes_no = torch.zeros((len(ids), 2))
    yes_no[:, 0] = 50.0  # sure of "yes" everywhere but at the verdicts
    yes_no[2] = torch.tensor([math.log(3.0), 0.0])  # P(yes) 0.75 at the first verdict
    yes_no[7] = torch.tensor([0.0, math.log(3.0)])  # 0.25 at the second
    assert trace_score(layout, tok, ids, 2, yes_no, "points") == pytest.approx(5.0)
    assert trace_score(layout, tok, ids, 3, yes_no, "points") is None
    with pytest.raises(ValueError, match="watched logits"):
        trace_score(layout, tok, ids, 2, None, "points")


def test_gcpo_score_must_be_written_expected_or_points():
    with pytest.raises(ValueError, match="gcpo.score"):
        GCPOSection(score="mean")


@pytest.mark.parametrize("score", ["written", "expected", "points"])
def test_rrm_gcpo_trainer_updates_and_saves(tmp_path, tiny_editor, score, monkeypatch):
    """The trainer end to end with each readout. A tiny random model writes no verdict the real reader
    parses, so the trainer's trace scorer is replaced by one that scores a step's traces (preferred
    w1, w2, then rejected l1, l2) 1, 4, 2, 3: w2 outranks both rejected traces and w1 neither, so every
    step has signal, and the saved weights must differ from the initial ones."""
    from safetensors.torch import load_file

    from earl.config import load_config
    from earl.train import gcpo as trainer
    from earl.train.gcpo import GCPORecipe, train_rrm_gcpo

    calls = []

    def score_in_order(layout, tok, ids, n_points, watched, kind):
        calls.append((kind, watched is not None))
        return (1.0, 4.0, 2.0, 3.0)[(len(calls) - 1) % 4]

    monkeypatch.setattr(trainer, "trace_score", score_in_order)
    tiny_editor.save_pretrained(tmp_path / "rrm")
    root = Path(__file__).resolve().parents[2]
    over = {"out_dir": tmp_path / "run", "init_from": tmp_path / "rrm", "data.samples": 2, "data.eval_samples": 1,
            "gcpo.traces": 2, "gcpo.pairs_per_step": 1, "gcpo.max_new_tokens": 4, "run.steps": 2,
            "run.eval_every": 2, "run.save_every": 2, "gcpo.score": score}
    final = train_rrm_gcpo(load_config(GCPORecipe, root / "recipes/shapes/rrm_gcpo.yaml",
                                       [f"{k}={v}" for k, v in over.items()]), progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "gcpo/valid" in r]
    assert len(steps) == 2  # every step logged, each with a parsed score for all 2 x 2 traces and an update
    assert all(r["gcpo/valid"] == 1.0 and r["update/skipped"] == 0.0 for r in steps), steps
    # each trace scored with the recipe's readout; the expected readouts get the watched logits
    assert set(calls) == {(score, score != "written")} and len(calls) >= 2 * 4
    assert final["step"] == 2 and (tmp_path / "run/model/editor.json").is_file()
    start = load_file(tmp_path / "rrm/backbone/model.safetensors")
    trained = load_file(tmp_path / "run/model/backbone/model.safetensors")
    assert start.keys() == trained.keys()
    assert any(not torch.equal(start[k], trained[k]) for k in start)


@pytest.mark.slow
def test_scalar_bradley_terry_model_learns_saves_and_rewards(tmp_path, vq_tokenizer):
    from earl.config import load_config
    from earl.rrm.scalar import ScalarRewardModel, scalar_scorer
    from earl.train.scalar_rm import ScalarRecipe, train_scalar_rm
    from earl.verify.base import EditRequest, build_verifier

    vq_tokenizer.save_pretrained(tmp_path / "tok")
    root = Path(__file__).resolve().parents[2]
    over = {"out_dir": tmp_path / "rm", "size": "shapes-test", "image_tokenizer": tmp_path / "tok", "image_size": 32,
            "data.samples": 6, "data.eval_samples": 2, "run.steps": 25, "run.batch_size": 8, "run.log_every": 1,
            "run.eval_every": 25, "optim.lr": 3e-3, "optim.warmup_steps": 1}
    final = train_scalar_rm(load_config(ScalarRecipe, root / "recipes/shapes/rm_scalar.yaml",
                                        [f"{k}={v}" for k, v in over.items()]), progress=False)
    rows = [json.loads(x) for x in (tmp_path / "rm/metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert sum(r["train/loss"] for r in rows[-5:]) < sum(r["train/loss"] for r in rows[:5])  # the BT loss fell
    assert 0.0 <= final["eval/pairwise_accuracy"] <= 1.0
    m = ScalarRewardModel.load(tmp_path / "rm/model")
    e = {"instruction": "make it red", "source_codes": torch.zeros(4, 4, dtype=torch.long),
         "codes": torch.ones(4, 4, dtype=torch.long)}
    assert scalar_scorer(m)([e]) == scalar_scorer(ScalarRewardModel.load(tmp_path / "rm/model"))([e])
    from PIL import Image

    (r,) = build_verifier("scalar", model_path=str(tmp_path / "rm/model")).score(
        [EditRequest(Image.new("RGB", (32, 32)), "make it red", Image.new("RGB", (32, 32), (200, 0, 0)), {})])
    assert 0.0 < r.reward < 1.0 and not r.failed


def test_scalar_recipe_with_a_missing_tokenizer_names_the_field(tmp_path):
    from earl.cli import main

    assert main(["train", "rm-scalar", str(Path(__file__).resolve().parents[2] / "recipes/shapes/rm_scalar.yaml"),
                 f"image_tokenizer={tmp_path / 'nope'}", f"out_dir={tmp_path / 'rm'}"]) == 2
    assert not (tmp_path / "rm" / "model").exists()


def test_scalar_model_can_start_from_an_editor(tmp_path, tiny_editor):
    from earl.config import load_config
    from earl.rrm.scalar import ScalarRewardModel
    from earl.train.scalar_rm import ScalarRecipe, train_scalar_rm

    tiny_editor.save_pretrained(tmp_path / "editor")
    root = Path(__file__).resolve().parents[2]
    over = {"out_dir": tmp_path / "rm", "init_from": tmp_path / "editor", "image_tokenizer": tmp_path / "nowhere",
            "data.samples": 3, "data.eval_samples": 1, "run.steps": 2, "run.batch_size": 4, "run.eval_every": 2}
    train_scalar_rm(load_config(ScalarRecipe, root / "recipes/shapes/rm_scalar_from_editor.yaml",
                                [f"{k}={v}" for k, v in over.items()]), progress=False)
    m = ScalarRewardModel.load(tmp_path / "rm/model")
    assert "judge" in m.editor.text_tokenizer.get_vocab() and m.editor.config.image_size == 32
    assert m.editor.backbone.config.hidden_size == tiny_editor.backbone.config.hidden_size


def test_sequence_logprobs_are_each_completion_token_s_under_a_plain_forward():
    """Left-padded rows of different prompt and completion lengths, logits for the last T + 1
    positions only: each completion token's log-prob is the one an unpadded forward of its row gives."""
    from earl.rl.logprobs import sequence_logprobs

    model = tiny_lm().eval()
    seqs = [[BOS, A, D0 + 3, D0 + 1], [BOS, B, A, B, D0 + 7], [BOS, A, B, D0, D0 + 2, EOS]]
    starts = [2, 4, 3]
    with torch.no_grad():
        got = sequence_logprobs(model, seqs, starts, PAD, temperature=0.7)
        assert got.shape == (3, 3)
        for i, (s, st) in enumerate(zip(seqs, starts)):
            logp = torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0] / 0.7, -1)
            want = torch.stack([logp[t - 1, s[t]] for t in range(st, len(s))])
            torch.testing.assert_close(got[i, : len(s) - st], want, rtol=1e-5, atol=1e-5)
            assert torch.equal(got[i, len(s) - st:], torch.zeros(3 - (len(s) - st)))


def test_the_update_in_micro_batches_is_the_update_in_one_piece():
    """Same samples (same seed), the loss back-propagated in uneven micro-batches of 3 traces or as one
    differentiable loss over all 16: the same loss, gradients and update statistics, with a KL term
    and with some traces that do not parse (no loss) and some that stop early."""
    def run(micro_batch, chunked):
        model, ref = tiny_lm(), tiny_lm().requires_grad_(False)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(0.05 * torch.randn_like(p))
        g = GCPOSection(traces=4, max_new_tokens=3, beta=0.3, micro_batch=micro_batch)
        calls = []

        def backward(loss, last):
            calls.append(last)
            loss.backward()

        loss, stats = gcpo_step(model, ref, [[BOS, A], [BOS, B, A]], [[BOS, B], [BOS, A, B]], parse, g, EOS, PAD,
                                torch.Generator().manual_seed(4), backward=backward if chunked else None)
        if not chunked:
            loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        return float(loss.detach()), stats, grads, calls

    whole, stats_w, grads_w, calls_w = run(16, chunked=False)
    parts, stats_p, grads_p, calls_p = run(3, chunked=True)
    assert 0 < stats_w["gcpo/valid"] < 1 and calls_w == [] and calls_p[-1] and not any(calls_p[:-1])
    assert len(calls_p) >= 4  # 16 traces in 6 micro-batches, less any without a parseable trace
    assert abs(whole - parts) < 1e-6
    torch.testing.assert_close(grads_p, grads_w, rtol=1e-5, atol=1e-7)
    assert stats_p.keys() == stats_w.keys() and all(abs(stats_p[k] - stats_w[k]) < 1e-6 for k in stats_w)


def test_micro_batch_is_validated(tmp_path):
    from earl.config import load_config
    from earl.errors import ConfigError
    from earl.train.gcpo import GCPORecipe, train_rrm_gcpo

    with pytest.raises(ValueError, match="micro_batch"):
        GCPOSection(micro_batch=0)
    (tmp_path / "rrm").mkdir()
    root = Path(__file__).resolve().parents[2]
    over = {"out_dir": tmp_path / "run", "init_from": tmp_path / "rrm", "gcpo.micro_batch": 8,
            "run.deepspeed": root / "recipes/deepspeed/zero2.json"}
    cfg = load_config(GCPORecipe, root / "recipes/shapes/rrm_gcpo.yaml", [f"{k}={v}" for k, v in over.items()])
    with pytest.raises(ConfigError, match="micro_batch: 8 splits a step's 32 traces"):
        train_rrm_gcpo(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything is written
