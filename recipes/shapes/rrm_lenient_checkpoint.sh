#!/usr/bin/env bash
# Re-make the bundled reward model, checkpoints/shapes-rrm-lenient: the cold start of
# recipes/shapes/rrm_sft_lenient.yaml (the reasoning reward model taught by a verifier that passes half
# of the failing points; docs/REWARD_MODELS.md, "A fallible cold-start verifier"), packed with its
# recipe and its held-out evaluation. It is bundled so that GCPO experiments on it (and editor RL
# with it) start at once instead of after the 70-100 min cold start. About 70 min on 2 Intel cores
# with bf16, about 90 min on 2 AMD EPYC cores in fp32 (this bundle: 88 min of training); the training
# resumes after an interruption.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f runs/rrm_sft_lenient/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft_lenient.yaml --resume
earl checkpoint pack --model runs/rrm_sft_lenient/model --out checkpoints/shapes-rrm-lenient \
  --name shapes-rrm-lenient --recipe-json runs/rrm_sft_lenient/recipe.json \
  --eval held-out=runs/rrm_sft_lenient/final_metrics.json \
  --command "bash recipes/shapes/rrm_lenient_checkpoint.sh"
earl checkpoint verify checkpoints/shapes-rrm-lenient
