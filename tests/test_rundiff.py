"""`harness compare` and the throughput noise rule, on constructed runs."""

import random
import sqlite3

import pytest

from harness.records import noise

STEADY = ([0.010, 0.011, 0.0105], [0.002, 0.0021, 0.00205])
SMOKE = ["qwen3_moe", "deepseek_v3", "llama", "gpt_oss"]


def slower(seconds, factor):
    return tuple([s * factor for s in part] for part in seconds)


def noisy_runs(count: int, cases: int = 8, seed: int = 0) -> list[dict]:
    """Runs as this machine gives them with local ranks kept to their cores (measured with
    ci/bench/tok_s_noise.sh: quiet unchanged runs of 16 cases stayed within 0.83-1.2x of
    their history, prefill and decode): each part of each case moves ~15% from run to run,
    one part in ten is hit by a burst of load (2-4x slower) and one case in twenty wholly;
    a case with a part under half its level is timed again (`loop.second_look`), the
    faster look kept per part; the whole run drifts."""
    rng = random.Random(seed)

    def look(machine: float) -> dict[str, float]:
        whole = rng.random() < 0.05
        levels = {}
        for part in "pd":
            level = 100 * machine * rng.lognormvariate(0, 0.15)
            if whole or rng.random() < 0.1:
                level /= rng.uniform(2, 4)
            levels[part] = level
        return levels

    runs = []
    for _ in range(count):
        machine = rng.lognormvariate(0, 0.3)
        run = {}
        for case in range(cases):
            levels = look(machine)
            if any(level < 50 * machine for level in levels.values()):
                again = look(machine)
                levels = {part: max(levels[part], again[part]) for part in levels}
            for part, level in levels.items():
                run[(case, part)] = [level * s for s in (1, 1.02, 0.98)]
        runs.append(run)
    return runs


def test_judge_rarely_flags_unchanged_noisy_runs():
    """Noise alone: a burst slows a part of a case, a clear drop needs every part of it
    under 0.5x at once after the second look (a part alone needs 3 runs below all of >= 10
    baseline runs)."""
    judged = flagged = 0
    for seed in range(30):
        runs = noisy_runs(26, seed=seed)
        for end in range(11, 27):
            verdicts, _ = noise.judge(runs[:end])
            judged += 1
            flagged += any(v.regressed for v in verdicts.values())
    assert judged == 480 and flagged / judged < 0.03, flagged


def test_judge_flags_a_clear_drop_in_its_first_run():
    """Every part of one case at a third of its speed: flagged in the first slow run, after
    10 earlier runs, and no other case."""
    runs = noisy_runs(11, seed=3)
    runs[-1][(2, "p")] = [x / 3 for x in runs[-1][(2, "p")]]
    runs[-1][(2, "d")] = [x / 3 for x in runs[-1][(2, "d")]]
    verdicts, _ = noise.judge(runs)
    assert sorted(k for k, v in verdicts.items() if v.regressed) == [(2, "d"), (2, "p")]
    assert "every part of the case under 0.5x its history in this run" in verdicts[(2, "p")].reason


@pytest.mark.parametrize("part", ["d", "p"])
def test_judge_flags_a_clear_drop_of_one_part_alone_by_its_third_run(part):
    """Decode alone at a third of its speed (a per-step sync), prefill unchanged: a suspect
    worth a second look in its first two slow runs, flagged in the third; the other part
    and the other cases never."""
    runs = noisy_runs(14, seed=3)  # 11 unchanged runs, then 3 slowed
    for run in runs[-3:]:
        run[(2, part)] = [x / 3 for x in run[(2, part)]]
    for end in (12, 13):
        verdicts, _ = noise.judge(runs[:end])
        assert verdicts[(2, part)].suspect and verdicts[(2, part)].look
        assert not any(v.regressed for v in verdicts.values())
    verdicts, _ = noise.judge(runs)
    assert [k for k, v in verdicts.items() if v.regressed] == [(2, part)]


def test_judge_flags_a_smaller_step_that_persists_and_only_suspects_one_run():
    runs = [{m: [100.0, 101.0, 99.0] for m in range(6)} for _ in range(13)]
    for run in runs[-3:]:
        run["slow"] = [65.0, 66.0, 64.0]
    for run in runs[:-3]:
        run["slow"] = [100.0, 98.0, 102.0]
    verdicts, drift = noise.judge(runs)
    assert [k for k, v in verdicts.items() if v.regressed] == ["slow"]
    assert "0.65x its last 10 runs" in verdicts["slow"].reason and drift == pytest.approx(1.0)
    verdicts, _ = noise.judge(runs[:-2])  # the first slow run: a suspect, not a regression
    assert verdicts["slow"].suspect and not verdicts["slow"].regressed


def test_judge_flags_a_smaller_step_of_one_part_by_its_third_run():
    """Decode alone at 0.65x (past noise, short of a clear drop): a suspect in its first
    and second runs, a regression in its third; prefill never."""
    runs = [{(m, part): [100.0, 101.0, 99.0] for m in range(6) for part in "pd"} for _ in range(14)]
    for run in runs[-3:]:
        run[(0, "d")] = [65.0, 66.0, 64.0]
    for end, regressed in ((12, False), (13, False), (14, True)):
        verdicts, _ = noise.judge(runs[:end])
        assert verdicts[(0, "d")].regressed == regressed and verdicts[(0, "d")].suspect != regressed
        assert not verdicts[(0, "p")].regressed and not verdicts[(0, "p")].suspect
    assert "2 of the last 3" in noise.judge(runs[:13])[0][(0, "d")].reason


def test_judge_counts_a_timeout_as_slower_than_anything():
    runs = [{m: [100.0, 101.0, 99.0] for m in range(6)} for _ in range(13)]
    for run in runs[:-3]:
        run["slow"] = [100.0, 98.0, 102.0]
    runs[-3]["slow"], runs[-2]["slow"], runs[-1]["slow"] = [30.0, 31.0, 29.0], [], [30.0] * 3
    verdicts, _ = noise.judge(runs)
    assert verdicts["slow"].regressed
    verdicts, _ = noise.judge(runs[:-1])
    assert "timed out, slower than any of its last 11 runs" in verdicts["slow"].reason


def test_judge_treats_a_uniform_slowdown_as_drift():
    runs = [{m: [100.0, 101.0, 99.0] for m in range(6)} for _ in range(13)]
    for run in runs[-3:]:
        for m in run:
            run[m] = [x * 0.4 for x in run[m]]
    verdicts, drift = noise.judge(runs)
    assert not any(v.regressed or v.suspect for v in verdicts.values())
    assert drift == pytest.approx(0.4)


def test_judge_needs_history():
    runs = [{m: [100.0, 101.0, 99.0] for m in range(6)} for _ in range(noise.MIN_BASELINE)]
    verdicts, drift = noise.judge(runs)
    assert drift is None and "the rule needs 10" in verdicts[0].reason


def test_bench_rule_flags_a_case_that_left_its_neighbours():
    base = [100.0, 101.0, 99.0, 100.5]
    pairs = {f"case{i}": (base, [x * (1 + 0.02 * i) for x in base]) for i in range(5)}
    pairs["slow"] = (base, [x * 0.5 for x in base])
    verdicts, drift = noise.regressions(pairs)
    assert [k for k, v in verdicts.items() if v.regressed] == ["slow"]
    assert "0.50x" in verdicts["slow"].reason and drift.cases == 6


def test_bench_rule_needs_samples_apart():
    base = [100.0, 101.0, 60.0]  # one slow baseline sample overlaps the current ones
    verdict = noise.regression(base, [50.0, 51.0, 70.0], noise.Drift(1.0, 0.05, 10))
    assert not verdict.regressed and "overlap" in verdict.reason


def test_rates_from_seconds():
    assert noise.rates(1000.0, [0.016, 0.016, 0.032]) == [1000.0, 1000.0, 500.0]
    assert noise.rates(None, [0.1]) == [] and noise.rates(10.0, []) == []


def test_compare_flags_flip_new_diagnosis_golden_and_tok_s(run_cli, db_path, record_run):
    baseline = [{"arch": a, "seconds": STEADY, "golden": "match"} for a in SMOKE]
    baseline[3].update(status="fail", diagnoses=["saturated"])
    record_run(db_path, "smoke", baseline)
    current = [dict(o) for o in baseline]
    current[0].update(status="fail", diagnoses=["scaled x2"], golden="mismatch")
    current[1]["seconds"] = slower(STEADY, 3.0)
    current[3]["diagnoses"] = ["saturated", "decode-only"]
    record_run(db_path, "smoke", current)
    result = run_cli("compare", "1", "2", "--db", db_path)
    assert result.code == 1, result.err
    out = result.out
    assert "newly failing" in out and "fail: scaled x2" in out
    assert "golden" in out and "mismatch" in out
    assert "new diagnosis" in out and "decode-only" in out
    assert "4 cases in both runs" in out
    assert "tok/s not judged: run B's database holds 1 earlier run(s)" in out


def test_compare_flags_a_clear_drop_at_once_and_a_smaller_step_once_it_persists(
    run_cli, db_path, record_run
):
    for night in range(13):
        outcomes = [{"arch": a, "seconds": STEADY} for a in SMOKE]
        if night >= 10:
            outcomes[1]["seconds"] = slower(STEADY, 3.0)  # deepseek_v3: a third of its speed
            outcomes[3]["seconds"] = slower(STEADY, 1.5)  # gpt_oss: two thirds
        outcomes += [{"arch": a, "seconds": STEADY} for a in ("glm4_moe", "minimax", "mistral4")]
        record_run(db_path, "smoke", outcomes)
    first = run_cli("compare", "10", "11", "--db", db_path)
    assert first.code == 1, first.out
    flagged = [line for line in first.out.splitlines() if "0.33x its last 10 runs" in line]
    assert len(flagged) == 2 and all("deepseek_v3" in line for line in flagged), first.out
    assert "gpt_oss" in first.out and "prefill tok/s (suspect)" in first.out
    result = run_cli("compare", "12", "13", "--db", db_path)
    assert result.code == 1, result.out
    slowed = [line for line in result.out.splitlines() if "0.67x" in line]
    assert slowed and all("gpt_oss" in line for line in slowed) and "(suspect)" not in slowed[0]
    assert "llama" not in result.out and "qwen3_moe" not in result.out


def test_compare_quiet_on_identical_runs_and_across_files(run_cli, tmp_path, record_run):
    a, b = tmp_path / "last-night.db", tmp_path / "tonight.db"
    outcomes = [{"arch": arch, "seconds": STEADY} for arch in SMOKE]
    record_run(a, "smoke", outcomes)
    record_run(b, "dense", [{"arch": "llama"}])
    record_run(b, "smoke", outcomes)
    result = run_cli("compare", "smoke", "smoke", "--db", str(a), "--db", str(b))
    assert result.code == 0, result.out
    assert "run 1 (smoke) -> run 2 (smoke)" in result.out and "no regression" in result.out


def test_compare_reports_added_and_removed_cases(run_cli, db_path, record_run):
    record_run(db_path, "smoke", [{"arch": "llama"}, {"arch": "qwen3_moe"}])
    record_run(db_path, "smoke", [{"arch": "llama"}, {"arch": "gpt_oss", "status": "crash"}])
    result = run_cli("compare", "1", "2", "--db", db_path)
    assert result.code == 1  # a new case that crashes is a regression
    assert "added" in result.out and "removed" in result.out
    assert "tok/s not judged" in result.out


def test_compare_bad_inputs(run_cli, db_path, record_run, tmp_path, assert_one_line_error):
    missing = str(tmp_path / "missing.db")
    assert_one_line_error(run_cli("compare", "1", "2", "--db", missing), "no database at")
    record_run(db_path, "smoke", [{"arch": "llama"}])
    assert_one_line_error(run_cli("compare", "1", "7", "--db", db_path), "no run with id 7")
    assert_one_line_error(
        run_cli("compare", "1", "moe", "--db", db_path), "no run with id or suite 'moe'"
    )
    assert_one_line_error(
        run_cli("compare", "1", "1", "--db", db_path, "--db", db_path, "--db", db_path),
        "give --db once",
    )
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("create table t (x)").connection.close()
    result = run_cli("compare", "1", "1", "--db", str(other))
    assert_one_line_error(result, "is not a harness database")
    with sqlite3.connect(other) as conn:  # and it was left as it was
        assert [r[0] for r in conn.execute("select name from sqlite_master")] == ["t"]


BENCH = ["qwen3_moe", "deepseek_v3", "gpt_oss"]


def test_compare_bench_runs_flags_a_slower_generation_and_a_new_crash(
    run_cli, db_path, record_bench_run
):
    baseline = [{"arch": a} for a in BENCH] + [{"arch": "minimax", "strategy": "tp"}]
    record_bench_run(db_path, "bench", baseline)
    current = [dict(o) for o in baseline]
    current[1]["generation"] = [16.0, 17.0, 16.5, 17.2, 16.8]  # a third of the baseline
    current[3].update(status="crash", reason="rank 1 killed by SIGSEGV")
    record_bench_run(db_path, "bench", current)
    result = run_cli("compare", "1", "2", "--db", db_path)
    assert result.code == 1, result.out
    out = result.out
    assert "generation tok/s" in out and "0.33x" in out and "deepseek_v3" in out
    assert "prompt tok/s" not in out, "an unchanged prompt rate is not a change"
    assert "newly failing" in out and "rank 1 killed by SIGSEGV" in out
    assert "4 cases in both runs" in out


def test_compare_bench_runs_quiet_when_only_the_machine_moved(run_cli, db_path, record_bench_run):
    prompt, generation = [1000.0, 1050.0, 980.0, 1020.0], [50.0, 52.0, 49.0, 51.0]
    record_bench_run(
        db_path, "bench", [{"arch": a, "prompt": prompt, "generation": generation} for a in BENCH]
    )
    # Everything at half speed: drift, said once, not a regression of any case.
    half = {"prompt": [x / 2 for x in prompt], "generation": [x / 2 for x in generation]}
    record_bench_run(db_path, "bench", [{"arch": a, **half} for a in BENCH])
    result = run_cli("compare", "1", "bench", "--db", db_path)
    assert result.code == 0, result.out
    assert "no regression" in result.out and "0.50x the baseline" in result.out


def test_compare_refuses_a_bench_run_against_a_case_run(
    run_cli, db_path, record_run, record_bench_run, assert_one_line_error
):
    record_run(db_path, "smoke", [{"arch": "llama"}])
    record_bench_run(db_path, "bench", [{"arch": "llama"}])
    assert_one_line_error(
        run_cli("compare", "1", "2", "--db", db_path), "compare bench runs with bench runs"
    )
