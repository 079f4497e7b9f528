#!/usr/bin/env bash
# Benchmark, not a test. Wall time, alternating so every command sees the same machine,
# REPEATS runs each (default 5), medians and ratios printed:
#   1. the bare floor script (ci/bench/floor.py: its 2 ranks start with no launcher between
#      them) against `harness run` on the same 30 cases at 2 ranks;
#   2. a suite whose every case's strategy raises (ci/bench/external.py:unsupported)
#      against the same suite passing (external.py:tensor_parallel): a refusal costs no
#      relaunch, the ranks stay in step;
#   3. `harness run --suite moe --ranks 2`.
# Usage: ci/bench/bench.sh [REPEATS]   (run from the repository root; say `uptime` with it)
set -euo pipefail
repeats=${1:-5}
py=${PYTHON:-.venv/bin/python}
bin=$(dirname "$py")
db=$(mktemp -d)/bench.db
tp=()
for arch in qwen3_moe deepseek_v3 glm4_moe gpt_oss minimax kimi_k25 mistral4 step3p5; do
    tp+=(--arch "$arch")
done

wall() {  # wall seconds of a command, its output discarded
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1 || true
    end=$(date +%s.%N)
    "$py" -c "print(round($end - $start, 2))"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

pair() {  # NAME_A NAME_B -- A... -- B...: alternating runs, medians and B/A
    local name_a=$1 name_b=$2; shift 3
    local a=() b=() cmd_a=() cmd_b=() side=a
    for word in "$@"; do
        if [ "$word" = "--" ]; then side=b; continue; fi
        if [ $side = a ]; then cmd_a+=("$word"); else cmd_b+=("$word"); fi
    done
    for _ in $(seq "$repeats"); do
        a+=("$(wall "${cmd_a[@]}")")
        b+=("$(wall "${cmd_b[@]}")")
    done
    local ma mb
    ma=$(printf '%s\n' "${a[@]}" | median)
    mb=$(printf '%s\n' "${b[@]}" | median)
    printf '%-44s median %6.2f s  (runs: %s)\n' "$name_a" "$ma" "${a[*]}"
    printf '%-44s median %6.2f s  (runs: %s)\n' "$name_b" "$mb" "${b[*]}"
    "$py" -c "print(f'{\"$name_b\"} / {\"$name_a\"}: {$mb / $ma:.2f}x')"
}

uptime
pair "floor script, 30 cases, 2 ranks" "harness run, same 30 cases, 2 ranks" -- \
    "$py" ci/bench/floor.py -- \
    "$bin/harness" run --suite ci/bench/floor.toml --ranks 2 --db "$db"
pair "16 cases passing (external tp)" "16 cases whose strategy raises" -- \
    "$bin/harness" run "${tp[@]}" --precision fp32 --precision q4 --ranks 2 \
        --strategy ci/bench/external.py:tensor_parallel --db "$db" -- \
    "$bin/harness" run "${tp[@]}" --precision fp32 --precision q4 --ranks 2 \
        --strategy ci/bench/external.py:unsupported --db "$db"
times=()
for _ in $(seq "$repeats"); do
    times+=("$(wall "$bin/harness" run --suite moe --ranks 2 --db "$db")")
done
printf '%-44s median %6.2f s  (runs: %s)\n' "harness run --suite moe --ranks 2" \
    "$(printf '%s\n' "${times[@]}" | median)" "${times[*]}"
uptime
