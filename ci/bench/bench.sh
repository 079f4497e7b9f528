#!/usr/bin/env bash
# Benchmark, not a test. Wall time, alternating so every command sees the same machine,
# REPEATS runs each (default 5), medians and ratios printed:
#   1. the bare floor script (ci/bench/floor.py: its 2 ranks start with no launcher between
#      them), the same with its last rank waiting for rank 0 to listen (as the harness's
#      ranks do: no second lost to mlx's ring connect retry), and `harness run` on the same
#      30 cases at 2 ranks;
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

ratio() { "$py" -c "print(f'{$1 / $2:.2f}x')"; }

alternate() {  # NAME... -- CMD... [-- CMD...]: alternating runs; medians into MEDIANS
    local names=() commands=() current="" word
    while [ "$1" != "--" ]; do names+=("$1"); shift; done
    shift
    for word in "$@"; do
        if [ "$word" = "--" ]; then commands+=("$current"); current=""; continue; fi
        current+=" $(printf '%q' "$word")"
    done
    commands+=("$current")
    local times=() i
    for _ in $(seq "$repeats"); do
        for i in "${!commands[@]}"; do
            times[i]+=" $(eval "wall ${commands[i]}")"
        done
    done
    MEDIANS=()
    for i in "${!commands[@]}"; do
        MEDIANS[i]=$(printf '%s\n' ${times[i]} | median)
        printf '%-48s median %6.2f s  (runs:%s)\n' "${names[i]}" "${MEDIANS[i]}" "${times[i]}"
    done
}

uptime
alternate "floor script, 30 cases, 2 ranks" "floor script, its last rank waiting for rank 0" \
    "harness run, same 30 cases, 2 ranks" -- \
    "$py" ci/bench/floor.py -- \
    "$py" ci/bench/floor.py --wait-for-rank0 -- \
    "$bin/harness" run --suite ci/bench/floor.toml --ranks 2 --db "$db"
echo "harness / floor: $(ratio "${MEDIANS[2]}" "${MEDIANS[0]}")," \
    "harness / floor waiting for rank 0: $(ratio "${MEDIANS[2]}" "${MEDIANS[1]}")"
alternate "16 cases passing (external tp)" "16 cases whose strategy raises" -- \
    "$bin/harness" run "${tp[@]}" --precision fp32 --precision q4 --ranks 2 \
        --strategy ci/bench/external.py:tensor_parallel --db "$db" -- \
    "$bin/harness" run "${tp[@]}" --precision fp32 --precision q4 --ranks 2 \
        --strategy ci/bench/external.py:unsupported --db "$db"
echo "raising / passing: $(ratio "${MEDIANS[1]}" "${MEDIANS[0]}")"
times=()
for _ in $(seq "$repeats"); do
    times+=("$(wall "$bin/harness" run --suite moe --ranks 2 --db "$db")")
done
printf '%-44s median %6.2f s  (runs: %s)\n' "harness run --suite moe --ranks 2" \
    "$(printf '%s\n' "${times[@]}" | median)" "${times[*]}"
uptime
