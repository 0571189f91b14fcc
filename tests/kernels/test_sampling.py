"""The fused CFG + top-k + sampling kernel against earl's PyTorch sampling step.

On a CPU under TRITON_INTERPRET=1; on a GPU (`recipes/gpu/checks.sh`) the kernel-level tests run compiled
there, the reference staying on the CPU."""

import pytest
import torch

from earl.generate import SamplingConfig, process_logits
from earl.kernels.sampling import cfg_sample

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference_logp(logits, n, col0, col1, cfg: SamplingConfig):
    """log-probs of every code under the distribution earl's PyTorch path samples from."""
    x = logits[:, col0:col1].cpu().double()
    if cfg.uses_cfg:
        x = x[n:2 * n] + cfg.guidance_scale * (x[:n] - x[n:2 * n])
    return torch.log_softmax(process_logits(x, cfg).double(), -1)


def make_logits(rows, vocab, dtype, seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g) * 3
    if ties:  # many equal values, so the k-th largest is shared
        x = (x * 2).round() / 2
    return x.to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("K,top_k,scale", [(37, 0, 1.0), (1000, 5, 3.0), (5000, 64, 2.5), (5000, 0, 4.0)])
def test_greedy_picks_the_argmax_with_its_log_prob(dtype, K, top_k, scale):
    n, col0 = 3, 11
    rows = 2 * n if scale != 1.0 else n
    logits = make_logits(rows, col0 + K + 7, dtype, seed=K + top_k)
    cfg = SamplingConfig(guidance_scale=scale, temperature=0.0, top_k=top_k)
    tok, lp = (t.cpu() for t in cfg_sample(logits, n, col0, col0 + K, scale, 0.0, top_k, seed=1))
    ref = reference_logp(logits, n, col0, col0 + K, cfg)
    assert torch.equal(tok, ref.argmax(-1))
    assert torch.allclose(lp.double(), ref.gather(1, tok[:, None]).squeeze(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.slow
def test_sampled_codes_stay_in_the_top_k_and_carry_their_log_prob(ties):
    """Every draw is among the codes PyTorch's top-k keeps (all values tied with the k-th too), and
    its log-prob is the reference's to 1e-5; different seeds give different draws."""
    n, K, k = 16, 300, 7
    logits = make_logits(2 * n, K, torch.float32, seed=5, ties=ties)
    cfg = SamplingConfig(guidance_scale=2.0, temperature=0.7, top_k=k)
    ref = reference_logp(logits, n, 0, K, cfg)
    tok, lp = (t.cpu() for t in cfg_sample(logits, n, 0, K, 2.0, 0.7, k, seed=123))
    assert torch.isfinite(ref.gather(1, tok[:, None])).all()  # inside the kept set
    assert torch.allclose(lp.double(), ref.gather(1, tok[:, None]).squeeze(1), atol=1e-5)
    kept = torch.isfinite(ref).sum(-1)
    assert (kept >= k).all() and (kept > k).any() == ties
    tok2, _ = cfg_sample(logits, n, 0, K, 2.0, 0.7, k, seed=124)
    assert not torch.equal(tok, tok2.cpu())


@pytest.mark.slow
def test_draws_follow_the_processed_distribution():
    """Chi-square over 600 draws from one distribution (CFG, temperature): below the 0.1% critical
    value, while a wrong temperature is rejected. (Top-k only restricts the support, checked above;
    without it each interpreted program is one pass, not 34.)"""
    n, K, k = 600, 6, 0
    cond, uncond = torch.randn(K, generator=torch.Generator().manual_seed(0)), torch.zeros(K)
    logits = torch.cat([cond.expand(n, K), uncond.expand(n, K)]).to(DEVICE)
    cfg = SamplingConfig(guidance_scale=1.5, temperature=1.3, top_k=k)
    probs = reference_logp(logits[[0, n]], 1, 0, K, cfg).exp()[0]
    tok = cfg_sample(logits, n, 0, K, 1.5, 1.3, k, seed=7)[0].cpu()
    counts = torch.bincount(tok, minlength=K).double()
    assert counts[probs == 0].sum() == 0
    keep = probs > 0

    def chi2(p):
        expected = n * p[keep]
        return ((counts[keep] - expected) ** 2 / expected).sum().item()

    assert chi2(probs) < 20.5  # 5 degrees of freedom: the 0.1% critical value
    colder = reference_logp(logits[[0, n]], 1, 0, K, SamplingConfig(guidance_scale=1.5, temperature=0.6,
                                                                      top_k=k)).exp()[0]
    assert chi2(colder) > 20.5


def test_bad_shapes_are_refused_with_the_reason():
    x = torch.zeros(4, 10, device=DEVICE)
    with pytest.raises(ValueError, match="unconditional twins"):
        cfg_sample(x, 3, 0, 10, guidance_scale=2.0)
    with pytest.raises(ValueError, match="code range"):
        cfg_sample(x, 2, 5, 12)
    with pytest.raises(ValueError, match="contiguous rows"):
        cfg_sample(x.t(), 2, 0, 4)


@pytest.fixture
def fused_on_cpu(monkeypatch):
    """The fused step as `sample_edits` uses it on a GPU, run here by Triton's interpreter."""
    import earl.generate.sampling as gen
    import earl.kernels.sampling as ks

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1])
        return cfg_sample(*args, **kwargs)

    monkeypatch.setattr(gen, "_use_fused_step", lambda device, cfg: cfg.fused_step and cfg.top_p == 1.0)
    monkeypatch.setattr(ks, "cfg_sample", counted)
    return calls


@pytest.mark.parametrize("scale,top_k", [(1.0, 0), (3.0, 5)])
@pytest.mark.slow
def test_sample_edits_with_the_fused_step_gives_the_same_greedy_edits(tiny_editor, fused_on_cpu, scale, top_k):
    from earl.generate import sample_edits

    codes = torch.randint(0, tiny_editor.image_tokenizer.codebook_size, (2, 4, 4),
                          generator=torch.Generator().manual_seed(0))
    ins = ["make the red circle blue", "remove the small triangle"]
    cfg = SamplingConfig(temperature=0.0, guidance_scale=scale, top_k=top_k)
    fused = sample_edits(tiny_editor.backbone, tiny_editor.layout, ins, codes, cfg)
    plain = sample_edits(tiny_editor.backbone, tiny_editor.layout, ins, codes,
                         SamplingConfig(temperature=0.0, guidance_scale=scale, top_k=top_k, fused_step=False))
    assert len(fused_on_cpu) == 16  # one kernel call per code of the 4 x 4 grid, none for the plain run
    assert torch.equal(fused.codes, plain.codes)
    torch.testing.assert_close(fused.logprobs, plain.logprobs, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_fused_sampled_edits_report_the_model_s_own_log_probs(tiny_editor, fused_on_cpu):
    """Sampled through the kernel, the returned log-probs are those a forward pass on the sampled
    sequence gives (what GRPO's ratio needs), and a seeded generator makes the draw repeatable."""
    from earl.generate import sample_edits
    from earl.rl.logprobs import policy_logprobs, rollout_from_generation

    codes = torch.randint(0, tiny_editor.image_tokenizer.codebook_size, (2, 4, 4),
                          generator=torch.Generator().manual_seed(1))
    ins = ["change the square to green", "make the red circle blue"]
    cfg = SamplingConfig(temperature=0.8)
    out = sample_edits(tiny_editor.backbone, tiny_editor.layout, ins, codes, cfg,
                       generator=torch.Generator().manual_seed(3))
    again = sample_edits(tiny_editor.backbone, tiny_editor.layout, ins, codes, cfg,
                         generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        recomputed = policy_logprobs(tiny_editor.backbone, tiny_editor.layout,
                                     rollout_from_generation(ins, codes, out, tiny_editor.layout), cfg)
    torch.testing.assert_close(recomputed, out.logprobs, atol=1e-4, rtol=1e-4)
    assert torch.equal(out.codes, again.codes)


@pytest.mark.slow
def test_per_row_generators_draw_with_pytorch_but_greedy_stays_fused(tiny_editor, fused_on_cpu):
    """The kernel's random stream is one seed for the batch, so per-row generators (a resumable
    evaluation's per-sample seeds) take the PyTorch draw; greedy decoding draws nothing and keeps the kernel."""
    from earl.generate import sample_edits

    codes = torch.randint(0, tiny_editor.image_tokenizer.codebook_size, (2, 4, 4),
                          generator=torch.Generator().manual_seed(2))
    ins = ["change the square to green", "make the red circle blue"]

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    cfg = SamplingConfig(temperature=1.0)
    both = sample_edits(tiny_editor.backbone, tiny_editor.layout, ins, codes, cfg, generator=gens(1, 2))
    assert fused_on_cpu == []
    second = sample_edits(tiny_editor.backbone, tiny_editor.layout, ins[1:], codes[1:], cfg, generator=gens(2))
    assert torch.equal(both.codes[1], second.codes[0])
    greedy = SamplingConfig(temperature=0.0)
    fused = sample_edits(tiny_editor.backbone, tiny_editor.layout, ins, codes, greedy, generator=gens(1, 2))
    assert len(fused_on_cpu) == 16
    assert torch.equal(fused.codes, sample_edits(tiny_editor.backbone, tiny_editor.layout, ins, codes, greedy).codes)
