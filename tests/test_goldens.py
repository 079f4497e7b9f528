"""The golden lifecycle: record, verify, missing, corrupt, mismatch with obtained file,
intentional update with a reason, and the committed goldens."""

import hashlib
import io
import json

import numpy as np
import pytest

from harness.case import Case
from harness.errors import HarnessError
from harness.paths import SHIPPED_GOLDENS
from harness.records import goldens
from harness.records.ladder import tolerance_for
from harness.run.rank import golden_lifecycle

CASE = Case("qwen3_moe", "tp")  # the CLI's defaults, so --arch selects the same key


@pytest.fixture
def gdir(tmp_path):
    return tmp_path / "goldens"


def _rewrite_npz(gdir, key, change):
    """Change a golden's arrays and re-hash, as a different mlx-lm version would record."""
    npz_path, meta_path = goldens.paths(key, gdir)
    with np.load(npz_path) as data:
        arrays = dict(data)
    change(arrays)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    npz_path.write_bytes(buffer.getvalue())
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    meta["mlx_lm_version"] = "0.0.1-old"
    meta_path.write_text(json.dumps(meta))


def test_record_then_verify_matches_and_keys_ignore_strategy(gdir):
    actions = golden_lifecycle.record([CASE, Case("qwen3_moe", "pp")], gdir)
    assert [a.status for a in actions] == ["written"]  # one golden for both layouts
    npz_path, meta_path = goldens.paths(CASE.key(), gdir)
    meta = json.loads(meta_path.read_text())
    for field in (
        "sha256",
        "key",
        "mlx_version",
        "mlx_lm_version",
        "platform",
        "dtype",
        "created",
        "harness_sha",
        "case",
    ):
        assert field in meta
    assert meta["sha256"] == hashlib.sha256(npz_path.read_bytes()).hexdigest()
    assert "strategy" not in meta["case"]
    assert [a.status for a in golden_lifecycle.verify(None, gdir)] == ["match"]
    assert [a.status for a in golden_lifecycle.record([CASE], gdir)] == ["exists"]


def test_missing_golden_is_reported_and_written_only_when_asked(gdir):
    output = golden_lifecycle.reference_output(CASE)
    tol = tolerance_for(CASE.precision)
    assert goldens.check(CASE, output, tol, gdir).status == "missing"
    assert not goldens.paths(CASE.key(), gdir)[1].exists()
    assert goldens.check(CASE, output, tol, gdir, record_missing=True).status == "written"
    assert goldens.check(CASE, output, tol, gdir).status == "match"


def test_corrupt_golden_is_reported(gdir, run_cli):
    golden_lifecycle.record([CASE], gdir)
    npz_path, _ = goldens.paths(CASE.key(), gdir)
    data = bytearray(npz_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz_path.write_bytes(bytes(data))
    (action,) = golden_lifecycle.verify(None, gdir)
    assert action.status == "corrupt" and "does not match the sha256" in action.check.detail
    result = run_cli("golden", "verify", "--dir", str(gdir))
    assert result.code == 1 and "corrupt" in result.out and "Traceback" not in result.err


def test_unreadable_sidecar_is_corrupt(gdir):
    golden_lifecycle.record([CASE], gdir)
    goldens.paths(CASE.key(), gdir)[1].write_text("{ not json")
    (action,) = golden_lifecycle.verify(None, gdir)
    assert action.status == "corrupt"


def test_mismatch_writes_obtained_and_names_the_version(gdir, run_cli):
    golden_lifecycle.record([CASE], gdir)
    _rewrite_npz(gdir, CASE.key(), lambda a: a.__setitem__("prefill", a["prefill"] + 0.01))
    result = run_cli("golden", "verify", "--dir", str(gdir))
    assert result.code == 1
    assert "mismatch" in result.out and "changed numerically: qwen3_moe" in result.out
    obtained_npz, obtained_meta = goldens.obtained_paths(CASE.key(), gdir)
    assert obtained_npz.exists() and obtained_meta.exists()
    (action,) = golden_lifecycle.verify(None, gdir)
    assert "recorded with mlx-lm 0.0.1-old" in action.check.detail
    diff = run_cli("golden", "diff", CASE.key(), "--dir", str(gdir))
    assert diff.code == 1 and "vs obtained: mismatch" in diff.out and "max|Δ| 1.0e-02" in diff.out


def test_mismatch_in_a_layer_names_it(gdir):
    golden_lifecycle.record([CASE], gdir)

    def shift_layer_2(arrays):
        arrays["prefill"] += 0.01
        for key in list(arrays):
            if key.startswith("norms:layer.2.") or key.startswith("norms:layer.3."):
                arrays[key] = arrays[key] * 1.1

    _rewrite_npz(gdir, CASE.key(), shift_layer_2)
    (action,) = golden_lifecycle.verify(None, gdir)
    assert "first divergent layer 2 vs golden" in action.check.comparison.diagnoses


def test_update_needs_reason_and_keeps_history(gdir, run_cli):
    golden_lifecycle.record([CASE], gdir)
    _rewrite_npz(gdir, CASE.key(), lambda a: a.__setitem__("prefill", a["prefill"] + 0.01))
    with pytest.raises(HarnessError, match="needs --reason"):
        goldens.save(CASE, golden_lifecycle.reference_output(CASE), gdir)
    refused = run_cli("golden", "update", "--arch", "qwen3_moe", "--dir", str(gdir))
    assert refused.code == 2  # typer: missing required --reason
    result = run_cli(
        "golden",
        "update",
        "--arch",
        "qwen3_moe",
        "--precision",
        "fp32",
        "--reason",
        "zoo weights rescaled",
        "--dir",
        str(gdir),
    )
    assert result.code == 0, result.out + result.err
    meta = json.loads(goldens.paths(CASE.key(), gdir)[1].read_text())
    assert meta["history"][-1]["reason"] == "zoo weights rescaled"
    assert meta["history"][-1]["mlx_lm_version"]
    assert [a.status for a in golden_lifecycle.verify(None, gdir)] == ["match"]


def test_run_fails_on_golden_mismatch(gdir, run_cli, db_path):
    golden_lifecycle.record([CASE], gdir)
    _rewrite_npz(gdir, CASE.key(), lambda a: a.__setitem__("prefill", a["prefill"] + 0.01))
    result = run_cli(
        "run",
        "--arch",
        "qwen3_moe",
        "--strategy",
        "tp",
        "--repeats",
        "1",
        "--goldens",
        str(gdir),
        "--db",
        db_path,
    )
    assert result.code == 1
    assert "golden mismatch" in result.out


def test_committed_goldens_verify():
    keys = goldens.stored_keys(SHIPPED_GOLDENS)
    assert keys, "goldens for the moe and dense suites are committed"
    actions = golden_lifecycle.verify(None, SHIPPED_GOLDENS)
    bad = [
        (a.key, a.status, a.check.detail if a.check else None)
        for a in actions
        if a.status != "match"
    ]
    assert not bad


def test_committed_goldens_cover_moe_and_dense_suites():
    from harness.models.build import shape_skip_reason
    from harness.suites import load_suite
    from harness.zoo import support

    stored = set(goldens.stored_keys(SHIPPED_GOLDENS))
    for suite in ("moe", "dense"):
        for case in load_suite(suite):
            # A shape mlx-lm cannot batch for the architecture never runs: no golden; nor
            # has a low-precision case (Case.low_precision).
            if support(case.arch).available and not shape_skip_reason(case):
                if case.low_precision:
                    continue
                assert case.key() in stored, (suite, case.label())


def test_large_vocabulary_goldens_keep_topk_logprobs(gdir, monkeypatch):
    """Real models: top-k logprobs per position and greedy tokens, not the full vocabulary."""
    monkeypatch.setattr(goldens, "FULL_LOGITS_MAX_VOCAB", 100)  # the zoo's 256 counts as large
    golden_lifecycle.record([CASE], gdir)
    npz_path, _ = goldens.paths(CASE.key(), gdir)
    with np.load(npz_path) as data:
        names = set(data.files)
        assert data["topk_ids:prefill"].shape[-1] == goldens.GOLDEN_TOP_K
    assert "prefill" not in names and {"tokens", "topk_logprobs:decode"} <= names
    assert [a.status for a in golden_lifecycle.verify(None, gdir)] == ["match"]

    def nudge(arrays):
        arrays["topk_logprobs:prefill"] = arrays["topk_logprobs:prefill"] + 0.01

    _rewrite_npz(gdir, CASE.key(), nudge)
    (action,) = golden_lifecycle.verify(None, gdir)
    assert action.status == "mismatch"
    assert action.check.comparison.metrics.max_abs == pytest.approx(0.01, rel=0.05)
    assert goldens.obtained_paths(CASE.key(), gdir)[0].exists()
    assert golden_lifecycle.diff_golden(CASE.key(), gdir).check.status == "mismatch"
