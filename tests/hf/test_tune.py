"""layerzero_hf.tune: a tiny random-weight Llama's real calls are measured on every eligible kernel, the times
are persisted per (config hash, device class), and a fresh load of the same model ranks by them."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import layerzero_hf  # noqa: E402
from layerzero.context import SelectionContext  # noqa: E402
from layerzero.registry import get_global_backend_registry, get_global_kernel_registry  # noqa: E402
from layerzero.selection import measured_ranking as mr  # noqa: E402
from layerzero.selection.ranking import Candidate  # noqa: E402
from layerzero.tuning import cost_table  # noqa: E402
from layerzero.tuning import measure as measure_mod  # noqa: E402
from layerzero.tuning.cache import TuningCache, cost_entries  # noqa: E402
from layerzero.tuning.measure import Timing  # noqa: E402
from layerzero_hf.tune import model_key  # noqa: E402

PROMPT = 8


class CountdownTimer:
    """Each measurement is 1 us faster than the one before (so the kernel measured last wins: the opposite
    of the hand-set priorities, which is what shows the measurements are used)."""

    def __init__(self):
        self.left = 10_000.0

    def __call__(self, fn, device, warmup=0, repeats=0) -> Timing:
        fn()
        self.left -= 1.0
        return Timing(self.left, self.left, self.left, self.left, self.left, "countdown")


@pytest.fixture
def saved_llama(tmp_path):
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).eval().save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """The default autotune cache in tmp_path, no shipped table, fresh shared rankings."""
    path = tmp_path / "autotune.json"
    monkeypatch.setenv("LAYERZERO_TUNE_CACHE", str(path))
    monkeypatch.setattr(cost_table, "shipped_table", lambda cls: None)
    monkeypatch.setattr(mr, "_shared", {})
    return path


def _load(path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path)).eval()


def _prefill_candidates(ctx):
    registry, backends = get_global_kernel_registry(), get_global_backend_registry()
    specs = [s for s in registry.get_by_operation("attention.prefill") if not s.check(ctx, backends)]
    return [Candidate(s, (0, 0, s.priority, -i), i) for i, s in enumerate(specs)]


def test_model_key_is_stable_across_save_and_load(saved_llama):
    a, b = _load(saved_llama), _load(saved_llama)
    assert model_key(a) == model_key(b) == model_key(a.config)
    other = transformers.LlamaConfig(**{**a.config.to_dict(), "hidden_size": 128})
    assert model_key(other) != model_key(a)


def test_tune_persists_and_the_next_load_uses_it(saved_llama, isolated):
    model = _load(saved_llama)
    ids = torch.randint(3, 128, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    result = layerzero_hf.tune(model, ids, timer=CountdownTimer())
    assert result.device_class == "cpu" and result.model_key == model_key(model)
    ops = {c.operation for c in result.calls}
    assert {"attention.prefill", "attention.decode", "rms_norm", "rope", "swiglu"} <= ops
    assert not layerzero_hf.is_patched(model)  # recording patched it for the run only

    stored = cost_entries(TuningCache(isolated), "cpu", scope=result.model_key)
    assert set(stored) == {c.bucket.key() for c in result.calls}
    assert cost_entries(TuningCache(isolated), "cpu") == {}  # scoped: another model does not see them
    assert "cost|cpu|" in json.dumps(json.loads(isolated.read_text())["entries"])

    prefill = next(c for c in result.calls if c.operation == "attention.prefill")
    assert len(prefill.times_us) >= 2, prefill  # every eligible kernel was measured on the real call
    ctx = SelectionContext(operation="attention.prefill", batch_size=1, seq_len=PROMPT, head_dim=16, num_heads=4,
                           num_kv_heads=2, dtype="float32", device="cpu", is_causal=True)
    assert cost_table.bucket_for("attention.prefill", ctx) == prefill.bucket

    fresh = _load(saved_llama)
    ranked = layerzero_hf.tuned_ranking(fresh).rank("attention.prefill", ctx, _prefill_candidates(ctx))
    assert ranked[0].spec.kernel_id == prefill.fastest
    assert ranked[0].source == "measured" and ranked[0].measured_us == prefill.times_us[prefill.fastest]
    by_priority = max(_prefill_candidates(ctx), key=lambda c: c.policy_rank).spec.kernel_id
    assert prefill.fastest != by_priority  # the measurement, not the priority, decided


def test_tune_is_used_by_patch_when_dispatch_config_takes_a_ranking(saved_llama, isolated):
    from layerzero.dispatch import DispatchConfig

    if "ranking" not in {f.name for f in dataclasses.fields(DispatchConfig)}:
        pytest.skip("DispatchConfig.ranking is not available in this build")
    model = _load(saved_llama)
    ids = torch.randint(3, 128, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    result = layerzero_hf.tune(model, ids, timer=CountdownTimer())
    prefill = next(c for c in result.calls if c.operation == "attention.prefill")
    fresh = _load(saved_llama)
    config = DispatchConfig(ranking=layerzero_hf.tuned_ranking(fresh))
    with layerzero_hf.patched(fresh, attention=True, dispatch_config=config):
        orch = layerzero_hf.orchestrator_of(fresh)
        ctx = SelectionContext(operation="attention.prefill", batch_size=1, seq_len=PROMPT, head_dim=16,
                               num_heads=4, num_kv_heads=2, dtype="float32", device="cpu", is_causal=True)
        assert orch.explain("attention.prefill", ctx).chosen == prefill.fastest


def test_cli_tune_model(saved_llama, isolated, monkeypatch, capsys):
    from layerzero.cli.app import run

    monkeypatch.setattr(measure_mod, "measure", CountdownTimer())
    assert run(["tune", "model", str(saved_llama), "--tokens", "4", "--decode-steps", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device_class"] == "cpu" and out["cache"] == str(isolated)
    assert {c["bucket"].split()[0] for c in out["calls"]} >= {"attention.prefill", "rms_norm"}
    assert run(["tune", "model", str(saved_llama / "nope")]) == 2


def test_bad_example_inputs_are_rejected(saved_llama, isolated):
    with pytest.raises(TypeError, match="input_ids"):
        layerzero_hf.tune(_load(saved_llama), [1, 2, 3])
