"""The cost sweep: noisy measurements are re-measured then dropped (fake timer, no sleeps), the buckets come
from the shipped architectures, and ``--quick`` on CPU writes a valid table and summary."""

from __future__ import annotations

import json
import math

import pytest
import torch

from layerzero.tuning import cost_table
from layerzero.tuning.cache import TuningCache, cost_entries
from layerzero.tuning.cost_shapes import ARCH_DIMS, _spread_order, sweep_calls
from layerzero.tuning.cost_sweep import main, run_sweep
from layerzero.tuning.cost_table import bucket_for, table_from_json
from layerzero.tuning.measure import NOISE_THRESHOLD, Timing, measure_stable


def _timing(median: float, spread: float) -> Timing:
    half = median * spread / 2
    return Timing(median, median - 2 * half, median - half, median + half, median + 2 * half, "fake")


class FakeTimer:
    """Returns the given timings in turn (then the last one forever) and counts the calls."""

    def __init__(self, *timings: Timing):
        self.timings = list(timings)
        self.calls = 0

    def __call__(self, fn, device, warmup=0, repeats=0) -> Timing:
        self.calls += 1
        return self.timings[min(self.calls, len(self.timings)) - 1]


def test_noisy_measurement_is_remeasured_then_kept():
    timer = FakeTimer(_timing(10.0, 0.9), _timing(12.0, 0.05))
    timing, note = measure_stable(lambda: None, "cpu", timer=timer)
    assert (timing.median_us, note, timer.calls) == (12.0, None, 2)


def test_always_noisy_measurement_is_dropped_with_a_note():
    timer = FakeTimer(_timing(10.0, 0.5), _timing(10.0, 0.7), _timing(10.0, math.nan))
    timing, note = measure_stable(lambda: None, "cpu", timer=timer, attempts=3)
    assert timing is None and timer.calls == 3
    assert "0.50, 0.70, nan" in note and f"{NOISE_THRESHOLD:.2f}" in note


def test_too_few_samples_count_as_noisy():
    few = Timing.from_samples([1.0, 1.0], "fake")
    timing, note = measure_stable(lambda: None, "cpu", timer=FakeTimer(few), attempts=2)
    assert timing is None and note


def test_sweep_covers_every_architecture_early():
    calls = sweep_calls(tuple(ARCH_DIMS), ("attention.prefill", "rms_norm"), "bfloat16")
    first = calls[: 2 * len(ARCH_DIMS)]
    assert {c.arch for c in first} == set(ARCH_DIMS)  # a budget cut keeps every architecture
    tokens = {c.seq_q for c in calls if c.operation == "attention.prefill"}
    assert tokens == {1 << i for i in range(1, 16)}  # 2 .. 32768 (one token is a decode call)
    assert _spread_order([1, 2, 4, 8, 16])[:2] == [1, 16]
    gemma2 = {(c.seq_q, c.full_attention): dict(c.bucket("cpu").options) for c in calls
              if c.arch == "gemma2" and c.operation == "attention.prefill"}
    assert (gemma2[8192, False]["window"], gemma2[8192, False]["softcap"]) == (4096, 50.0)
    assert gemma2[8192, True]["window"] is None  # the full-attention layers
    assert gemma2[4096, False]["window"] is None  # the window does not bite: the integration drops it
    qwen3_norms = {c.width for c in calls if c.arch == "qwen3" and c.operation == "rms_norm"}
    assert qwen3_norms == {2048, 128}  # hidden and the per-head q/k norms


def test_sweep_bucket_matches_the_live_call_bucket():
    call = sweep_calls(("llama",), ("attention.decode",), "float32", decode_batches=(4,), decode_kv=(300,))[0]
    inputs, kwargs = call.arguments("cpu")
    from layerzero.context import SelectionContext

    live = bucket_for(call.operation, SelectionContext.from_inputs(call.operation, inputs, **kwargs))
    assert live == call.bucket("cpu")
    assert (live.tokens, live.kv_len) == (4, 512)


def test_quick_sweep_with_fake_timer_records_every_eligible_kernel(tmp_path, monkeypatch):
    monkeypatch.setattr(cost_table, "shipped_table", lambda cls: None)
    cache = TuningCache(tmp_path / "cache.json", versions={"torch": "x"})
    timer = FakeTimer(_timing(7.0, 0.01))
    result = run_sweep(tmp_path / "out", device="cpu", quick=True, operations=["rms_norm,swiglu"], timer=timer,
                       into_cache=cache)
    # 2 token counts x (rms_norm, rms_norm with the residual add fused in, swiglu)
    assert result.buckets_done == result.buckets_total == 6
    doc = json.loads((tmp_path / "out" / "cpu.json").read_text())
    table = table_from_json(doc)
    kernels = {k for ks in table.entries.values() for k in ks}
    assert {"torch_rms_norm", "torch_swiglu"} <= kernels
    assert not any(k.startswith("reference_") for k in kernels)  # the oracle is not a candidate to rank
    assert all(m.median_us == 7.0 for ks in table.entries.values() for m in ks.values())
    assert len(cost_entries(TuningCache(tmp_path / "cache.json", versions={"torch": "x"}), "cpu")) == 6
    fused = [b for b in table.entries if b.operation == "rms_norm" and dict(b.options)["residual"]]
    assert len(fused) == 2 and all("torch_rms_norm" in table.entries[b] for b in fused)
    summary = (tmp_path / "out" / "cpu.md").read_text()
    assert "| rms_norm float32 hidden=2048 tokens=16" in summary


def test_a_never_steady_timing_is_recorded_flagged_and_kept_out_of_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(cost_table, "shipped_table", lambda cls: None)
    cache = TuningCache(tmp_path / "cache.json", versions={"torch": "x"})
    result = run_sweep(tmp_path / "out", device="cpu", quick=True, operations=["swiglu"],
                       timer=FakeTimer(_timing(7.0, 0.9)), into_cache=cache)
    table = table_from_json(json.loads((tmp_path / "out" / "cpu.json").read_text()))
    assert result.buckets_done == 2 and table.entries
    assert all(m.noisy for ks in table.entries.values() for m in ks.values())
    assert any("flagged noisy" in n for n in table.notes)
    assert not cost_entries(TuningCache(tmp_path / "cache.json", versions={"torch": "x"}), "cpu")


def test_sweep_merges_into_an_existing_table_and_honours_the_budget(tmp_path):
    run_sweep(tmp_path, device="cpu", quick=True, operations=["rms_norm"], timer=FakeTimer(_timing(5.0, 0.0)))
    cut = run_sweep(tmp_path, device="cpu", quick=True, operations=["swiglu"], max_seconds=-1,
                    timer=FakeTimer(_timing(5.0, 0.0)))
    assert cut.buckets_done == 0 and "time budget" in cut.table.notes[0]
    table = table_from_json(json.loads((tmp_path / "cpu.json").read_text()))
    assert {b.operation for b in table.entries} == {"rms_norm"}  # the earlier run's measurements stay


def test_only_missing_fills_new_buckets_and_keeps_the_measured_ones(tmp_path):
    """``--only-missing``: a bucket the table already holds is not timed again (its measurement stays as it was);
    one it lacks is measured and merged in."""
    run_sweep(tmp_path, device="cpu", quick=True, operations=["rms_norm"], timer=FakeTimer(_timing(5.0, 0.0)))
    timer = FakeTimer(_timing(9.0, 0.0))
    again = run_sweep(tmp_path, device="cpu", quick=True, operations=["rms_norm,swiglu"], timer=timer,
                      only_missing=True)
    assert again.buckets_total == again.buckets_done == 2  # the two swiglu buckets; the rms_norm ones are held
    table = table_from_json(json.loads((tmp_path / "cpu.json").read_text()))
    times = {b.operation: {m.median_us for m in ks.values()} for b, ks in table.entries.items()}
    assert times == {"rms_norm": {5.0}, "swiglu": {9.0}}
    assert main(["--out", str(tmp_path), "--device", "cpu", "--quick", "--operations", "swiglu",
                 "--only-missing"]) == 0  # nothing left to measure: a clean no-op


def test_unknown_operation_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--operations"):
        run_sweep(tmp_path, device="cpu", quick=True, operations=["conv*"])


def test_quick_sweep_on_cpu_with_the_real_harness(tmp_path, capsys):
    """What CI runs: the module entry point, real timing, a table that validates."""
    assert main(["--out", str(tmp_path), "--quick", "--device", "cpu", "--operations", "rms_norm"]) == 0
    table = table_from_json(json.loads((tmp_path / "cpu.json").read_text()))
    assert table.device_class == "cpu" and table.timer == "torch.utils.benchmark.Timer"
    assert table.versions["torch"] == torch.__version__
    assert "buckets" in capsys.readouterr().out
    assert (tmp_path / "cpu.md").exists()


def test_cli_tune_costs(tmp_path, capsys):
    from layerzero.cli.app import run

    assert run(["tune", "costs", "--out", str(tmp_path), "--quick", "--device", "cpu", "--operations", "swiglu",
                "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device_class"] == "cpu" and out["buckets"] == out["buckets_planned"] == 2
    assert run(["tune", "costs", "--out", str(tmp_path), "--quick", "--device", "cpu", "--operations", "swiglu",
                "--max-tokens", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["buckets_planned"] == 1  # the quick plan's 1- and 16-token calls
    assert run(["tune", "costs", "--out", str(tmp_path), "--operations", "nope"]) == 2


def test_decode_attention_is_timed_over_growing_key_lengths():
    """A decode step's key is one position longer than the last one's: the sweep times a kernel over such a
    sequence (views of one cache), so per-shape costs (recompiles, rebuilt plans) are part of its time."""
    from layerzero.tuning.measure import time_kernels

    call = next(c for c in sweep_calls(["gemma2"], ["attention.decode"], "float32", decode_batches=(1,),
                                       decode_kv=(64,)) if c.operation == "attention.decode")
    kwargs, seq = call.sequence("cpu", steps=4)
    assert [s["key"].shape[1] for s in seq] == [64, 65, 66, 67]
    assert len({s["key"].untyped_storage().data_ptr() for s in seq}) == 1
    assert kwargs["softcap"] == ARCH_DIMS["gemma2"].softcap

    seen: list[int] = []

    class Spec:
        kernel_id = "probe"

        @staticmethod
        def map_arguments(inputs, kw):
            return {"key": inputs["key"]}

        @staticmethod
        def impl(key):
            seen.append(key.shape[1])
            return key

    def timer(fn, device, warmup, repeats):
        for _ in range(6):
            fn()
        return _timing(10.0, 0.01)

    times, notes = time_kernels([Spec], seq[0], kwargs, None, timer=timer, sequence=seq)
    assert "probe" in times and not notes
    assert seen[0] == 64 and set(seen[1:]) == {64, 65, 66, 67}  # checked on the first, timed over all


def test_batched_prefill_has_buckets_of_its_own():
    """A batch-8 prefill of 1024 tokens keys as (8192 tokens, 1024 keys): farther than the nearest-bucket distance
    from every batch-1 bucket (tokens = keys), so the sweep measures batched prompts as well."""
    from layerzero.context import SelectionContext
    from layerzero.tuning.cost_table import MAX_LOG2_DISTANCE

    calls = [c for c in sweep_calls(("llama",), ("attention.prefill",), "bfloat16") if c.batch > 1]
    buckets = {c.bucket("cpu") for c in calls}
    assert {(b.tokens, b.kv_len) for b in buckets} >= {(8192, 1024), (16384, 512)}  # the e2e shapes 8x1024, 32x512
    q = torch.empty(8, 1024, 32, 64, device="meta", dtype=torch.bfloat16)
    kv = torch.empty(8, 1024, 8, 64, device="meta", dtype=torch.bfloat16)
    live = bucket_for("attention.prefill", SelectionContext.from_inputs(
        "attention.prefill", {"query": q, "key": kv, "value": kv}, is_causal=True))
    assert live in buckets
    batch_one = {c.bucket("cpu") for c in sweep_calls(("llama",), ("attention.prefill",), "bfloat16") if c.batch == 1}
    assert min(abs(math.log2(live.tokens / b.tokens)) + abs(math.log2(live.kv_len / b.kv_len))
               for b in batch_one) > MAX_LOG2_DISTANCE
