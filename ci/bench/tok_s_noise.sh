#!/usr/bin/env bash
# Benchmark, not a test: the tok/s rule's false alarms and detection on this machine.
# UNCHANGED runs of 16 MoE cases (8 tensor-parallel architectures x fp32/q4) at 2 ranks into
# one database, then SLOWED runs where the model calls of $SLOW_ARCH take 3x their time
# (ci/bench/slow_strategy.py: SLOW_PART all, decode or prefill calls only); then
# ci/bench/tok_s_judge.py judges every run against the history before it, as
# `harness compare` does.
# Usage: ci/bench/tok_s_noise.sh DB [UNCHANGED=12] [SLOWED=2] [REPEATS=3] [SLOW_ARCH=qwen3_moe]
#        [SLOW_PART=all]   (from the repository root)
# A decode-only 3x slowdown, judged by its third run: ci/bench/tok_s_noise.sh DB 11 3 3
# qwen3_moe decode
set -euo pipefail
db=$1 unchanged=${2:-12} slowed=${3:-2} repeats=${4:-3} slow=${5:-qwen3_moe} part=${6:-all}
archs=(qwen3_moe deepseek_v3 glm4_moe gpt_oss minimax step3p5 exaone_moe longcat_flash)
args=()
for arch in "${archs[@]}"; do args+=(-a "$arch"); done
run() {
    # A slowed case may outlast the watchdog on a busy machine: a timeout, exit code 1.
    .venv/bin/harness run "${args[@]}" -p fp32 -p q4 -n 2 --no-goldens --db "$db" \
        --repeats "$repeats" --strategy ci/bench/slow_strategy.py:slow_tp | tail -1 || true
    uptime
}
for _ in $(seq "$unchanged"); do run; done
for _ in $(seq "$slowed"); do HARNESS_SLOW_ARCH=$slow HARNESS_SLOW_PART=$part run; done
.venv/bin/python ci/bench/tok_s_judge.py "$db"
