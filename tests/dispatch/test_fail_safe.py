"""A caller's mistake is the caller's: validated before any kernel, never counted against a breaker; a kernel
that is wrong on real arguments is caught by verification and replaced for that shape bucket."""

from __future__ import annotations

import pytest
import torch

from layerzero.dispatch import DispatchConfig, create_orchestrator
from layerzero.errors import InvalidInputError
from layerzero.registry import KernelRegistry, KernelSpec

from resilience_helpers import good_kernel  # noqa: F401  (shared helpers of the resilience tests)


def _ref_norm(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
    from layerzero.kernels import reference

    return reference.rms_norm(x, weight, eps=eps, offset=offset, casting=casting, residual=residual)


def _registry(*extra: KernelSpec) -> KernelRegistry:
    return KernelRegistry([
        *extra,
        KernelSpec("torch_rms_norm", "rms_norm", "torch", "layerzero.kernels.torch_ops:torch_rms_norm", priority=50),
        KernelSpec("reference_rms_norm", "rms_norm", "torch", "layerzero.kernels.reference:rms_norm", priority=0,
                   tags={"reference"}),
    ])


def _orch(registry=None, **cfg):
    return create_orchestrator(DispatchConfig(**cfg), kernel_registry=registry)


def _qkv(dtype=torch.float32, b=1, s=4, h=2, d=8):
    return {n: torch.randn(b, s, h, d, dtype=dtype) for n in ("query", "key", "value")}


def test_bad_calls_never_open_breakers_for_valid_callers():
    orch = _orch()
    x, w = torch.randn(4, 64), torch.randn(64)
    for _ in range(8):  # more than the failure threshold (5)
        with pytest.raises(InvalidInputError, match=r"weight=\(32,\).*expected shape \(64,\)"):
            orch.dispatch("rms_norm", {"x": x, "weight": torch.randn(32)})
    out = orch.dispatch("rms_norm", {"x": x, "weight": w})  # still served, by the first-choice kernel
    assert not out.was_fallback
    torch.testing.assert_close(out.output, _ref_norm(x, w))
    stats = orch.circuits.get_all_stats()
    assert all(s.total_failures == 0 for s in stats.values()), stats
    assert orch.get_telemetry().failure_count == 0


def test_bad_weight_on_a_cached_bucket_is_still_the_callers_error():
    orch = _orch()
    x = torch.randn(4, 64)
    orch.dispatch("rms_norm", {"x": x, "weight": torch.randn(64)})  # caches the bucket's plan
    for _ in range(6):
        with pytest.raises(InvalidInputError, match="weight"):
            orch.dispatch("rms_norm", {"x": x, "weight": torch.randn(32)})
    assert orch.get_telemetry().failure_count == 0
    assert not orch.dispatch("rms_norm", {"x": x, "weight": torch.randn(64)}).was_fallback


def test_mixed_attention_dtypes_are_rejected_not_served_by_the_reference():
    orch = _orch()
    qkv = _qkv()
    qkv["key"] = qkv["key"].to(torch.float64)
    with pytest.raises(InvalidInputError, match="share one dtype"):
        orch.dispatch("attention.causal", qkv)
    assert orch.get_telemetry().failure_count == 0


@pytest.mark.parametrize("operation, hint", [("attention.casual", "attention.causal"), ("rms_nrom", "rms_norm")])
def test_unknown_operation_suggests_the_name(operation, hint):
    with pytest.raises(InvalidInputError, match=f"did you mean '{hint}'"):
        _orch().dispatch(operation, _qkv())


@pytest.mark.parametrize("kwargs, name, hint", [({"is_casual": True}, "is_casual", "is_causal"),
                                                ({"sliding_windw": 2}, "sliding_windw", "sliding_window")])
def test_unknown_keywords_are_errors_even_on_a_cached_bucket(kwargs, name, hint):
    orch = _orch()
    orch.dispatch("attention.causal", _qkv())  # bucket cached: the typo must not be dropped silently
    with pytest.raises(InvalidInputError, match=f"{name}=.*did you mean '{hint}'"):
        orch.dispatch("attention.causal", _qkv(), **kwargs)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_non_float_tensors_are_rejected(dtype):
    x = torch.ones(4, 8).to(dtype)
    with pytest.raises(InvalidInputError, match="floating-point"):
        _orch().dispatch("rms_norm", {"x": x, "weight": None})


def test_integer_attention_mask_is_rejected():
    mask = torch.ones(1, 1, 4, 4, dtype=torch.int64)
    with pytest.raises(InvalidInputError, match=r"attn_mask.*mask.bool\(\)"):
        _orch().dispatch("attention.cross", _qkv(), attn_mask=mask, is_causal=False)


@pytest.mark.parametrize("window", [0, -1])
def test_non_positive_sliding_window_is_rejected(window):
    with pytest.raises(InvalidInputError, match="sliding_window"):
        _orch().dispatch("attention.causal", _qkv(), sliding_window=window)


@pytest.mark.parametrize("inputs", [None, [torch.randn(2, 8)]])
def test_inputs_that_are_not_a_mapping(inputs):
    with pytest.raises(InvalidInputError, match="inputs must be a dict"):
        _orch().dispatch("rms_norm", inputs)


def test_rank_three_query_names_the_layout():
    qkv = _qkv()
    qkv["query"] = qkv["query"][0]
    with pytest.raises(InvalidInputError, match=r"query=.*rank 4.*transpose"):
        _orch().dispatch("attention.causal", qkv)


def test_every_problem_is_reported_at_once():
    qkv = _qkv()
    with pytest.raises(InvalidInputError) as info:
        _orch().dispatch("attention.cross", qkv, is_casual=True, sliding_window=0, softcap=-1.0)
    assert {p[0] for p in info.value.problems} == {"is_casual", "sliding_window", "softcap"}


# ---------------------------------------------------------------------------------------------- verification
def _nan_norm(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
    return torch.full_like(x, float("nan"))


def _off_by_one_percent(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
    return _ref_norm(x, weight, eps, offset, casting, residual) * 1.01


@pytest.mark.parametrize("impl", [_nan_norm, _off_by_one_percent])
def test_a_wrong_kernel_is_caught_on_its_first_call_and_replaced_for_the_bucket(impl, caplog):
    orch = _orch(_registry(KernelSpec("lz_bad_norm", "rms_norm", "torch", impl, priority=100)))
    x, w = torch.randn(4, 64), torch.randn(64)
    with caplog.at_level("WARNING", logger="layerzero.verify"):
        first = orch.dispatch("rms_norm", {"x": x, "weight": w})
    assert first.kernel_id == "torch_rms_norm"
    torch.testing.assert_close(first.output, _ref_norm(x, w))
    assert "lz_bad_norm gave a wrong result" in caplog.text
    again = orch.dispatch("rms_norm", {"x": x, "weight": w})  # the bucket's plan no longer holds it
    assert again.kernel_id == "torch_rms_norm" and again.cache_hit
    assert orch.circuits.get_circuit("lz_bad_norm").stats().total_failures == 1


def test_verification_can_be_turned_off():
    orch = _orch(_registry(KernelSpec("lz_bad_norm", "rms_norm", "torch", _off_by_one_percent, priority=100)),
                 verify_kernels=False, verify_sample_every=0)
    assert orch.dispatch("rms_norm", {"x": torch.randn(4, 64), "weight": torch.randn(64)}).kernel_id == "lz_bad_norm"


def test_sampled_checks_catch_a_kernel_that_goes_wrong_later():
    calls = {"n": 0}

    def drifting(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        calls["n"] += 1
        out = _ref_norm(x, weight, eps, offset, casting, residual)
        return out if calls["n"] <= 3 else out + 1.0

    orch = _orch(_registry(KernelSpec("lz_drifting_norm", "rms_norm", "torch", drifting, priority=100)),
                 verify_sample_every=2)
    x, w = torch.randn(4, 64), torch.randn(64)
    kernels = [orch.dispatch("rms_norm", {"x": x, "weight": w}).kernel_id for _ in range(8)]
    assert kernels[0] == "lz_drifting_norm"
    assert kernels[-1] == "torch_rms_norm", kernels  # caught by a sample, replaced for the bucket



def test_fully_masked_attention_rows_do_not_fail_a_kernel(caplog):
    """A left-padded query row sees no key: its output is undefined (the fp32 reference returns zeros, SDPA's
    backends other values). A kernel that writes anything there must not be demoted by the canary."""
    from layerzero.kernels import reference

    def padding_garbage(query, key, value, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0,
                        sliding_window=None, softcap=None, sinks=None, enable_gqa=False):
        out = reference.attention(query=query, key=key, value=value, attn_mask=attn_mask, is_causal=is_causal)
        return torch.where(attn_mask.any(-1).permute(0, 2, 1).unsqueeze(-1), out, torch.full_like(out, 5.0))

    reg = KernelRegistry([
        KernelSpec("lz_masked_attention", ("attention.*",), "torch", padding_garbage, priority=100),
        KernelSpec("reference_attention", ("attention.*",), "torch", "layerzero.kernels.reference:attention",
                   priority=0, tags={"reference"}),
    ])
    qkv = _qkv(b=2, s=5)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[0, :, :2, :] = False  # the first two queries of sequence 0 are padding
    with caplog.at_level("WARNING", logger="layerzero.verify"):
        got = _orch(reg).dispatch("attention.cross", {**qkv, "attn_mask": mask})
    assert got.kernel_id == "lz_masked_attention" and "wrong result" not in caplog.text


def test_a_kernel_failing_inside_cuda_graph_capture_fails_the_call_without_blame(monkeypatch):
    """Inside a capture the stream is broken once a kernel raises: no reference check, no fallback, no
    breaker count against the kernel; the error says why and what to do."""
    from layerzero.dispatch import runner as runner_module
    from layerzero.errors import KernelExecutionError

    ran = []

    def capture_breaking_norm(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        raise RuntimeError("operation not permitted when stream is capturing")

    def fallback_norm(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        ran.append("fallback")
        return _ref_norm(x, weight, eps, offset, casting, residual)

    registry = KernelRegistry([
        KernelSpec("capture_breaking_norm", "rms_norm", "torch", capture_breaking_norm, priority=90),
        KernelSpec("fallback_norm", "rms_norm", "torch", fallback_norm, priority=50),
        KernelSpec("reference_rms_norm", "rms_norm", "torch", "layerzero.kernels.reference:rms_norm", priority=0,
                   tags={"reference"}),
    ])
    orch = _orch(registry, verify_kernels=False)
    x, w = torch.randn(4, 64), torch.randn(64)
    monkeypatch.setattr(runner_module, "capture_underway", lambda: True)
    with pytest.raises(KernelExecutionError, match="during CUDA-graph capture of rms_norm") as info:
        orch.dispatch("rms_norm", {"x": x, "weight": w})
    assert "capture_breaking_norm" in str(info.value) and "warm-up" in str(info.value)
    assert ran == []  # no fallback ran on the broken stream
    assert all(s.total_failures == 0 for s in orch.circuits.get_all_stats().values())
    assert orch.get_telemetry().failure_count == 0
    monkeypatch.setattr(runner_module, "capture_underway", lambda: False)
    out = orch.dispatch("rms_norm", {"x": x, "weight": w})  # outside capture: the fallback path as ever
    assert out.was_fallback and out.kernel_id == "fallback_norm" and ran == ["fallback"]
