import pytest

from harness import strategies
from harness.errors import HarnessError


def test_builtins():
    assert set(strategies.BUILTIN) == {"none", "tp", "pp"}
    assert strategies.resolve("tp").requires == "tp"
    assert not strategies.resolve("none").external


def test_external_module_function():
    s = strategies.resolve("harness.faults.reduction:double_reduce_mlp")
    assert s.external and s.requires is None and callable(s.fn)


def test_external_file_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text("def shard(model, group):\n    return None\n")
    monkeypatch.chdir(tmp_path)
    name = strategies.normalize("mine.py:shard")
    assert name == f"{tmp_path / 'mine.py'}:shard"
    assert strategies.resolve(name).fn(None, None) is None


def test_returned_model_replaces_the_original():
    s = strategies.Strategy("x", lambda model, group: "wrapped")
    assert s.apply("model", None) == "wrapped"
    s = strategies.Strategy("y", lambda model, group: None)
    assert s.apply("model", None) == "model"


def test_not_callable(tmp_path):
    (tmp_path / "m.py").write_text("shard = 3\n")
    with pytest.raises(HarnessError, match="no callable 'shard'"):
        strategies.resolve(f"{tmp_path / 'm.py'}:shard")
