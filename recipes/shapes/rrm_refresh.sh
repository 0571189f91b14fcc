#!/usr/bin/env bash
# Refresh the bundled reward model on the policy's own images, then measure it on the agent's own final
# images of the fixed complex test set (docs/REWARD_MODELS.md, "On-policy refresh"). About 40 min on 2 CPU cores.
#   bash recipes/shapes/rrm_refresh.sh
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
V=runs/verifier_data
mkdir -p $V
# 1. on-policy images on two training sets (seeds no test set uses): the agent's final images, the editor's sampled edits
[ -f $V/train_complex/meta.json ] || earl data shapes --out $V/train_complex --n 400 --split complex --seed 11
[ -f $V/train_simple/meta.json ] || earl data shapes --out $V/train_simple --n 300 --split simple --seed 12
earl eval shapes --agent --data $V/train_complex --out $V/roll_agent_complex --batch-size 64
earl eval shapes --agent --data $V/train_simple --out $V/roll_agent_simple --batch-size 64
earl eval shapes --data $V/train_complex --out $V/roll_editor_complex_t1 --temperature 1.0 --seed 1
earl eval shapes --data $V/train_simple --out $V/roll_editor_simple_t1 --temperature 1.0 --seed 1
# 2. teacher labels: each image's points written by the plan writer and by the exact generator, judged by the oracle
for w in plan exact; do
  earl data verifier --data $V/train_complex --images agent_complex=$V/roll_agent_complex/images \
    --images editor_complex=$V/roll_editor_complex_t1/images --writer $w --out $V/train_op_complex_$w
  earl data verifier --data $V/train_simple --images agent_simple=$V/roll_agent_simple/images \
    --images editor_simple=$V/roll_editor_simple_t1/images --writer $w --out $V/train_op_simple_$w
done
# 3. the refresh, packed as the bundled checkpoints/shapes-rrm-refresh (`--verifier learned` judges with it);
#    its teacher labels: this run's teacher_labels.json plus the 47,611 of the model it starts from
earl train rrm-sft recipes/shapes/rrm_sft_refresh.yaml --resume
python3 -c "import json; r = json.load(open('runs/rrm_refresh/teacher_labels.json')); json.dump({'total': r['total'] + 47611, 'init_from_shapes-rrm-lenient': 47611, 'refresh_cold_start': r['coldstart'], 'refresh_onpolicy': r['onpolicy']}, open('runs/rrm_refresh/teacher_labels_total.json', 'w'), indent=2)"
earl checkpoint pack --model runs/rrm_refresh/model --out checkpoints/shapes-rrm-refresh --name shapes-rrm-refresh \
  --recipe-json runs/rrm_refresh/recipe.json --eval held-out=runs/rrm_refresh/final_metrics.json \
  --teacher-labels runs/rrm_refresh/teacher_labels_total.json --command "bash recipes/shapes/rrm_refresh.sh"
# 4. the yardstick: the agent's own final images on the fixed complex test set, labelled by the oracle
[ -f $V/complex_test/meta.json ] || earl data shapes --out $V/complex_test --n 200 --split complex --part test
earl eval shapes --agent --data $V/complex_test --out $V/test_agent_complex
for w in plan exact; do
  earl data verifier --data $V/complex_test --images agent=$V/test_agent_complex/images --writer $w --out $V/test_op_complex_$w
  for m in checkpoints/shapes-rrm-lenient runs/rrm_refresh/model; do
    earl eval verifier --model $m --examples $V/test_op_complex_$w --out $V/eval_$(basename $(dirname $m))_$(basename $m)_$w.json
  done
done
