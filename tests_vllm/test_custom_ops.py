"""The out-of-tree ops in one process: registration, exact by default (vLLM's own forward, untouched),
vLLM's ops as LayerZero kernels (bit-identical to vLLM's layers), LayerZero kernels when a policy asks for
them, and vLLM's custom_ops switch."""

from __future__ import annotations

import pytest
import torch

import layerzero_vllm
from layerzero_vllm import custom_ops, kernels

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}

LAYERZERO_KERNELS = """\
version: "1.0"
kernel_locks:
  rms_norm: torch_rms_norm
  rope: torch_rope
  swiglu: torch_swiglu
"""


def calls(orchestrator, operation: str) -> int:
    stats = orchestrator.get_telemetry().operations.get(operation)
    return stats.calls if stats is not None else 0


@pytest.fixture
def lz_policy(tmp_path, monkeypatch):
    """Layers built in this fixture's scope use an orchestrator whose policy locks LayerZero's kernels."""
    from layerzero import ops
    from layerzero.dispatch import create_orchestrator

    from layerzero_vllm.exact import compose, read_mapping

    path = tmp_path / "policy.yaml"
    path.write_text(LAYERZERO_KERNELS)
    name = f"test-lz-{tmp_path.name}"
    orchestrator = create_orchestrator(policy=compose(read_mapping(str(path))))
    ops.register_orchestrator(name, orchestrator)
    monkeypatch.setattr("layerzero_vllm.model_setup.orchestrator_for_current_model", lambda: name)
    yield orchestrator
    ops.unregister_orchestrator(name)


def test_registration_covers_the_ops_vllm_instantiates(plugin_registered):
    from vllm.model_executor.custom_op import op_registry_oot

    ops = plugin_registered["ops"]
    for name in ("RMSNorm", "GemmaRMSNorm", "SiluAndMul", "RotaryEmbedding", "Llama3RotaryEmbedding",
                 "TPAwareRMSNorm", "TPAwareGemmaRMSNorm"):
        assert ops[name] == f"LayerZero{name}"
        assert op_registry_oot[name].__name__ == f"LayerZero{name}"
        assert op_registry_oot[name].name == name  # vLLM's custom_ops spelling of an OOT op
    assert "MRotaryEmbedding" not in ops and "DeepseekScalingRotaryEmbedding" not in ops


def test_register_is_idempotent(plugin_registered):
    from vllm.model_executor.custom_op import op_registry_oot

    before = dict(op_registry_oot)
    layerzero_vllm.register()
    layerzero_vllm.register()
    assert dict(op_registry_oot) == before
    assert layerzero_vllm.registration()["ops"] == plugin_registered["ops"]


def test_active_plugin_keeps_layerzero_ops_dispatching_under_compile(plugin_registered):
    """LayerZero's default compile strategy inlines norms, RoPE and activations as plain torch; in a vLLM
    process with the plugin active, a layer whose policy chose a LayerZero kernel must still dispatch inside
    vLLM's compiled graph, so the plugin sets every operation to "opaque"."""
    from layerzero import ops

    assert set(ops.compile_strategy().values()) == {"opaque"}


def _layers(dtype=torch.float32, theta: float = 9999.0):
    """One layer of each replaced kind. get_rope caches instances by their parameters: a test that needs
    a rope built under its own policy passes its own ``theta``."""
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm
    from vllm.model_executor.layers.rotary_embedding import get_rope

    torch.set_default_dtype(dtype)
    try:
        return {
            "rms": RMSNorm(64, eps=1e-5, dtype=dtype),
            "gemma": GemmaRMSNorm(64, eps=1e-6),
            "silu": SiluAndMul(),
            "rope": get_rope(32, max_position=128, is_neox_style=True, dtype=dtype,
                             rope_parameters={"rope_type": "default", "rope_theta": theta}),
        }
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_keeps_vllms_own_forward(vllm_config, dtype):
    """Exact and free by default: the bound method is the one vLLM binds without the plugin."""
    with vllm_config(["all"]):
        layers = _layers(dtype)
    for layer in layers.values():
        assert layer._lz_plan.direct, layer._lz_plan
        bound = layer._forward_method
        assert bound.__self__ is layer and bound.__name__ == "forward_cpu", bound
        assert bound.__func__.__module__.startswith("vllm."), bound  # vLLM's code, no LayerZero frame
    assert layers["rms"]._lz_plan.kernels == (("decode", "vllm_rms_norm"), ("decode+residual", "vllm_rms_norm"),
                                              ("prefill", "vllm_rms_norm"), ("prefill+residual", "vllm_rms_norm"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("which", ["rms", "gemma"])
def test_vllm_rms_norm_kernel_is_bit_identical(vllm_config, dtype, with_residual, which):
    with vllm_config(["all"]):
        layer = _layers(dtype)[which]
    torch.manual_seed(0)
    layer.weight.data.normal_(1.0 if which == "rms" else 0.0, 0.3)
    x = torch.randn(9, 64, dtype=dtype) * 3
    residual = torch.randn(9, 64, dtype=dtype) if with_residual else None
    expected = layer(x.clone(), residual.clone() if residual is not None else None)
    casting, offset = ("llama", 0.0) if which == "rms" else ("gemma", 1.0)
    x_in, r_in = x.clone(), (residual.clone() if residual is not None else None)
    got = kernels.rms_norm(x_in, layer.weight.data, eps=layer.variance_epsilon, offset=offset, casting=casting,
                           residual=r_in)
    if with_residual:
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert torch.equal(r_in, residual)  # the contract never mutates inputs
    else:
        assert torch.equal(got, expected)
    assert torch.equal(x_in, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("rotary_dim", [32, 16])
def test_vllm_rope_kernel_is_bit_identical(vllm_config, dtype, neox, rotary_dim):
    from vllm.model_executor.layers.rotary_embedding import get_rope

    with vllm_config(["all"]):
        rope = get_rope(32, max_position=128, is_neox_style=neox, dtype=dtype,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                         "partial_rotary_factor": rotary_dim / 32})
    torch.manual_seed(2)
    positions = torch.tensor([0, 1, 2, 5, 9, 17, 100])
    q = torch.randn(7, 4 * 32, dtype=dtype)
    k = torch.randn(7, 2 * 32, dtype=dtype)
    eq, ek = rope(positions, q.clone(), k.clone())
    cache = rope._match_cos_sin_cache_dtype(q).index_select(0, positions)
    cos, sin = cache.chunk(2, dim=-1)
    if neox:
        cos, sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
    else:
        cos, sin = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)
    q_in, k_in = q.reshape(1, 7, 4, 32), k.reshape(1, 7, 2, 32)
    gq, gk = kernels.rope(q_in, k_in, cos.unsqueeze(0), sin.unsqueeze(0), layout="bshd", interleaved=not neox)
    assert torch.equal(gq.reshape(eq.shape), eq) and torch.equal(gk.reshape(ek.shape), ek)
    assert torch.equal(q_in.reshape(q.shape), q)  # untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vllm_silu_and_mul_kernel_is_bit_identical(vllm_config, dtype):
    with vllm_config(["all"]):
        layer = _layers(dtype)["silu"]
    x = torch.randn(5, 2 * 48, dtype=dtype)
    assert torch.equal(kernels.silu_and_mul(x[..., :48], x[..., 48:]), layer(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_policy_lock_runs_layerzero_kernels(vllm_config, lz_policy, dtype):
    with vllm_config(["all"]):
        layers = _layers(dtype, theta=5000.0)
    for layer in layers.values():
        assert not layer._lz_plan.direct and layer._forward_method == layer._lz_forward
    torch.manual_seed(3)
    rms = layers["rms"]
    rms.weight.data.normal_(1.0, 0.2)
    x, residual = torch.randn(7, 64, dtype=dtype), torch.randn(7, 64, dtype=dtype)
    expected = rms._vllm_native(x.clone(), residual.clone())
    n0 = calls(lz_policy, "rms_norm")
    got = rms(x, residual)
    assert calls(lz_policy, "rms_norm") == n0 + 1
    assert lz_policy.get_telemetry().operations["rms_norm"].kernels.get("torch_rms_norm")
    torch.testing.assert_close(got[0], expected[0], **TOL[dtype])
    torch.testing.assert_close(got[1], expected[1], **TOL[dtype])
    silu = layers["silu"]
    y = torch.randn(3, 96, dtype=dtype)
    torch.testing.assert_close(silu(y), silu._vllm_native(y), **TOL[dtype])
    rope = layers["rope"]
    positions = torch.tensor([0, 3, 7])
    q, k = torch.randn(3, 64, dtype=dtype), torch.randn(3, 32, dtype=dtype)
    eq, ek = rope._vllm_native(positions, q.clone(), k.clone())
    gq, gk = rope(positions, q, k)
    torch.testing.assert_close(gq, eq, **TOL[dtype])
    torch.testing.assert_close(gk, ek, **TOL[dtype])
    assert calls(lz_policy, "rope") >= 1 and calls(lz_policy, "swiglu") >= 1


@pytest.mark.parametrize(
    "custom_ops_list, native, counted",
    [
        (["all"], False, True),
        (["none"], False, False),  # disabled (vLLM's compiled-mode default): vLLM's forward_native
        (["none", "+RMSNorm"], False, True),
        (["none", "+rms_norm"], False, True),  # vLLM's registered op name keeps working
        (["all", "-rms_norm"], False, False),
        (["none"], True, True),  # LAYERZERO_VLLM_NATIVE=layerzero
    ],
)
def test_custom_ops_switch_with_a_layerzero_policy(vllm_config, lz_policy, custom_ops_list, native, counted):
    from vllm.model_executor.layers.layernorm import RMSNorm

    custom_ops.set_native_layerzero(native)
    try:
        with vllm_config(custom_ops_list):
            layer = RMSNorm(32)
        x = torch.randn(3, 32)
        n0 = calls(lz_policy, "rms_norm")
        out = layer(x)
    finally:
        custom_ops.set_native_layerzero(False)
    assert calls(lz_policy, "rms_norm") == n0 + (1 if counted else 0)
    torch.testing.assert_close(out, layer._vllm_native(x))


def test_enable_and_disable_together_is_an_error(vllm_config):
    from vllm.model_executor.layers.layernorm import RMSNorm

    with pytest.raises(ValueError, match="both enables and disables"):
        with vllm_config(["none", "+RMSNorm", "-rms_norm"]):
            RMSNorm(32)


def test_variance_size_override_stays_vllm(vllm_config, lz_policy):
    from vllm.model_executor.layers.layernorm import RMSNorm

    with vllm_config(["all"]):
        layer = RMSNorm(64, var_hidden_size=32)
    assert layer._forward_method != layer._lz_forward
    x = torch.randn(2, 64)
    n0 = calls(lz_policy, "rms_norm")
    out = layer(x)
    assert calls(lz_policy, "rms_norm") == n0
    torch.testing.assert_close(out, layer._vllm_native(x))
