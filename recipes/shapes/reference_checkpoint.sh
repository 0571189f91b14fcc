#!/usr/bin/env bash
# Re-make the bundled reference checkpoint, checkpoints/shapes-editor (about 45 min on 2 CPU cores).
# Every step resumes or skips work already done, so the script can be re-run after an interruption.
set -euo pipefail
cd "$(dirname "$0")/../.."
earl train tokenizer recipes/shapes/tokenizer.yaml --resume                     # -> runs/tokenizer (~6 min)
earl train sft recipes/shapes/sft.yaml out_dir=runs/sft_ref run.steps=1500 run.eval_every=500 \
  run.save_every=250 --resume                                                   # -> runs/sft_ref (~31 min)
for split in simple complex; do
  [ -f "runs/ref_data/$split-test/meta.json" ] || earl data shapes --out "runs/ref_data/$split-test" --split "$split" --part test --n 200
  earl eval shapes --model runs/sft_ref/model --data "runs/ref_data/$split-test" --out "runs/ref_eval/$split"
done
earl checkpoint pack --model runs/sft_ref/model --out checkpoints/shapes-editor --name shapes-editor \
  --recipe-json runs/sft_ref/recipe.json \
  --eval simple-test=runs/ref_eval/simple/results.json --eval complex-test=runs/ref_eval/complex/results.json \
  --command "bash recipes/shapes/reference_checkpoint.sh"
earl checkpoint verify checkpoints/shapes-editor
