#!/usr/bin/env bash
# The multi-agent (ImageEdit-R1) results of docs/AGENTS.md, on the fixed ShapesEdit test sets:
# the decomposer's two SFT stages and GRPO with each reward, then `earl eval shapes --agent` for
# the ground-truth plan, each decomposer, open and closed loop. Every step is skipped when its output
# exists (evaluations also resume sample by sample). About 2 h on 2 CPU cores, most of it SFT.
set -euo pipefail
D=runs/data; A=runs/agents
for s in simple complex; do
  [ -f $D/${s}_test/meta.json ] || earl data shapes --out $D/${s}_test --n 200 --split $s --part test
done
[ -f runs/decomposer_sft/model/editor.json ] || earl train decomposer-sft recipes/agents/decomposer_sft.yaml
[ -f runs/decomposer_sft_v2/model/editor.json ] || earl train decomposer-sft recipes/agents/decomposer_sft_more.yaml
for r in f1 closed; do
  [ -f runs/decomposer_grpo_$r/model/editor.json ] || earl train decomposer-grpo recipes/agents/decomposer_grpo_$r.yaml
done
ev() { earl eval shapes --data $D/$1_test --out $A/$1/$2 "${@:3}"; }
ev simple editor_alone                       # the bundled editor on its own, one shot
ev complex editor_alone
for s in simple complex; do
  ev $s gt_open --agent ground-truth         # the reference: each sample's own program, one step at a time
  ev $s sft2_open --agent runs/decomposer_sft_v2/model
  ev $s grpo_f1_open --agent runs/decomposer_grpo_f1/model
  ev $s grpo_closed_open --agent runs/decomposer_grpo_closed/model
done
for c in oracle rrm; do                      # closed loop: each step checked, resampled up to 4 times
  ev complex gt_${c}4 --agent ground-truth --check $c --attempts 4
  ev complex sft2_${c}4 --agent runs/decomposer_sft_v2/model --check $c --attempts 4
  ev complex grpo_f1_${c}4 --agent runs/decomposer_grpo_f1/model --check $c --attempts 4
done
cmp() { earl agent compare "${@:3}" --base $2 --out $A/$1_table.md; }
cmp complex sft2 editor=$A/complex/editor_alone gt=$A/complex/gt_open sft2=$A/complex/sft2_open grpo_f1=$A/complex/grpo_f1_open \
  grpo_closed=$A/complex/grpo_closed_open gt+oracle4=$A/complex/gt_oracle4 gt+rrm4=$A/complex/gt_rrm4 \
  sft2+oracle4=$A/complex/sft2_oracle4 sft2+rrm4=$A/complex/sft2_rrm4 \
  grpo_f1+oracle4=$A/complex/grpo_f1_oracle4 grpo_f1+rrm4=$A/complex/grpo_f1_rrm4
cmp simple editor editor=$A/simple/editor_alone gt=$A/simple/gt_open sft2=$A/simple/sft2_open \
  grpo_f1=$A/simple/grpo_f1_open grpo_closed=$A/simple/grpo_closed_open
