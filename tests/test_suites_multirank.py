"""The main job, as the README's first command runs it: every MoE architecture of the
suite under tp and pp, fp32, 4-bit and 4-bit with bf16 activations, at the short,
long-chunked and mixed shapes, on 2 real ranks, against the committed goldens (fp32 and
4-bit) and the fp32 truth (bf16 activations)."""

import pytest

from harness.records import store

pytestmark = pytest.mark.multirank


def test_moe_suite_passes_on_2_ranks(run_cli, db_path):
    result = run_cli("run", "--suite", "moe", "--ranks", "2", "--repeats", "1", "--db", db_path)
    assert result.code == 0, result.out[-3000:] + result.err
    run_row, cases = store.get_run(store.open_db(db_path), None)
    assert run_row["status"] == "passed" and run_row["ranks"] == 2
    ran = [c for c in cases if c["status"] != "skip"]
    assert len(ran) >= 70 and all(c["status"] == "pass" for c in ran)
    fp32 = [c for c in ran if c["precision"] in ("fp32", "q4")]
    assert all(c["golden"] == "match" for c in fp32), "references match the committed goldens"
    assert {c["strategy"] for c in ran} == {"tp", "pp"}
    assert {c["precision"] for c in ran} >= {"fp32", "q4", "q4-bf16"}
    shapes = {(c["arch"], c["variant"]) for c in ran}
    for arch in {c["arch"] for c in ran}:
        assert {(arch, "shape=long-chunked"), (arch, "shape=mixed")} & shapes, arch
    assert len({a for a, v in shapes if v == "shape=long-chunked"}) >= 20
    skipped = [c for c in cases if c["status"] == "skip"]
    assert all(c["reason"] for c in skipped)


def test_smoke_suite_with_8_bit_passes_on_2_ranks(run_cli, db_path):
    result = run_cli("run", "--suite", "smoke", "--ranks", "2", "--repeats", "1", "--db", db_path)
    assert result.code == 0, result.out[-3000:] + result.err
    _, cases = store.get_run(store.open_db(db_path), None)
    assert "q8" in {c["precision"] for c in cases}
