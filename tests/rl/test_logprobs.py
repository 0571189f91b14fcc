"""The trainer scores exactly the distribution the sampler drew from."""

import pytest
import torch
from torch import nn

from earl.generate import SamplingConfig, sample_edits
from earl.rl.logprobs import policy_logprobs, rollout_from_generation

INS = ["make the red circle blue", "remove the small triangle", "change the square to green", "make it"]


class EarlyThinker(nn.Module):
    """Wraps a backbone and favours </think> a little so rows finish their reasoning at different steps."""

    def __init__(self, backbone, think_end: int, bias: float):
        super().__init__()
        self.inner, self.think_end, self.bias = backbone, think_end, bias
        self.config = backbone.config  # as any HF causal LM has (the sampler checks prompt lengths against it)

    def forward(self, **kw):
        out = self.inner(**kw)
        out.logits[..., self.think_end] += self.bias
        return out


@pytest.mark.parametrize("scale", [1.0, 2.5])
@pytest.mark.parametrize("cot", [False, True])
def test_trainer_logprobs_equal_sampler_logprobs(tiny_editor, tiny_cot_editor, cot, scale):
    editor = tiny_cot_editor if cot else tiny_editor
    backbone = EarlyThinker(editor.backbone, editor.layout.ids.think_end, 4.0) if cot else editor.backbone
    codes = torch.randint(0, editor.image_tokenizer.codebook_size, (4, 4, 4), generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(temperature=0.9, guidance_scale=scale, max_think_tokens=10)
    out = sample_edits(backbone, editor.layout, INS, codes, cfg, think=cot, generator=torch.Generator().manual_seed(2))
    r = rollout_from_generation(INS, codes, out, editor.layout)
    if cot:
        assert len(set(r.think_lengths.tolist())) > 1  # rows stopped thinking at different steps
    lp = policy_logprobs(backbone, editor.layout, r, cfg)
    torch.testing.assert_close(lp, r.old_logprobs, atol=2e-5, rtol=1e-4)
    assert (lp[~r.sampled] == 0).all()
    assert int(r.is_image.sum()) == 4 * 16


def test_filters_that_change_the_distribution_are_refused(tiny_editor):
    from earl.train.grpo import GRPOSection

    with pytest.raises(ValueError, match="top_k"):
        GRPOSection(sampling=SamplingConfig(temperature=1.0, top_k=10))
    with pytest.raises(ValueError, match="temperature > 0"):
        GRPOSection(sampling=SamplingConfig(temperature=0.0))
    with pytest.raises(ValueError, match="minibatch_size"):
        GRPOSection(group_size=3, prompts_per_step=1, minibatch_size=2)
