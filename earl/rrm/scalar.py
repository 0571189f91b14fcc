"""The holistic baseline: a scalar Bradley–Terry reward model (trained by `earl train rm-scalar`,
`earl.train.scalar_rm`).

What Edit-R1 compares its reasoning verifier against: one number per (source, instruction, edit),
no principles and no reasoning. It is earl's unified model reading

    <bos> "judge : {instruction}" [source image] [edited image]

with a linear head on the last position's final hidden state, trained on the same simulated
preference pairs as GCPO with the Bradley–Terry loss  -log sigmoid(s_preferred - s_rejected).
Saved as an editor directory plus `scalar_head.safetensors`; as a verifier (`scalar`) its reward is
sigmoid(s), in [0, 1] like every other reward.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from earl.errors import ConfigError
from earl.io import atomic_path
from earl.model import UnifiedEditor
from earl.verify.base import RewardResult

HEAD_FILE = "scalar_head.safetensors"


def scalar_prompt(layout, instruction: str, source_codes, edited_codes) -> list[int]:
    return [layout.ids.bos, *layout.encode_text(f"judge : {instruction}"), *layout.image_tokens(source_codes),
            *layout.image_tokens(edited_codes)]


class ScalarRewardModel(nn.Module):
    def __init__(self, editor):
        super().__init__()
        self.editor = editor
        self.head = nn.Linear(editor.backbone.config.hidden_size, 1)

    def forward(self, seqs: list[list[int]]) -> torch.Tensor:
        batch = {k: v.to(self.editor.device) for k, v in self.editor.layout.pad_prompts(seqs).items()}
        out = self.editor.backbone(**batch, output_hidden_states=True)
        return self.head(out.hidden_states[-1][:, -1].float())[:, 0]  # left padding: the last position is real

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.editor.save_pretrained(path)
        with atomic_path(path / HEAD_FILE) as tmp:
            save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> ScalarRewardModel:
        path = Path(path)
        if not (path / HEAD_FILE).is_file():
            raise ConfigError(f"{path}: no {HEAD_FILE} (expected a model written by `earl train rm-scalar`)")
        m = cls(UnifiedEditor.from_pretrained(path))
        m.head.load_state_dict(load_file(str(path / HEAD_FILE)))
        return m.eval()


def scalar_scorer(model: ScalarRewardModel, batch_size: int = 32):
    @torch.no_grad()
    def score(examples: list[dict]) -> list[float]:
        layout = model.editor.layout
        seqs = [scalar_prompt(layout, e["instruction"], e["source_codes"], e["codes"]) for e in examples]
        if not seqs:
            return []
        return torch.cat([model(seqs[s : s + batch_size]) for s in range(0, len(seqs), batch_size)]).tolist()

    return score


class ScalarVerifier:
    """Rewards sigmoid(s) from a scalar reward model (the holistic baseline)."""

    name = "scalar"

    def __init__(self, model_path: str):
        self.model = ScalarRewardModel.load(model_path)

    @torch.no_grad()
    def score(self, requests):
        ed = self.model.editor
        src = ed.encode_images([ed.preprocess(r.source)[0] for r in requests])
        edt = ed.encode_images([ed.preprocess(r.edited)[0] for r in requests])
        s = self.model([scalar_prompt(ed.layout, r.instruction, a.cpu(), b.cpu())
                        for r, a, b in zip(requests, src, edt)])
        return [RewardResult(reward=float(torch.sigmoid(v)), scores={"logit": float(v)}) for v in s]
