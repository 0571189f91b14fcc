#!/usr/bin/env bash
# The multi-agent (ImageEdit-R1) results of docs/AGENTS.md, on the fixed ShapesEdit test sets:
# the decomposer's three SFT stages and GRPO with each reward, then `earl eval shapes --agent` for
# the ground-truth plan, each decomposer, open and closed loop. Every step is skipped when its output
# exists (evaluations also resume sample by sample). About 5.5 h on 2 CPU cores: SFT ~2.5 h, GRPO ~1.5 h, the plan-choice evaluations ~1 h.
set -euo pipefail
D=runs/data; A=runs/agents
for s in simple complex; do
  [ -f $D/${s}_test/meta.json ] || earl data shapes --out $D/${s}_test --n 200 --split $s --part test
done
[ -f runs/decomposer_sft/model/editor.json ] || earl train decomposer-sft recipes/agents/decomposer_sft.yaml
[ -f runs/decomposer_sft_v2/model/editor.json ] || earl train decomposer-sft recipes/agents/decomposer_sft_more.yaml
[ -f runs/decomposer_sft_v3/model/editor.json ] || earl train decomposer-sft recipes/agents/decomposer_sft_stage3.yaml
[ -f runs/decomposer_grpo_f1_v3/model/editor.json ] || earl train decomposer-grpo recipes/agents/decomposer_grpo_f1_stage3.yaml
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
ev simple sft3_open --agent runs/decomposer_sft_v3/model
ev complex sft3_open --agent runs/decomposer_sft_v3/model
# the bundled decomposer (= grpo_f1) with more plans: self-consistency (the most-written of 1 greedy + 8
# sampled plans, still open loop), then choosing among the candidate plans by judging each final image
B=runs/decomposer_grpo_f1/model   # the decomposer bundled when these rows were measured
ev simple vote8 --agent $B --plan-votes 8
ev complex vote8 --agent $B --plan-votes 8
ev complex vote8_plans4_oracle --agent $B --plan-votes 8 --plans 4 --plan-judge oracle
ev complex vote8_plans4_rrm --agent $B --plan-votes 8 --plans 4 --plan-judge rrm
ev complex vote16_plans8_oracle+oracle4 --agent $B --plan-votes 16 --plans 8 --plan-judge oracle --check oracle --attempts 4
# the third SFT stage and F1-GRPO from it (bundled as checkpoints/shapes-decomposer), open and closed loop
V3=runs/decomposer_grpo_f1_v3/model
ev simple grpo3_open --agent $V3
ev complex grpo3_open --agent $V3
ev complex grpo3_vote8_plans4_rrm --agent $V3 --plan-votes 8 --plans 4 --plan-judge rrm
ev complex grpo3_vote16_plans8_oracle+oracle4 --agent $V3 --plan-votes 16 --plans 8 --plan-judge oracle --check oracle --attempts 4
ev complex grpo3_vote32_plans16_oracle+oracle4 --agent $V3 --plan-votes 32 --plans 16 --plan-judge oracle --check oracle --attempts 4
# F1-GRPO from the third SFT stage again with seeds 1 and 2 (the bundled one is seed 0): RL vs SFT with seeds
for seed in 1 2; do
  [ -f runs/decomposer_grpo_f1_v3_seed$seed/model/editor.json ] || earl train decomposer-grpo \
      recipes/agents/decomposer_grpo_f1_stage3.yaml run.seed=$seed out_dir=runs/decomposer_grpo_f1_v3_seed$seed
  ev complex grpo3_seed${seed}_open --agent runs/decomposer_grpo_f1_v3_seed$seed/model
done
cmp() { earl agent compare "${@:3}" --base $2 --out $A/$1_table.md; }
cmp complex sft2 editor=$A/complex/editor_alone gt=$A/complex/gt_open sft2=$A/complex/sft2_open grpo_f1=$A/complex/grpo_f1_open \
  grpo_closed=$A/complex/grpo_closed_open gt+oracle4=$A/complex/gt_oracle4 gt+rrm4=$A/complex/gt_rrm4 \
  sft2+oracle4=$A/complex/sft2_oracle4 sft2+rrm4=$A/complex/sft2_rrm4 \
  grpo_f1+oracle4=$A/complex/grpo_f1_oracle4 grpo_f1+rrm4=$A/complex/grpo_f1_rrm4 \
  vote8=$A/complex/vote8 vote8+plans4_oracle=$A/complex/vote8_plans4_oracle vote8+plans4_rrm=$A/complex/vote8_plans4_rrm \
  vote16+plans8_oracle+oracle4=$A/complex/vote16_plans8_oracle+oracle4
cmp complex_stage3 sft3 editor=$A/complex/editor_alone gt=$A/complex/gt_open gt+oracle4=$A/complex/gt_oracle4 \
  gt+rrm4=$A/complex/gt_rrm4 sft3=$A/complex/sft3_open grpo3=$A/complex/grpo3_open \
  grpo3+vote8+plans4_rrm=$A/complex/grpo3_vote8_plans4_rrm grpo3+vote16+plans8_oracle+oracle4=$A/complex/grpo3_vote16_plans8_oracle+oracle4 \
  grpo3+vote32+plans16_oracle+oracle4=$A/complex/grpo3_vote32_plans16_oracle+oracle4 \
  grpo3_seed1=$A/complex/grpo3_seed1_open grpo3_seed2=$A/complex/grpo3_seed2_open
cmp simple editor editor=$A/simple/editor_alone gt=$A/simple/gt_open sft2=$A/simple/sft2_open \
  grpo_f1=$A/simple/grpo_f1_open grpo_closed=$A/simple/grpo_closed_open sft3=$A/simple/sft3_open vote8=$A/simple/vote8 grpo3=$A/simple/grpo3_open
