"""One finder for shipped and configured data files: env var first, then package data, then the checkout."""

from __future__ import annotations

from pathlib import Path

from layerzero.data_files import DEFAULT_POLICY, MODEL_RULES, find_data_file, packaged_data_file
from layerzero.policy import default_policy_path


def test_shipped_files_are_found_and_the_policy_loader_uses_the_finder():
    for name in (DEFAULT_POLICY, MODEL_RULES):
        path = find_data_file(name)
        assert path is not None and path.is_file() and path.as_posix().endswith(name)
    assert default_policy_path() == find_data_file(DEFAULT_POLICY)
    assert packaged_data_file("configs/no_such_file.yaml") is None


def test_env_var_wins_even_for_a_missing_file_so_the_caller_reports_it(tmp_path, monkeypatch):
    mine = tmp_path / "nope.yaml"
    monkeypatch.setenv("LZ_TEST_B", str(mine))
    monkeypatch.delenv("LZ_TEST_A", raising=False)
    assert find_data_file(MODEL_RULES, env_var=("LZ_TEST_A", "LZ_TEST_B")) == Path(mine)
    monkeypatch.setenv("LZ_TEST_A", "")  # empty means unset
    assert find_data_file(MODEL_RULES, env_var=("LZ_TEST_A", "LZ_TEST_B")) == Path(mine)
    monkeypatch.delenv("LZ_TEST_B")
    assert find_data_file(MODEL_RULES, env_var="LZ_TEST_B") == find_data_file(MODEL_RULES)
    assert find_data_file(MODEL_RULES, env_var="LZ_TEST_B", packaged=False) is None


def test_packaged_data_files_lists_a_shipped_folder():
    from layerzero.data_files import packaged_data_files

    specs = packaged_data_files("patches", ".yaml")
    assert [p.stem for p in specs] == sorted(p.stem for p in specs) and "llama" in {p.stem for p in specs}
    assert all(p.is_file() and p.suffix == ".yaml" for p in specs)
    assert packaged_data_files("no-such-folder", ".yaml") == []
    assert {p.name for p in packaged_data_files("costs", ".json")} >= {"sm90.json"}
