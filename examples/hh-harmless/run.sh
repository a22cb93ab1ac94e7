#!/usr/bin/env bash
# The whole safety example, one stage after another: SFT -> reward model -> its pair
# accuracy -> DPO -> PPO -> the reward model's win rate of DPO and PPO over SFT.
#
#   examples/hh-harmless/run.sh [DATA] [OUT]
#
# DATA defaults to ../shared/data/hh-rlhf-harmless/pairs.jsonl, OUT (logs, JSON results,
# times) to hh-harmless-results/. Extra overrides per stage come from the environment, e.g.
#   PPO_ARGS="training.max_steps=40" examples/hh-harmless/run.sh
# Stages run one at a time on purpose: on a small machine two trainings at once run out of
# memory or slow each other down many times over.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="${1:-../shared/data/hh-rlhf-harmless/pairs.jsonl}"
OUT="${2:-hh-harmless-results}"
mkdir -p "$OUT"
[ -f "$DATA" ] || { echo "no data at $DATA (give the HH pairs file as the first argument)" >&2; exit 2; }

stage() {  # stage NAME COMMAND...: run it, log it, time it
    local name="$1"; shift
    local start=$SECONDS
    echo "== $name: $*" | tee -a "$OUT/times.txt"
    "$@" > "$OUT/$name.log" 2>&1 || { echo "stage $name failed; see $OUT/$name.log" >&2; exit 1; }
    echo "   $name took $((SECONDS - start)) s" | tee -a "$OUT/times.txt"
}
run_id() { grep -oE '^run [0-9]+ completed' "$OUT/$1.log" | grep -oE '[0-9]+' | tail -1; }

# shellcheck disable=SC2086  # the *_ARGS are word lists on purpose
stage sft tuneloop train "$HERE/sft.yaml" "data.train=$DATA" ${SFT_ARGS:-}
SFT=$(run_id sft)
stage reward tuneloop train "$HERE/reward.yaml" "data.train=$DATA" ${REWARD_ARGS:-}
RM=$(run_id reward)
# the run directory holds the held-out pairs (the same 10% every recipe holds out)
VAL="$(dirname "$(grep -oE '^model: .*' "$OUT/reward.log" | cut -d' ' -f2-)")/validation.jsonl"
stage reward_eval tuneloop eval --model "run:$RM" --data "$VAL" --json "$OUT/reward_eval.json"
# shellcheck disable=SC2086
stage dpo tuneloop train "$HERE/dpo.yaml" "model=run:$SFT" "data.train=$DATA" ${DPO_ARGS:-}
DPO=$(run_id dpo)
# shellcheck disable=SC2086
stage win_dpo tuneloop compare "run:$SFT" "run:$DPO" --data "$VAL" --judge "run:$RM" \
    --json "$OUT/win_dpo.json" ${COMPARE_ARGS:-}
# shellcheck disable=SC2086
stage ppo tuneloop train "$HERE/ppo.yaml" "model=run:$SFT" "rl.rewards=[{model: run:$RM}]" \
    "data.train=$DATA" ${PPO_ARGS:-}
PPO=$(run_id ppo)
# shellcheck disable=SC2086
stage win_ppo tuneloop compare "run:$SFT" "run:$PPO" --data "$VAL" --judge "run:$RM" \
    --json "$OUT/win_ppo.json" ${COMPARE_ARGS:-}
echo "runs: sft $SFT, reward $RM, dpo $DPO, ppo $PPO; results in $OUT" | tee -a "$OUT/times.txt"
for pair in "sft $SFT" "reward $RM" "dpo $DPO" "ppo $PPO"; do
    set -- $pair
    tuneloop runs show "$2" > "$OUT/run_$1.json"
done
python "$HERE/report.py" "$OUT" > /dev/null && echo "before/after report: $OUT/report.md"

# optional, and long on a CPU: RLAIF=1 runs an RLAIF round judged by the reward model;
# JUDGE=1 tunes a pairwise judge and measures its agreement with the held-out human labels
if [ "${RLAIF:-0}" = 1 ]; then
    # shellcheck disable=SC2086
    stage rlaif tuneloop rlaif "$HERE/rlaif.yaml" "model=run:$SFT" "rlaif.judge=run:$RM" \
        "data.train=$DATA" --out "$OUT/rlaif" ${RLAIF_ARGS:-}
fi
if [ "${JUDGE:-0}" = 1 ]; then
    # shellcheck disable=SC2086
    stage judge tuneloop train "$HERE/judge.yaml" "data.train=$DATA" ${JUDGE_ARGS:-}
    stage judge_agreement tuneloop judge agreement --judge "run:$(run_id judge)" \
        --pairs "$VAL" --json "$OUT/judge_agreement.json"
fi
