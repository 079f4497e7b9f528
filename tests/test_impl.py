"""Alternative model files: `--impl` loads them as mlx-lm loads its own modules, and
`diff-impl` finds the layer where one differs from mlx-lm's own."""

import sys
import time

import pytest

from harness.case import Case
from harness.models import impl
from harness.run.rank.golden_lifecycle import reference_output


@pytest.fixture
def forked(tmp_path, mlx_lm_sources):
    """qwen3_moe.py as a fork would change it: layer 2's MoE output scaled by 1.01."""
    path = tmp_path / "qwen3_moe_fork.py"
    path.write_text(
        mlx_lm_sources.scale_moe_output(
            (mlx_lm_sources.SOURCES / "models/qwen3_moe.py").read_text(), layer=2
        )
    )
    return path


@pytest.fixture
def restore_modules():
    """install() replaces mlx_lm.models.qwen3_moe for the process: put mlx-lm's back."""
    import mlx_lm.models.qwen3_moe as original

    yield
    sys.modules["mlx_lm.models.qwen3_moe"] = original
    import mlx_lm.models

    mlx_lm.models.qwen3_moe = original
    from harness.models import impl

    impl._INSTALLED.clear()


def test_diff_impl_finds_the_layer_that_differs(forked, run_cli, mlx_lm_sources):
    own = str(mlx_lm_sources.SOURCES / "models/qwen3_moe.py")
    result = run_cli("diff-impl", "qwen3_moe", own, str(forked))
    assert result.code == 1, result.err
    assert "qwen3_moe: " in result.out and ": differ" in result.out
    # The scaling sits after the MoE block returns: its output matches, the layer's does not.
    assert "first divergent layer 2 (layer output)" in result.out


def test_diff_impl_of_identical_files_is_the_same(run_cli, mlx_lm_sources):
    own = str(mlx_lm_sources.SOURCES / "models/qwen3_moe.py")
    result = run_cli("diff-impl", "qwen3_moe", own, own)
    assert result.code == 0, result.err
    assert "same within tolerance" in result.out


def test_diff_impl_names_a_hanging_implementation_within_its_timeout(
    tmp_path, run_cli, mlx_lm_sources
):
    """A model file whose forward never returns: the reference runs on a rank under the
    watchdog, so the diff ends at its --timeout with the rank's Python stack, exit 1."""
    hanging = tmp_path / "my_qwen3_moe.py"
    own = mlx_lm_sources.SOURCES / "models/qwen3_moe.py"
    hanging.write_text(mlx_lm_sources.hang_in_forward(own.read_text()))
    started = time.monotonic()
    result = run_cli("diff-impl", "qwen3_moe", str(own), str(hanging), "--timeout", "4")
    assert result.code == 1, result.out + result.err
    assert time.monotonic() - started < 60, "the hang is bounded by --timeout"
    first = result.out.splitlines()[0]
    assert first.startswith(f"qwen3_moe: not compared: {hanging}: timeout: the reference did")
    assert "within 4s (--timeout)" in first
    assert f'File "{hanging}"' in result.out, "the hung rank's Python stack, in the model"
    assert "on 1 ranks" not in result.out, "nothing runs sharded at one rank"


def test_install_makes_the_model_type_use_the_file(forked, restore_modules):
    case = Case("qwen3_moe", strategy="none", decode_steps=1)
    before = reference_output(case)
    impl.install(impl.parse([f"qwen3_moe={forked}"]))
    after = reference_output(case)
    assert sys.modules["mlx_lm.models.qwen3_moe"].__file__ == str(forked)
    assert abs(after.prefill - before.prefill).max() > 1e-4


def test_what_the_zoo_finds_supported_follows_the_installed_file(
    tmp_path, restore_modules, mlx_lm_sources
):
    """No cache to clear by hand: support() is remembered per installed model file."""
    from harness.zoo import support

    assert support("qwen3_moe").tp
    unshardable = tmp_path / "qwen3_moe_unshardable.py"
    source = (mlx_lm_sources.SOURCES / "models/qwen3_moe.py").read_text()
    unshardable.write_text(source.replace("def shard(", "def not_shard("))
    impl.install({"qwen3_moe": str(unshardable)})
    assert not support("qwen3_moe").tp and support("qwen3_moe").available


def test_a_file_that_does_not_define_the_model_type(
    tmp_path, run_cli, assert_one_line_error, mlx_lm_sources
):
    stray = tmp_path / "helpers.py"
    stray.write_text("def helper():\n    return 1\n")
    result = run_cli(
        "diff-impl", "qwen3_moe", str(mlx_lm_sources.SOURCES / "models/qwen3_moe.py"), str(stray)
    )
    assert_one_line_error(result, "does not define Model and ModelArgs", "qwen3_moe")


def test_a_model_type_the_zoo_does_not_have(run_cli, assert_one_line_error):
    result = run_cli("diff-impl", "qwen9_moe", "a.py", "b.py")
    assert_one_line_error(result, "no architecture of the zoo has model_type 'qwen9_moe'")


def test_impl_option_needs_type_and_file(tmp_path):
    with pytest.raises(Exception, match="MODEL_TYPE=path/to/file.py"):
        impl.parse(["qwen3_moe"])
    with pytest.raises(Exception, match="is not a Python file"):
        impl.parse([f"qwen3_moe={tmp_path / 'missing.py'}"])


def test_golden_verify_builds_from_the_impl_file(forked, restore_modules, tmp_path, run_cli):
    goldens = str(tmp_path / "goldens")
    assert run_cli("golden", "record", "--arch", "qwen3_moe", "--dir", goldens).code == 0
    result = run_cli(
        "golden", "verify", "--arch", "qwen3_moe", "--dir", goldens, "--impl", f"qwen3_moe={forked}"
    )
    assert result.code == 1, result.err
    assert "changed numerically: qwen3_moe" in result.out


def test_golden_verify_goes_on_past_a_case_that_cannot_run(restore_modules, tmp_path, run_cli):
    goldens = str(tmp_path / "goldens")
    for arch in ("qwen3_moe", "deepseek_v3"):
        assert run_cli("golden", "record", "--arch", arch, "--dir", goldens).code == 0
    # As an older release's loader API would: the model type exists, building it fails.
    broken = tmp_path / "qwen3_moe_old.py"
    broken.write_text(
        "class ModelArgs:\n"
        "    @classmethod\n"
        "    def from_dict(cls, params):\n"
        "        return cls()\n\n"
        "class Model:\n"
        "    def __init__(self, args):\n"
        "        raise TypeError(\"__init__() got an unexpected keyword argument 'x'\")\n"
    )
    result = run_cli("golden", "verify", "--dir", goldens, "--impl", f"qwen3_moe={broken}")
    assert result.code == 0, result.out + result.err
    rows = {
        line.split()[1].split("-")[0]: line for line in result.out.splitlines() if "-fp32-" in line
    }
    assert " match " in rows["deepseek_v3"]
    assert " unavailable " in rows["qwen3_moe"] and "unexpected keyword" in rows["qwen3_moe"]


@pytest.mark.multirank
def test_run_builds_the_impl_file_on_every_rank(forked, restore_modules, tmp_path, run_cli):
    """Sharded run and references both come from the fork (so they agree), and the fork's
    numbers move away from the golden mlx-lm's own file recorded: proof the ranks loaded it."""
    goldens = str(tmp_path / "goldens")
    assert run_cli("golden", "record", "--arch", "qwen3_moe", "--dir", goldens).code == 0
    db = str(tmp_path / "impl.db")
    result = run_cli(
        "run",
        "--arch",
        "qwen3_moe",
        "--strategy",
        "tp",
        "--ranks",
        "2",
        "--goldens",
        goldens,
        "--impl",
        f"qwen3_moe={forked}",
        "--db",
        db,
    )
    assert result.code == 1, result.out + result.err
    from harness.records import store

    _, (case,) = store.get_run(store.open_db(db), None)
    assert case["status"] == "fail" and case["golden"] == "mismatch"
    assert case["max_abs"] < 1e-4, "the sharded fork agrees with the fork's reference"
    assert "reference differs from golden" in case["reason"]
