#!/usr/bin/env bash
# The reward-model comparison on ShapesEdit (Edit-R1), as measured in docs/REWARD_MODELS.md: the
# cold-start SFT of the reasoning reward model from the trained editor (plain, and with failing
# points weighted 6x in the loss, with traces that open with a cell-by-cell scan of the edited image,
# with that scan quoted in the reasons, and with each quoted reason followed by what its point expects:
# plain, with failing points weighted 3x, and with only their observations weighted 4x and the scan 3x),
# GCPO from the plain one, the scan one, the weighted expect one and the observation-weighted one (twice:
# each trace scored by the score it wrote, and by its E[score]), the scalar Bradley-Terry baseline from
# the same editor, then pairwise accuracy on held-out pairs with the oracle ceiling and a
# per-principle-type breakdown of the verdicts; last, the observation-weighted cold start trained three
# times as long (the best measured) and GCPO from it, and the same cold start taught by a lenient verifier
# and GCPO from that, and GCPO from the bundled lenient cold start (two seeds, and their weight average).
# About 16 h on 2 CPU cores. Every step resumes or is
# skipped when its output exists. The Avg@4 command adds self-consistency for two models; the last
# two run editor GRPO with each reward from the bundled editor, judged by the oracle
# (57 and 50 min; recipes/shapes/study_rewards.yaml is the 3-seed form of the first).
set -euo pipefail
[ -f runs/rrm_sft_editor/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft_from_editor.yaml --resume
[ -f runs/rrm_sft_editor_weighted/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft_from_editor.yaml \
    out_dir=runs/rrm_sft_editor_weighted data.failing_point_weight=6 --resume
[ -f runs/rrm_sft_scan/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft_scan.yaml --resume
[ -f runs/rrm_sft_quoted/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft_scan.yaml \
    out_dir=runs/rrm_sft_quoted data.quote_scan=true --resume
[ -f runs/rrm_sft_expect/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft_scan.yaml \
    out_dir=runs/rrm_sft_expect data.quote_scan=true data.expect=true --resume
[ -f runs/rrm_sft_expect_w3/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft_scan.yaml \
    out_dir=runs/rrm_sft_expect_w3 data.quote_scan=true data.expect=true data.failing_point_weight=3 --resume
[ -f runs/rrm_sft_obs4_scan3/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft_scan.yaml \
    out_dir=runs/rrm_sft_obs4_scan3 data.quote_scan=true data.expect=true data.failing_observation_weight=4 \
    data.scan_weight=3 --resume
[ -f runs/rm_scalar_editor/model/scalar_head.safetensors ] || earl train rm-scalar recipes/shapes/rm_scalar_from_editor.yaml \
    run.steps=500 run.eval_every=250 run.save_every=500
[ -f runs/rrm_gcpo/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    run.steps=40 run.eval_every=40 run.save_every=40 --resume
[ -f runs/rrm_gcpo_scan/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_scan init_from=runs/rrm_sft_scan/model run.steps=40 run.eval_every=40 run.save_every=40 --resume
[ -f runs/rrm_gcpo_expect_w3/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_expect_w3 init_from=runs/rrm_sft_expect_w3/model run.steps=40 run.eval_every=40 run.save_every=40 --resume
[ -f runs/rrm_gcpo_obs4_scan3/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_obs4_scan3 init_from=runs/rrm_sft_obs4_scan3/model run.steps=40 run.eval_every=40 run.save_every=40 --resume
[ -f runs/rrm_gcpo_obs4_scan3_expected/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_obs4_scan3_expected init_from=runs/rrm_sft_obs4_scan3/model gcpo.score=expected \
    run.steps=40 run.eval_every=40 run.save_every=40 --resume
[ -f runs/rrm_gcpo_obs4_scan3_expected_120/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_obs4_scan3_expected_120 init_from=runs/rrm_sft_obs4_scan3/model gcpo.score=expected \
    run.steps=120 run.eval_every=40 run.save_every=40 --resume
# where the expect models go wrong: expectation, observation, and whether the verdict follows them
earl eval rrm recipes/shapes/rrm_sft_scan.yaml data.quote_scan=true data.expect=true \
    --model runs/rrm_sft_expect/model --out runs/rrm_eval/expect.json
earl eval rrm recipes/shapes/rrm_sft_scan.yaml data.quote_scan=true data.expect=true data.failing_point_weight=3 \
    --model runs/rrm_sft_expect_w3/model --out runs/rrm_eval/expect_w3.json
earl eval rewardbench --samples 100 --rrm rrm_sft=runs/rrm_sft_editor/model \
    --rrm rrm_sft_weighted=runs/rrm_sft_editor_weighted/model --rrm rrm_gcpo=runs/rrm_gcpo/model \
    --rrm rrm_sft_scan=runs/rrm_sft_scan/model --rrm rrm_sft_quoted=runs/rrm_sft_quoted/model \
    --rrm rrm_gcpo_scan=runs/rrm_gcpo_scan/model --rrm rrm_sft_expect=runs/rrm_sft_expect/model \
    --rrm rrm_sft_expect_w3=runs/rrm_sft_expect_w3/model --rrm rrm_gcpo_expect_w3=runs/rrm_gcpo_expect_w3/model \
    --scalar scalar=runs/rm_scalar_editor/model --out runs/rewardbench
# Avg@4 self-consistency of the weighted expect model and its GCPO run (10 min each)
earl eval rewardbench --samples 100 --rrm rrm_sft_expect_w3=runs/rrm_sft_expect_w3/model \
    --rrm rrm_gcpo_expect_w3=runs/rrm_gcpo_expect_w3/model --avg-k 4 --out runs/rewardbench_avg4
# observations of failing lines 4x and the scan 3x, against the scalar model, greedy, Avg@4 and E[score]
earl eval rewardbench --samples 100 --rrm rrm_sft_obs4_scan3=runs/rrm_sft_obs4_scan3/model \
    --scalar scalar=runs/rm_scalar_editor/model --expected-score --avg-k 4 --out runs/rewardbench_obs
# the observation-weighted model before and after GCPO, each readout of one greedy trace, compared pair by pair
# with the scalar model and with the cold start's E[score] and E[points] (12 min)
earl eval rewardbench --samples 100 --rrm rrm_sft_obs4_scan3=runs/rrm_sft_obs4_scan3/model \
    --rrm rrm_gcpo_obs4_scan3=runs/rrm_gcpo_obs4_scan3/model \
    --rrm rrm_gcpo_obs4_scan3_expected=runs/rrm_gcpo_obs4_scan3_expected/model \
    --scalar scalar=runs/rm_scalar_editor/model --expected-score --expected-points --baseline scalar \
    --baseline "rrm_sft_obs4_scan3 E[score]" --baseline "rrm_sft_obs4_scan3 E[points]" --out runs/rewardbench_paired
# the same on three times the held-out samples (1200 pairs, 22 min): 400 pairs cannot resolve these gaps
earl eval rewardbench --samples 300 --rrm rrm_gcpo_obs4_scan3=runs/rrm_gcpo_obs4_scan3/model \
    --rrm rrm_gcpo_obs4_scan3_expected=runs/rrm_gcpo_obs4_scan3_expected/model \
    --rrm rrm_sft_obs4_scan3=runs/rrm_sft_obs4_scan3/model \
    --scalar scalar=runs/rm_scalar_editor/model --expected-score --expected-points --baseline scalar \
    --baseline "rrm_sft_obs4_scan3 E[score]" --baseline "rrm_sft_obs4_scan3 E[points]" --out runs/rewardbench_paired_300
# three times the GCPO (120 steps, τ = E[score]) against its cold start and the scalar model, 1200 pairs
# (docs/REWARD_MODELS.md: it made the reward model worse)
earl eval rewardbench --samples 300 --rrm rrm_gcpo_120=runs/rrm_gcpo_obs4_scan3_expected_120/model \
    --rrm rrm_sft_obs4_scan3=runs/rrm_sft_obs4_scan3/model \
    --scalar scalar=runs/rm_scalar_editor/model --expected-score --expected-points --baseline scalar \
    --baseline "rrm_sft_obs4_scan3 E[score]" --baseline "rrm_sft_obs4_scan3 E[points]" --out runs/rewardbench_gcpo120
# GCPO with a KL anchor to the cold start (gcpo.beta=0.4): the same 120 steps, 16 pairs a step at twice the lr
# for 40 steps, and 120 steps with tau = E[points] (27, 25 and 19 min); against the runs above on the same
# 1200 pairs (5 min a model)
[ -f runs/rrm_gcpo_obs4_scan3_expected_120_kl04/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_obs4_scan3_expected_120_kl04 init_from=runs/rrm_sft_obs4_scan3/model gcpo.score=expected \
    gcpo.beta=0.4 run.steps=120 run.eval_every=40 run.save_every=40 --resume
[ -f runs/rrm_gcpo_obs4_scan3_expected_b16_kl04/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_obs4_scan3_expected_b16_kl04 init_from=runs/rrm_sft_obs4_scan3/model gcpo.score=expected \
    gcpo.beta=0.4 gcpo.pairs_per_step=16 optim.lr=2e-5 optim.min_lr=2e-5 run.steps=40 run.eval_every=40 \
    run.save_every=20 --resume
[ -f runs/rrm_gcpo_obs4_scan3_points_120_kl04/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_obs4_scan3_points_120_kl04 init_from=runs/rrm_sft_obs4_scan3/model gcpo.score=points \
    gcpo.beta=0.4 run.steps=120 run.eval_every=120 run.save_every=40 --resume
earl eval rewardbench --samples 300 --rrm rrm_gcpo_120=runs/rrm_gcpo_obs4_scan3_expected_120/model \
    --rrm rrm_gcpo_120_kl04=runs/rrm_gcpo_obs4_scan3_expected_120_kl04/model \
    --rrm rrm_gcpo_b16_kl04=runs/rrm_gcpo_obs4_scan3_expected_b16_kl04/model \
    --rrm rrm_gcpo_points_kl04=runs/rrm_gcpo_obs4_scan3_points_120_kl04/model \
    --rrm rrm_sft_obs4_scan3=runs/rrm_sft_obs4_scan3/model \
    --scalar scalar=runs/rm_scalar_editor/model --expected-score --expected-points --baseline scalar \
    --baseline "rrm_sft_obs4_scan3 E[score]" --baseline "rrm_sft_obs4_scan3 E[points]" --out runs/rewardbench_kl
# the same cold start trained three times longer on three times the samples (recipes/shapes/rrm_sft_long.yaml:
# 6000 samples, ~47k judge examples, 2700 steps; 68 min), the paper's GCPO (40 steps, written tau), tau = E[score]
# and tau = E[points] with the KL anchor from it (6, 6 and ~20 min), against the runs above on the same 1200 pairs
[ -f runs/rrm_sft_obs4_scan3_long/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft_long.yaml --resume
[ -f runs/rrm_gcpo_long/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_long init_from=runs/rrm_sft_obs4_scan3_long/model \
    run.steps=40 run.eval_every=40 run.save_every=40 --resume
[ -f runs/rrm_gcpo_long_expected/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_long_expected init_from=runs/rrm_sft_obs4_scan3_long/model gcpo.score=expected \
    run.steps=40 run.eval_every=40 run.save_every=40 --resume
[ -f runs/rrm_gcpo_long_points_kl04/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_long_points_kl04 init_from=runs/rrm_sft_obs4_scan3_long/model gcpo.score=points \
    gcpo.beta=0.4 run.steps=120 run.eval_every=120 run.save_every=40 --resume
earl eval rewardbench --samples 300 --rrm rrm_sft_long=runs/rrm_sft_obs4_scan3_long/model \
    --rrm rrm_gcpo_long=runs/rrm_gcpo_long/model --rrm rrm_gcpo_long_expected=runs/rrm_gcpo_long_expected/model \
    --rrm rrm_gcpo_long_points_kl04=runs/rrm_gcpo_long_points_kl04/model --rrm rrm_sft_obs4_scan3=runs/rrm_sft_obs4_scan3/model \
    --scalar scalar=runs/rm_scalar_editor/model --expected-score --expected-points --baseline scalar \
    --baseline "rrm_sft_long E[points]" --baseline "rrm_sft_long E[score]" --baseline "rrm_sft_long" \
    --out runs/rewardbench_long
# a fallible cold-start verifier (docs/REWARD_MODELS.md): the same cold start with traces whose verdicts pass half
# of the failing points (recipes/shapes/rrm_sft_lenient.yaml; 70 min), then GCPO on the oracle's simulated pairs:
# the paper's recipe (40 steps), the same at lr 1e-4, and 16 pairs a step at lr 2e-5 (7, 7 and ~25 min)
[ -f runs/rrm_sft_lenient/model/editor.json ] || earl train rrm-sft recipes/shapes/rrm_sft_lenient.yaml --resume
[ -f runs/rrm_gcpo_lenient/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_lenient init_from=runs/rrm_sft_lenient/model \
    run.steps=40 run.eval_every=40 run.save_every=40 --resume
[ -f runs/rrm_gcpo_lenient_lr1e4/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_lenient_lr1e4 init_from=runs/rrm_sft_lenient/model optim.lr=1e-4 optim.min_lr=1e-4 \
    run.steps=40 run.eval_every=40 run.save_every=40 --resume
[ -f runs/rrm_gcpo_lenient_b16/model/editor.json ] || earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_lenient_b16 init_from=runs/rrm_sft_lenient/model gcpo.pairs_per_step=16 \
    optim.lr=2e-5 optim.min_lr=2e-5 run.steps=40 run.eval_every=40 run.save_every=20 --resume
earl eval rewardbench --samples 300 --rrm rrm_sft_lenient=runs/rrm_sft_lenient/model \
    --rrm rrm_gcpo_lenient=runs/rrm_gcpo_lenient/model --rrm rrm_gcpo_lenient_lr1e4=runs/rrm_gcpo_lenient_lr1e4/model \
    --rrm rrm_gcpo_lenient_b16=runs/rrm_gcpo_lenient_b16/model --rrm rrm_sft_long=runs/rrm_sft_obs4_scan3_long/model \
    --scalar scalar=runs/rm_scalar_editor/model --expected-score --expected-points --baseline scalar \
    --baseline "rrm_sft_lenient E[points]" --baseline "rrm_sft_lenient E[score]" --baseline "rrm_sft_lenient" \
    --out runs/rewardbench_lenient
# closing the loop: editor GRPO with each reward, one seed (docs/RESULTS.md)
earl study recipes/shapes/study_rewards_quick.yaml
# the longer cold start's E[points] as the editor's reward, beside the oracle's
earl study recipes/shapes/study_rewards_long.yaml
# the E[score]-GCPO model's E[score] against its written score as the editor's reward
earl study recipes/shapes/study_rewards_expected.yaml
# the scalar reward with Edit-R1's KL anchor (0.04) and ten times that (36 min)
earl study recipes/shapes/study_rewards_kl.yaml
# GCPO from the bundled lenient cold start (checkpoints/shapes-rrm-lenient, so no 70-90 min cold start first):
# the paper's recipe for 200 steps, the model kept after 40 and 120 (the learning rate is constant, so a run
# resumed to more steps continues the shorter one), then the 1200-pair benchmark with each model's greedy,
# E[points] and E[score] readouts, and Avg@4 (the mean written score of 4 sampled traces, the quantity
# GCPO's ranking reward is computed from) for the cold start and the last GCPO model
[ -f runs/rm_scalar_editor/model/scalar_head.safetensors ] || earl train rm-scalar recipes/shapes/rm_scalar_from_editor.yaml \
    run.steps=500 run.eval_every=250 run.save_every=500
for steps in 40 120 200; do
    [ -f runs/rrm_gcpo_bundle_$steps/editor.json ] && continue
    earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml out_dir=runs/rrm_gcpo_bundle init_from=checkpoints/shapes-rrm-lenient \
        run.steps=$steps run.eval_every=40 run.save_every=40 --resume
    cp -r runs/rrm_gcpo_bundle/model runs/rrm_gcpo_bundle_$steps.tmp && mv runs/rrm_gcpo_bundle_$steps.tmp runs/rrm_gcpo_bundle_$steps
done
earl eval rewardbench --samples 300 --rrm rrm_sft_bundle=checkpoints/shapes-rrm-lenient \
    --rrm rrm_gcpo_bundle_40=runs/rrm_gcpo_bundle_40 --rrm rrm_gcpo_bundle_120=runs/rrm_gcpo_bundle_120 \
    --rrm rrm_gcpo_bundle_200=runs/rrm_gcpo_bundle_200 --scalar scalar=runs/rm_scalar_editor/model \
    --expected-score --expected-points --baseline scalar --baseline "rrm_sft_bundle E[points]" \
    --baseline "rrm_sft_bundle" --out runs/rewardbench_bundle
earl eval rewardbench --samples 300 --rrm rrm_sft_bundle=checkpoints/shapes-rrm-lenient \
    --rrm rrm_gcpo_bundle_200=runs/rrm_gcpo_bundle_200 --scalar scalar=runs/rm_scalar_editor/model --avg-k 4 \
    --baseline scalar --baseline "rrm_sft_bundle Avg@4" --out runs/rewardbench_bundle_avg4
# the same start, GCPO with each trace's tau its E[score] (the readout on which the paper's recipe gained
# +2.7, inside the interval), 40 and 80 steps, added to the 1200-pair benchmark above
for steps in 40 80; do
    [ -f runs/rrm_gcpo_bundle_expected_$steps/editor.json ] && continue
    earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml out_dir=runs/rrm_gcpo_bundle_expected \
        init_from=checkpoints/shapes-rrm-lenient gcpo.score=expected run.steps=$steps run.eval_every=80 \
        run.save_every=40 --resume
    cp -r runs/rrm_gcpo_bundle_expected/model runs/rrm_gcpo_bundle_expected_$steps.tmp
    mv runs/rrm_gcpo_bundle_expected_$steps.tmp runs/rrm_gcpo_bundle_expected_$steps
done
earl eval rewardbench --samples 300 --rrm rrm_sft_bundle=checkpoints/shapes-rrm-lenient \
    --rrm rrm_gcpo_bundle_40=runs/rrm_gcpo_bundle_40 --rrm rrm_gcpo_bundle_120=runs/rrm_gcpo_bundle_120 \
    --rrm rrm_gcpo_bundle_200=runs/rrm_gcpo_bundle_200 --rrm rrm_gcpo_bundle_expected_40=runs/rrm_gcpo_bundle_expected_40 \
    --rrm rrm_gcpo_bundle_expected_80=runs/rrm_gcpo_bundle_expected_80 --scalar scalar=runs/rm_scalar_editor/model \
    --expected-score --expected-points --baseline scalar --baseline "rrm_sft_bundle E[points]" \
    --baseline "rrm_sft_bundle E[score]" --baseline "rrm_sft_bundle" --out runs/rewardbench_bundle
# the paper's-recipe run continued to 320 steps, added to the same benchmark
[ -f runs/rrm_gcpo_bundle_320/editor.json ] || { earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml \
    out_dir=runs/rrm_gcpo_bundle init_from=checkpoints/shapes-rrm-lenient run.steps=320 run.eval_every=320 \
    run.save_every=40 --resume && cp -r runs/rrm_gcpo_bundle/model runs/rrm_gcpo_bundle_320; }
earl eval rewardbench --samples 300 --rrm rrm_sft_bundle=checkpoints/shapes-rrm-lenient \
    --rrm rrm_gcpo_bundle_40=runs/rrm_gcpo_bundle_40 --rrm rrm_gcpo_bundle_120=runs/rrm_gcpo_bundle_120 \
    --rrm rrm_gcpo_bundle_200=runs/rrm_gcpo_bundle_200 --rrm rrm_gcpo_bundle_320=runs/rrm_gcpo_bundle_320 \
    --rrm rrm_gcpo_bundle_expected_40=runs/rrm_gcpo_bundle_expected_40 \
    --rrm rrm_gcpo_bundle_expected_80=runs/rrm_gcpo_bundle_expected_80 --scalar scalar=runs/rm_scalar_editor/model \
    --expected-score --expected-points --baseline scalar --baseline "rrm_sft_bundle E[points]" \
    --baseline "rrm_sft_bundle E[score]" --baseline "rrm_sft_bundle" --out runs/rewardbench_bundle
# the two GCPO runs' curves (docs/rrm_gcpo_bundle_curves.png)
earl plot metrics "tau written"=runs/rrm_gcpo_bundle "tau E[score]"=runs/rrm_gcpo_bundle_expected \
    --key gcpo/pair_correct --key gcpo/valid --smooth 20 --out docs/rrm_gcpo_bundle_curves.png
# a second seed of the paper's-recipe run from the same start (run.seed=1: other pairs order and
# other sampled traces), the model kept after 40 and 200 steps (run as measured: 40 steps, then resumed to 200)
for steps in 40 200; do
    [ -f runs/rrm_gcpo_bundle_seed1_$steps/editor.json ] && continue
    earl train rrm-gcpo recipes/shapes/rrm_gcpo.yaml out_dir=runs/rrm_gcpo_bundle_seed1 \
        init_from=checkpoints/shapes-rrm-lenient run.seed=1 run.steps=$steps run.eval_every=200 \
        run.save_every=40 --resume
    cp -r runs/rrm_gcpo_bundle_seed1/model runs/rrm_gcpo_bundle_seed1_$steps.tmp
    mv runs/rrm_gcpo_bundle_seed1_$steps.tmp runs/rrm_gcpo_bundle_seed1_$steps
done
# the weight average of the two seeds' step-200 models (earl checkpoint average; WARM, Rame et al. 2024),
# then both seeds and their average on the same 1200 pairs against the cold start (~3 min a new model
# on a 2-core AMD EPYC; a model already measured with the same weights and settings is reused)
[ -f runs/rrm_gcpo_bundle_warm_seeds_200/editor.json ] || earl checkpoint average runs/rrm_gcpo_bundle_200 \
    runs/rrm_gcpo_bundle_seed1_200 --out runs/rrm_gcpo_bundle_warm_seeds_200
earl eval rewardbench --samples 300 --rrm rrm_sft_bundle=checkpoints/shapes-rrm-lenient \
    --rrm rrm_gcpo_bundle_200=runs/rrm_gcpo_bundle_200 --rrm rrm_gcpo_bundle_seed1_200=runs/rrm_gcpo_bundle_seed1_200 \
    --rrm rrm_gcpo_bundle_warm_seeds_200=runs/rrm_gcpo_bundle_warm_seeds_200 \
    --scalar scalar=runs/rm_scalar_editor/model --expected-score --expected-points --baseline scalar \
    --baseline rrm_sft_bundle --baseline "rrm_sft_bundle E[score]" --baseline "rrm_sft_bundle E[points]" \
    --out runs/rewardbench_bundle
# the two seeds' curves (docs/rrm_gcpo_bundle_seeds.png)
earl plot metrics "seed 0"=runs/rrm_gcpo_bundle "seed 1"=runs/rrm_gcpo_bundle_seed1 \
    --key gcpo/pair_correct --key gcpo/valid --smooth 20 --out docs/rrm_gcpo_bundle_seeds.png
