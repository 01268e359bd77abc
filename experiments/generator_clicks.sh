#!/usr/bin/env bash
# Issue 15, items 3-4: the click-only recipe on world v2, judged honestly.
#
#   bash experiments/generator_clicks.sh            # everything, in two lanes (2 cores)
#
# Round 1 of the recipe for 3 training seeds. Seed 0 samples 8 lines for each of the 60 even
# campaigns x 5 segments from the base model and spends 5M simulated impressions on the
# shippable ones (clicks only, readers from the tune half of user split 0); seeds 1 and 2 show
# the same lines to new readers with new clicks (--lines-from) and train with their own DPO
# seed: their spread is click noise + optimisation, not pool sampling (CPU time, see
# docs/generator.md). Each seed: DPO on pairs the clicks tell apart (ratio >= 1.1 and >= 1.5
# standard errors), KL checked on samples against the base. The judge: the 60 odd campaigns
# (10 per category) x 5 segments, 4 lines each, world v2's expected CTR over 512 users per
# segment from the judge half, without replacement. Writes docs/results/generator_clicks.json.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RUNS:-runs/gc}
CFG=docs/results/world_v2.toml
STEPS=${STEPS:-40}
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
  [ -f "$R/s$1/dpo/metrics.json" ] || cl generator tune --mode dpo --config $CFG \
    --pool "$R/s$1/pool.parquet" --pairing all --pairs-per-prompt 4 --min-ratio 1.1 --min-z 1.5 \
    --steps "$STEPS" --batch-size 16 --lr 5e-5 --kl-coef 0.1 --kl-anchor base --kl-budget 6 \
    --eval-every 10 --kl-prompts 12 --seed "$1" --version "clicks-r1-s$1" --out "$R/s$1/dpo"
}
wait_for() { while [ ! -f "$1" ]; do sleep 20; done; }
judged() {  # name model  (a <name>.running marker: another process is judging it; wait)
  if [ -f "$R/judge/$1.running" ]; then wait_for "$R/judge/$1.json"; fi
  [ -f "$R/judge/$1.json" ] || judge sample --model "$2" --n "$JN" --out "$R/judge/$1.json"
}

lane1() { pool0; reclick 1; reclick 2; dpo 0; judged s0 "$R/s0/dpo"; dpo 2; judged s2 "$R/s2/dpo"; }
lane2() { judged base base; wait_for "$R/s1/pool.parquet"; dpo 1; judged s1 "$R/s1/dpo"; }
lane1 > "$R/lane1.log" 2>&1 &
p1=$!
lane2 > "$R/lane2.log" 2>&1 &
p2=$!
wait $p1 $p2
.venv/bin/python -m copyloop.generator.judge report --base "$R/judge/base.json" \
  --tuned "$R/judge/s0.json" "$R/judge/s1.json" "$R/judge/s2.json" \
  --note "round 1 of the click recipe, 3 training seeds (see experiments/generator_clicks.sh)" \
  --out docs/results/generator_clicks.json
