#!/usr/bin/env bash
# The reward-model comparison on ShapesEdit (Edit-R1): cold-start SFT of the reasoning reward model,
# GCPO on simulated preference pairs, the scalar Bradley-Terry baseline, then pairwise accuracy on
# held-out pairs (oracle ceiling; RRM-SFT, RRM-GCPO, each also Avg@4; scalar), and the editor study
# with each reward. Every step resumes or skips what is done when run again.
set -euo pipefail
[ -f runs/rrm_sft/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft.yaml --resume
[ -f runs/rrm_gcpo/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml --resume
[ -f runs/rm_scalar/model/scalar_head.safetensors ] || earl train rm-scalar recipes/shapes/rm_scalar.yaml
earl eval rewardbench --rrm rrm_sft=runs/rrm_sft/model --rrm rrm_gcpo=runs/rrm_gcpo/model \
    --scalar scalar=runs/rm_scalar/model --avg-k 4 --out runs/rewardbench
earl study recipes/shapes/study_rewards.yaml
