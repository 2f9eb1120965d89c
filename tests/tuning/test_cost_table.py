"""Cost tables: the bucket of a call, the JSON schema (errors name the field), nearest-bucket lookup, and
the merge of shipped < user < local measurements; a bad table is ignored with one warning."""

from __future__ import annotations

import json
import warnings

import pytest

from layerzero.context import SelectionContext
from layerzero.errors import ConfigValidationError
from layerzero.tuning import cost_table
from layerzero.tuning.cache import TuningCache, put_costs
from layerzero.tuning.cost_table import (
    MAX_LOG2_DISTANCE,
    CostBucket,
    CostTable,
    CostTableSource,
    CostTableWarning,
    Measurement,
    bucket_for,
    context_device_class,
    pow2_ceil,
    table_from_json,
)

DIMS = {"head_dim": 64, "heads": 32, "kv_heads": 8}
OPTS = {"causal": True, "window": None, "softcap": None, "gqa": True, "sinks": False, "mask": None}


def _bucket(tokens: int, kv: int | None = None, **dims) -> CostBucket:
    return CostBucket.make("attention.prefill", "bfloat16", dims or DIMS, tokens, kv or tokens, OPTS)


def _doc(*rows: dict, device_class: str = "sm90") -> dict:
    return {"schema": 1, "device_class": device_class, "device_name": "test", "versions": {"torch": "2"},
            "created": "2026-01-01", "timer": "fake", "entries": list(rows)}


def _row(kernel: str, us: float, tokens: int = 1024, **extra) -> dict:
    return {**_bucket(tokens).as_json(), "kernel_id": kernel, "median_us": us, "spread": 0.01, **extra}


def test_pow2_and_bucket_of_attention_call():
    assert [pow2_ceil(n) for n in (0, 1, 2, 3, 1000, 1024, 1025)] == [1, 1, 2, 4, 1024, 1024, 2048]
    ctx = SelectionContext(operation="attention.prefill", batch_size=2, seq_len=300, head_dim=64, num_heads=32,
                           num_kv_heads=8, dtype="bf16", device="cuda:0", compute_capability=(9, 0), is_causal=True)
    b = bucket_for("attention.prefill", ctx)
    assert b == _bucket(1024, 512)  # tokens = batch x seq_q rounded up; KV length rounded up
    assert context_device_class(ctx) == "sm90"
    assert context_device_class(SelectionContext(device="cpu")) == "cpu"


def test_bucket_of_norm_and_missing_facts():
    ctx = SelectionContext(operation="rms_norm", batch_size=100, hidden_size=2048, dtype="float32", device="cpu",
                           casting="llama")
    b = bucket_for("rms_norm", ctx)
    assert (b.tokens, dict(b.dims), dict(b.options)) == (128, {"hidden": 2048}, {"casting": "llama", "residual": False})
    assert bucket_for("rms_norm", SelectionContext(operation="rms_norm", dtype="float32")) is None
    assert bucket_for("rms_norm", ctx.replace(dtype=None)) is None


def test_round_trip_through_json():
    table = table_from_json(_doc(_row("a", 10.0), _row("b", 20.0), _row("a", 40.0, tokens=4096)))
    again = table_from_json(json.loads(json.dumps(table.as_json())))
    assert again.entries == table.entries and len(again) == 3
    assert again.lookup(_bucket(1024))[1]["b"].median_us == 20.0


def test_host_time_round_trips_and_decides_the_cost_of_a_host_bound_call():
    doc = _doc(_row("triton", 4.4), _row("torch", 7.8))
    doc["entries"][0]["host_us"], doc["entries"][1]["host_us"] = 53.0, 23.0
    table = table_from_json(json.loads(json.dumps(table_from_json(doc).as_json())))
    times = table.lookup(_bucket(1024))[1]
    assert (times["triton"].host_us, times["triton"].cost_us) == (53.0, 53.0)
    assert (times["torch"].median_us, times["torch"].cost_us) == (7.8, 23.0)
    assert Measurement(30.0, host_us=5.0).cost_us == 30.0 and Measurement(30.0).cost_us == 30.0
    md = cost_table.summary_markdown(table)
    assert "| torch host | 23.0 | triton 2.30 host |" in md
    doc["entries"][1]["noisy"] = True
    again = table_from_json(json.loads(json.dumps(table_from_json(doc).as_json())))
    torch_m = again.lookup(_bucket(1024))[1]["torch"]
    assert torch_m.noisy and not again.lookup(_bucket(1024))[1]["triton"].noisy
    assert "noisy" in cost_table.summary_markdown(again)


def test_issue_time_counts_only_where_the_model_step_can_be_host_bound():
    """A long prefill's GEMMs keep the GPU busy while the host issues ahead: in buckets of 2**23 elements or more
    on the token side, a call costs its device time however long its issue takes; below, the larger of the two."""
    from layerzero.tuning.cost_bucket import DEVICE_BOUND_ELEMENTS, bucket_cost, issue_time_counts, token_elements

    def norm(tokens: int) -> CostBucket:
        return CostBucket.make("rms_norm", "bfloat16", {"hidden": 2048}, tokens, None,
                               {"casting": "llama", "residual": False})

    assert token_elements(norm(4096)) == 4096 * 2048 == DEVICE_BOUND_ELEMENTS
    assert token_elements(_bucket(1024)) == 1024 * 32 * 64  # attention: the query side, heads x head_dim
    assert issue_time_counts(norm(8)) and issue_time_counts(norm(2048)) and not issue_time_counts(norm(4096))
    assert bucket_cost(norm(8), 13.3, 24.1) == 24.1 and bucket_cost(norm(4096), 13.3, 24.1) == 13.3
    # the shipped sm90 numbers of Llama-3.2-1B's hidden norm at 8 and 4096 tokens: Triton issues in ~24 us
    rows = [dict(operation="rms_norm", dtype="bfloat16", dims={"hidden": 2048}, tokens=t, kv_len=None,
                 options={"casting": "llama", "residual": False}, kernel_id=k, median_us=dev, spread=0.01,
                 host_us=host)
            for t, k, dev, host in ((8, "triton", 7.6, 35.9), (8, "torch", 7.7, 14.3),
                                    (4096, "triton", 13.3, 24.1), (4096, "torch", 16.0, 10.1))]
    table = table_from_json(_doc(*rows))
    decode, prefill = table.lookup(norm(8))[1], table.lookup(norm(4096))[1]
    assert min(decode, key=lambda k: decode[k].cost_us) == "torch"  # host-bound: the cheaper launch wins
    assert min(prefill, key=lambda k: prefill[k].cost_us) == "triton"  # device-bound: the faster kernel wins
    assert prefill["triton"].host_us is None and table.entries[norm(4096)]["triton"].host_us == 24.1  # kept raw
    # the call's own bucket decides, not the nearest measured one: 2048 tokens borrow the 4096 row, issue time kept
    near, near_times = table.lookup(norm(2048))
    assert near == norm(4096) and near_times["triton"].cost_us == 24.1
    md = cost_table.summary_markdown(table)
    assert "| rms_norm bfloat16 hidden=2048 tokens=4096 casting=llama | triton | 13.3 | torch 1.20 |" in md
    assert "| rms_norm bfloat16 hidden=2048 tokens=8 casting=llama | torch host | 14.3 |" in md


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(schema=2), "schema"),
    (lambda d: d["entries"][0].update(host_us=-3), "entries[0].host_us"),
    (lambda d: d["entries"][0].update(noisy="yes"), "entries[0].noisy"),
    (lambda d: d.update(device_class=""), "device_class"),
    (lambda d: d.update(entries={}), "entries"),
    (lambda d: d["entries"][0].update(median_us=-1), "entries[0].median_us"),
    (lambda d: d["entries"][0].update(median_us="fast"), "entries[0].median_us"),
    (lambda d: d["entries"][0].update(tokens=1000), "entries[0].tokens"),
    (lambda d: d["entries"][0].update(dims={"heads": 0}), "entries[0].dims"),
    (lambda d: d["entries"][0].pop("kernel_id"), "entries[0].kernel_id"),
    (lambda d: d["entries"][0].update(colour="red"), "entries[0].colour"),
    (lambda d: d["entries"][0].update(options={"causal": [1]}), "entries[0].options"),
])
def test_validation_names_the_field(mutate, field):
    doc = _doc(_row("a", 10.0))
    mutate(doc)
    with pytest.raises(ConfigValidationError) as info:
        table_from_json(doc, origin="t.json")
    assert any(p.field == field for p in info.value.problems), info.value.problems
    assert field in str(info.value)


def test_buckets_with_and_without_a_window_share_a_file():
    windowed = CostBucket.make("attention.prefill", "bfloat16", DIMS, 8192, 8192, {**OPTS, "window": 4096})
    table = CostTable("sm90")
    table.add(windowed, "a", Measurement(2.0))
    table.add(_bucket(8192), "a", Measurement(1.0))  # the same call on a full-attention layer
    again = table_from_json(json.loads(json.dumps(table.as_json())))
    assert again.lookup(windowed)[1]["a"].median_us == 2.0 and again.lookup(_bucket(4096))[0] == _bucket(8192)
    assert cost_table.summary_markdown(again).count("| attention.prefill") == 2


def test_nearest_bucket_within_bound():
    table = table_from_json(_doc(_row("a", 10.0, tokens=1024), _row("b", 99.0, tokens=8192)))
    assert table.lookup(_bucket(1024))[0] == _bucket(1024)  # exact
    found, times = table.lookup(_bucket(2048))  # one doubling in tokens and in KV length: distance 2
    assert found == _bucket(1024) and set(times) == {"a"}
    assert table.lookup(_bucket(4096))[0] == _bucket(8192)  # closer to 8192 than to 1024
    assert table.lookup(_bucket(128)) is None  # 8x away: beyond MAX_LOG2_DISTANCE
    assert MAX_LOG2_DISTANCE < 6
    other_dims = _bucket(1024, head_dim=128, heads=32, kv_heads=8)
    assert table.lookup(other_dims) is None  # different dims: never borrowed
    other_dtype = CostBucket.make("attention.prefill", "float16", DIMS, 1024, 1024, OPTS)
    assert table.lookup(other_dtype) is None


def test_nearest_tie_goes_to_smaller_bucket():
    table = table_from_json(_doc(_row("small", 1.0, tokens=512), _row("large", 1.0, tokens=2048)))
    assert table.lookup(CostBucket.make("attention.prefill", "bfloat16", DIMS, 1024, 1024, OPTS))[0].tokens == 512


def _write(path, *rows, device_class="sm90"):
    path.write_text(json.dumps(_doc(*rows, device_class=device_class)))
    return path


def test_merge_precedence_local_over_user_over_shipped(tmp_path, monkeypatch):
    shipped = table_from_json(_doc(_row("a", 10.0), _row("b", 20.0), _row("c", 30.0)))
    monkeypatch.setattr(cost_table, "shipped_table", lambda cls: shipped if cls == "sm90" else None)
    user = _write(tmp_path / "user.json", _row("b", 5.0), _row("c", 3.0))
    cache = TuningCache(tmp_path / "cache.json", versions={"torch": "x"})
    put_costs(cache, "sm90", _bucket(1024).key(), {"c": 50.0})
    source = CostTableSource(user_path=user, cache=cache)
    times = source("sm90").lookup(_bucket(1024))[1]
    assert {k: (m.median_us, m.source) for k, m in times.items()} == {
        "a": (10.0, "shipped"), "b": (5.0, "user"), "c": (50.0, "local")}
    assert source("cpu") is None  # nothing for this class anywhere


def test_user_table_from_env_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(cost_table, "shipped_table", lambda cls: None)
    _write(tmp_path / "sm90.json", _row("a", 1.0))
    monkeypatch.setenv(cost_table.COST_TABLE_ENV, str(tmp_path))
    source = CostTableSource(use_local=False)
    assert source("sm90").lookup(_bucket(1024))[1]["a"].source == "user"
    assert source("sm80") is None


def test_scoped_local_measurements_go_on_top(tmp_path, monkeypatch):
    monkeypatch.setattr(cost_table, "shipped_table", lambda cls: None)
    cache = TuningCache(tmp_path / "cache.json", versions={"torch": "x"})
    put_costs(cache, "cpu", _bucket(16).key(), {"a": 1.0, "b": 2.0})
    put_costs(cache, "cpu", _bucket(16).key(), {"b": 0.5}, scope="llama-123")
    general = CostTableSource(cache=cache)("cpu").lookup(_bucket(16))[1]
    scoped = CostTableSource(cache=cache, scopes=("llama-123",))("cpu").lookup(_bucket(16))[1]
    assert general["b"].median_us == 2.0
    assert (scoped["a"].median_us, scoped["b"].median_us, scoped["b"].source) == (1.0, 0.5, "model")


def test_bad_table_is_ignored_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(cost_table, "shipped_table", lambda cls: None)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_doc({**_row("a", 1.0), "median_us": "NaN"})))
    source = CostTableSource(user_path=bad, use_local=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert source("sm90") is None
        assert source("sm90") is None  # loaded once: no second warning
    msgs = [str(w.message) for w in caught if issubclass(w.category, CostTableWarning)]
    assert len(msgs) == 1 and "entries[0].median_us" in msgs[0] and "bad.json" in msgs[0]
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.warns(CostTableWarning, match="junk.json"):
        assert cost_table.load_table_file(tmp_path / "junk.json") is None


def test_source_loads_once_until_invalidated(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cost_table, "shipped_table", lambda cls: calls.append(cls) or CostTable(cls, entries={
        _bucket(1024): {"a": Measurement(1.0)}}))
    source = CostTableSource(use_local=False)
    for _ in range(3):
        assert source("sm90") is not None
    assert calls == ["sm90"]
    source.invalidate()
    source("sm90")
    assert calls == ["sm90", "sm90"]


def test_every_shipped_table_validates_and_is_found_by_class():
    from importlib import resources

    files = [f for f in resources.files("layerzero").joinpath("data", "costs").iterdir() if f.name.endswith(".json")]
    assert files, "no shipped cost table"
    for f in files:
        table = table_from_json(json.loads(f.read_text()), origin=f.name)  # raises on any problem
        assert table.device_class == f.name.removesuffix(".json") and len(table) > 0
        assert table.timer and table.versions.get("torch")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert cost_table.shipped_table(table.device_class).entries == table.entries


def test_shipped_sm90_table_ranks_a_llama_prefill():
    from layerzero.registry import get_global_kernel_registry
    from layerzero.selection.measured_ranking import MeasuredRanking
    from layerzero.selection.ranking import Candidate

    ctx = SelectionContext(operation="attention.prefill", batch_size=1, seq_len=3000, head_dim=64, num_heads=32,
                           num_kv_heads=8, dtype="bfloat16", device="cuda:0", compute_capability=(9, 0),
                           is_causal=True)
    ranking = MeasuredRanking(cost_table.shipped_table)
    times = ranking.times_for("attention.prefill", ctx)
    specs = [s for s in get_global_kernel_registry().get_by_operation("attention.prefill") if s.kernel_id in times]
    cands = [Candidate(s, (0, 0, s.priority, 0), i) for i, s in enumerate(specs)]
    ranked = ranking.rank("attention.prefill", ctx, cands)
    assert len(ranked) >= 2 and {r.source for r in ranked} == {"measured"}
    assert [r.measured_us for r in ranked] == sorted(r.measured_us for r in ranked)


def test_merge_command_combines_sweeps_per_device_class(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _write(tmp_path / "a" / "sm90.json", _row("attn", 5.0), _row("x", 9.0))
    _write(tmp_path / "b" / "sm90.json", _row("x", 1.0, tokens=2048))
    _write(tmp_path / "b" / "cpu.json", _row("c", 3.0), device_class="cpu")
    assert cost_table.main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 0
    merged = table_from_json(json.loads((tmp_path / "m" / "sm90.json").read_text()))
    assert len(merged) == 3 and (tmp_path / "m" / "cpu.json").exists() and (tmp_path / "m" / "sm90.md").exists()
    assert "3 measurements" in capsys.readouterr().out
    assert cost_table.main(["merge", str(tmp_path / "empty"), "--out", str(tmp_path / "m2")]) == 1
