"""`harness diff-impl --ranks N`: two model files that agree unsharded but shard
differently. The fork's shard() gives the MoE its sharding group on layer 0 only, so
`harness run --impl` fails it at 2 ranks; diff-impl must say so too, naming the layer."""

import pytest


@pytest.fixture(scope="module")
def files(tmp_path_factory, mlx_lm_sources):
    own = mlx_lm_sources.SOURCES / "models/qwen3_moe.py"
    fork = tmp_path_factory.mktemp("fork") / "qwen3_moe.py"
    fork.write_text(mlx_lm_sources.moe_group_on_layer_zero(own.read_text()))
    return str(own), str(fork)


@pytest.mark.multirank
def test_harness_run_fails_the_fork_at_two_ranks(files, run_cli, db_path):
    _, fork = files
    result = run_cli(
        "run", "--arch", "qwen3_moe", "--ranks", "2", "--strategy", "tp",
        "--impl", f"qwen3_moe={fork}", "--db", db_path, "--no-goldens",
    )  # fmt: skip
    assert result.code == 1, result.out + result.err
    assert "first divergent layer 1 (mlp/moe)" in result.out


@pytest.mark.multirank
def test_diff_impl_finds_the_sharding_regression_and_its_layer(files, run_cli):
    own, fork = files
    result = run_cli("diff-impl", "qwen3_moe", own, fork, "--ranks", "2")
    assert result.code == 1, result.out + result.err
    lines = result.out.splitlines()
    # Unsharded the two files are the same model.
    assert f"qwen3_moe: {fork} vs {own}: same within tolerance" in lines, result.out
    # Tensor parallel: the fork against its own single-rank run, and against mlx-lm's
    # sharded run, both name layer 1's MoE.
    at = lines.index(f"qwen3_moe tp on 2 ranks: {fork} vs {own}: differ when sharded")
    assert lines[at + 1] == f"  {own}: pass against its own single-rank run", result.out
    assert lines[at + 2].startswith(f"  {fork}: fail against its own single-rank run: rank 0:")
    assert "first divergent layer 1 (mlp/moe)" in lines[at + 2], result.out
    assert lines[at + 3].startswith(f"  sharded {fork} vs sharded {own}: max|Δ|")
    assert lines[at + 3].endswith("first divergent layer 1 (mlp/moe)"), result.out
    # Pipeline parallel does not call shard(): the same.
    pp = f"qwen3_moe pp on 2 ranks: {fork} vs {own}: same within tolerance when sharded"
    assert pp in lines, result.out


@pytest.mark.multirank
def test_diff_impl_of_one_file_sharded_is_the_same(files, run_cli):
    own, _ = files
    result = run_cli("diff-impl", "qwen3_moe", own, own, "--ranks", "2", "--strategy", "tp")
    assert result.code == 0, result.out + result.err
    assert f"qwen3_moe tp on 2 ranks: {own} vs {own}: same within tolerance when sharded" in (
        result.out
    )
    assert "pp on 2 ranks" not in result.out


# Refused before anything runs: no ranks launched.
@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--ranks", "2", "--strategy", "ep"), "--strategy is one of tp, pp, not 'ep'"),
        (("--strategy", "tp"), "--strategy needs --ranks N"),
        (("--ranks", "0"), "--ranks must be at least 1"),
    ],
)
def test_bad_input_is_one_sentence(files, run_cli, assert_one_line_error, args, fragment):
    own, fork = files
    assert_one_line_error(run_cli("diff-impl", "qwen3_moe", own, fork, *args), fragment)


@pytest.mark.envs
@pytest.mark.multirank
def test_the_issue_command_against_the_published_release(files, run_cli):
    """As the issue ran it: the release from the package index (a cached environment)
    against the fork, sharded on 2 ranks."""
    _, fork = files
    result = run_cli("diff-impl", "qwen3_moe", "0.32.2", fork, "--ranks", "2", "--strategy", "tp")
    assert result.code == 1, result.out + result.err
    assert f"qwen3_moe tp on 2 ranks: {fork} vs mlx-lm 0.32.2: differ when sharded" in result.out
    assert result.out.rstrip().endswith("first divergent layer 1 (mlp/moe)"), result.out
