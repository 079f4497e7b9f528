"""The release list comes from the package index over HTTP (a local one here, speaking the
simple API in JSON), yanked releases left out; bad input is one sentence."""

import pytest

from harness.bisect import releases

VERSIONS = ["0.29.1", "0.30.0", "0.30.2", "0.31.0", "0.31.1", "0.32.0rc1", "0.32.0", "0.4.0"]


@pytest.fixture
def index(monkeypatch, package_index):
    with package_index.serve(VERSIONS, yanked={"0.31.0"}) as url:
        package_index.use(monkeypatch, url)
        yield


def test_between_orders_versions_and_leaves_out_yanked_and_prereleases(index):
    assert releases.between("0.30.0", "0.32.0") == ["0.30.0", "0.30.2", "0.31.1", "0.32.0"]
    assert releases.between("0.32.0", "0.29.1", inverse=True)[0] == "0.29.1"


def test_bad_input_is_one_sentence(index, run_cli, db_path, assert_one_line_error):
    def versions(*args):
        return run_cli("bisect", "versions", *args, "--arch", "qwen3_moe", "--db", db_path)

    assert_one_line_error(versions("--good", "0.30.1", "--bad", "0.32.0"), "no release '0.30.1'")
    assert_one_line_error(versions("--good", "0.31.0", "--bad", "0.32.0"), "was yanked")
    assert_one_line_error(
        versions("--good", "0.32.0", "--bad", "0.30.0"), "good release must be older", "--inverse"
    )
    assert_one_line_error(
        versions("--good", "0.30.0", "--bad", "0.30.0"), "good release must be older"
    )
    assert_one_line_error(
        versions("--good", "0.30.0", "--bad", "0.32.0", "--inverse"), "bad release must be older"
    )


def test_no_network_to_the_index(
    monkeypatch, run_cli, db_path, assert_one_line_error, package_index
):
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    package_index.use(monkeypatch, "http://127.0.0.1:9/simple")
    result = run_cli(
        "bisect",
        "versions",
        "--good",
        "0.30.0",
        "--bad",
        "0.32.0",
        "--arch",
        "qwen3_moe",
        "--db",
        db_path,
    )
    assert_one_line_error(result, "cannot reach the package index at http://127.0.0.1:9/simple")
