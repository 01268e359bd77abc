#!/usr/bin/env bash
# Issue 15, items 3-4: the click-only recipe on world v2, judged honestly.
#
#   bash experiments/generator_clicks.sh            # everything, in two lanes (2 cores)
#   STEPS=40 bash experiments/generator_clicks.sh   # the first run's 40 steps (clicks-r1-s* weights)
#
# Round 1 of the recipe for 3 training seeds. Seed 0 samples 8 lines for each of the 60 even
# campaigns x 5 segments from the base model and spends 5M simulated impressions on the
# shippable ones (clicks only, readers from the tune half of user split 0); seeds 1 and 2 show
# the same lines to new readers with new clicks (--lines-from) and train with their own DPO
# seed: their spread is click noise + optimisation, not pool sampling (CPU time, see
# docs/generator.md). Each seed: DPO on pairs the clicks tell apart (ratio >= 1.1 and >= 1.5
# standard errors), KL checked on samples against the base. The judge: the 60 odd campaigns
# (10 per category) x 5 segments, 4 lines each, world v2's expected CTR over 512 users per
# segment from the judge half, without replacement. Writes $OUT.
#
# Why 20 DPO steps, not 40. At 40 steps (docs/results/generator_clicks.json) the judge saw
# distinct-2 at 0.86-0.88x the base's (bar 0.9x) and seed 1's flagged share a point above the
# base's, with the lift (+47 % median) far above the +15 % bar. The length was chosen on the
# tuning side only: seed 0's run, checkpointed at 20 and 30 steps (the trajectory of a
# --steps 20 run: experiments/generator_dpo_ckpt.py), sampled on 30 of its own even campaigns
# x 5 segments x 4 lines with the base's seeds (experiments/generator_tuneside.py,
# docs/results/generator_clicks_tuneside.json):
#
#   steps   distinct-2 (x base 0.921)   audit-flagged (base 53.4 %)   sampled KL to base
#     20          0.845 (0.917x)                 51.8 %                     0.80
#     30          0.812 (0.881x)                 52.4 %                     1.88
#     40          0.790 (0.857x)                 50.7 %                     3.78
#
# The rule, written before these numbers: distinct-2 >= 0.93x (a margin for seed spread),
# flagged <= base, KL <= 6, then the largest KL. No length met the 0.93x margin; 20 steps is
# the only one that meets the issue's own bars (>= 0.9x, not above the base) on the tuning
# side, so it is the recipe — on a thinner margin than the rule asked for. A lower lr
# (2.5e-5) and diversity-aware pairs (--pairing extremes) were started and stopped unmeasured
# (no CPU). Judged (docs/results/generator_clicks.json): lifts +25.6 / +32.9 / +28.7 %, median
# +28.7 %, mean +29.1 % [+14.1, +46.6]; distinct-2 0.94 / 0.92 / 0.92x; KL 1.01 / 1.04 / 1.31;
# flagged 57.4 / 55.6 / 55.7 % against the base's 61.3 %: every bar met in every seed.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RUNS:-runs/gc}
CFG=docs/results/world_v2.toml
STEPS=${STEPS:-20}
VER=${VER:-clicks-r1-${STEPS}st}  # model versions $VER-s0 … (runs/gc/s*/dpo hold clicks-r1-s*, 40 steps)
OUT=${OUT:-docs/results/generator_clicks.json}
JN=${JUDGE_N:-4}
export OMP_NUM_THREADS=1
run() { nice -n 19 "$@"; }
cl() { run .venv/bin/copyloop "$@"; }
judge() { run .venv/bin/python -m copyloop.generator.judge "$@"; }
mkdir -p "$R"/s0 "$R"/s1 "$R"/s2 "$R"/judge

pool0() {
  if [ -f "$R/s0/pool.running" ]; then wait_for "$R/s0/pool.parquet"; fi
  [ -f "$R/s0/pool.parquet" ] || cl generator pool --signal clicks --config $CFG --campaigns even \
    --n 8 --impressions 5000000 --split-seed 0 --seed 0 --out "$R/s0/pool.parquet" --json
}
reclick() {  # seed
  [ -f "$R/s$1/pool.parquet" ] || cl generator pool --signal clicks --config $CFG --campaigns even \
    --n 8 --impressions 5000000 --split-seed 0 --seed "$1" --lines-from "$R/s0/pool.parquet" \
    --out "$R/s$1/pool.parquet" --json
}
dpo() {  # seed
  [ -f "$R/s$1/$VER/metrics.json" ] || cl generator tune --mode dpo --config $CFG \
    --pool "$R/s$1/pool.parquet" --pairing all --pairs-per-prompt 4 --min-ratio 1.1 --min-z 1.5 \
    --steps "$STEPS" --batch-size 16 --lr 5e-5 --kl-coef 0.1 --kl-anchor base --kl-budget 6 \
    --eval-every 10 --kl-prompts 12 --seed "$1" --version "$VER-s$1" --out "$R/s$1/$VER"
}
wait_for() { while [ ! -f "$1" ]; do sleep 20; done; }
judged() {  # name model  (a <name>.running marker: another process is judging it; wait)
  if [ -f "$R/judge/$1.running" ]; then wait_for "$R/judge/$1.json"; fi
  [ -f "$R/judge/$1.json" ] || judge sample --model "$2" --n "$JN" --out "$R/judge/$1.json"
}

lane1() { pool0; reclick 1; reclick 2; dpo 0; judged "$VER-s0" "$R/s0/$VER"; dpo 2; judged "$VER-s2" "$R/s2/$VER"; }
lane2() { judged base base; wait_for "$R/s1/pool.parquet"; dpo 1; judged "$VER-s1" "$R/s1/$VER"; }
lane1 > "$R/lane1.log" 2>&1 &
p1=$!
lane2 > "$R/lane2.log" 2>&1 &
p2=$!
wait $p1 $p2
.venv/bin/python -m copyloop.generator.judge report --base "$R/judge/base.json" \
  --tuned "$R/judge/$VER-s0.json" "$R/judge/$VER-s1.json" "$R/judge/$VER-s2.json" \
  --note "round 1 of the click recipe, $STEPS DPO steps, 3 training seeds (see experiments/generator_clicks.sh)" \
  --out "$OUT"
