#!/usr/bin/env bash
# The reward-model comparison on ShapesEdit (Edit-R1): cold-start SFT of the reasoning reward model,
# GCPO on simulated preference pairs, the scalar Bradley-Terry baseline, then pairwise accuracy on
# held-out pairs (oracle ceiling; RRM-SFT from scratch and from the editor, RRM-GCPO, scalar; add
# --avg-k 4 for Avg@4 self-consistency), and the editor study with each reward. Every step resumes or skips what is done when run again.
set -euo pipefail
# cold-start SFT from random weights (the model collapses to "yes" on every point at this budget: docs/REWARD_MODELS.md)
[ -f runs/rrm_sft/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft.yaml --resume
# cold-start SFT from the trained editor (Edit-R1 starts from a pretrained VLM), then GCPO from it
[ -f runs/rrm_sft_editor/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft_from_editor.yaml --resume
[ -f runs/rrm_gcpo/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml --resume
# the holistic baseline, from the same editor
[ -f runs/rm_scalar_editor/model/scalar_head.safetensors ] || earl train rm-scalar recipes/shapes/rm_scalar_from_editor.yaml
earl eval rewardbench --rrm rrm_sft_scratch=runs/rrm_sft/model --rrm rrm_sft=runs/rrm_sft_editor/model \
    --rrm rrm_gcpo=runs/rrm_gcpo/model --scalar scalar=runs/rm_scalar_editor/model --out runs/rewardbench
earl study recipes/shapes/study_rewards.yaml
