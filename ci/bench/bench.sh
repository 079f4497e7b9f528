#!/usr/bin/env bash
# Benchmark, not a test: wall time of the bare floor script and of `harness run` on the
# same 30 cases at 2 ranks (alternating, so both see the same machine), and of the moe
# suite at 1 and 2 ranks; REPEATS runs each, medians and the ratio printed.
# The floor script runs under a plain mlx.launch, whose per-rank threads spin on the ranks'
# stdin pipes for the whole job; the harness quiets them (launch.Job), so on a 2-core
# machine it can come in under the "floor" (0.62x measured, README "What a run does").
# Usage: ci/bench/bench.sh [REPEATS]   (run from the repository root)
set -euo pipefail
repeats=${1:-3}
py=${PYTHON:-.venv/bin/python}
bin=$(dirname "$py")
db=$(mktemp -d)/bench.db

wall() {  # wall seconds of a command, its output discarded
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1 || true
    end=$(date +%s.%N)
    "$py" -c "print(round($end - $start, 2))"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

bench() {
    local name=$1; shift
    local times=()
    for _ in $(seq "$repeats"); do times+=("$(wall "$@")"); done
    printf '%-34s median %6.1f s  (runs: %s)\n' "$name" "$(printf '%s\n' "${times[@]}" | median)" "${times[*]}"
}

floor=() harness=()
for _ in $(seq "$repeats"); do
    floor+=("$(wall "$bin/mlx.launch" -n 2 --backend ring --python "$py" ci/bench/floor.py)")
    harness+=("$(wall "$bin/harness" run --suite ci/bench/floor.toml --ranks 2 --db "$db")")
done
f=$(printf '%s\n' "${floor[@]}" | median)
h=$(printf '%s\n' "${harness[@]}" | median)
printf '%-34s median %6.1f s  (runs: %s)\n' "floor script, 30 cases, 2 ranks" "$f" "${floor[*]}"
printf '%-34s median %6.1f s  (runs: %s)\n' "harness, same 30 cases, 2 ranks" "$h" "${harness[*]}"
"$py" -c "print(f'harness / floor: {$h / $f:.2f}x')"
bench "harness run --suite moe --ranks 1" "$bin/harness" run --suite moe --ranks 1 --db "$db"
bench "harness run --suite moe --ranks 2" "$bin/harness" run --suite moe --ranks 2 --db "$db"
