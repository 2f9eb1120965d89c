"""The out-of-tree ops in one process: registration, vLLM's custom_ops switch, numerics vs vLLM's own
implementations, and LayerZero telemetry counting the calls."""

from __future__ import annotations

import pytest
import torch

import layerzero_vllm
from layerzero_vllm import custom_ops

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def calls(operation: str) -> int:
    """Calls LayerZero's global dispatcher served for ``operation`` (ops built outside a model use it)."""
    from layerzero.dispatch import get_global_dispatcher

    stats = get_global_dispatcher().get_telemetry().operations.get(operation)
    return stats.calls if stats is not None else 0


def test_registration_covers_the_ops_vllm_instantiates(plugin_registered):
    from vllm.model_executor.custom_op import op_registry_oot

    ops = plugin_registered["ops"]
    for name in ("RMSNorm", "GemmaRMSNorm", "SiluAndMul", "RotaryEmbedding", "Llama3RotaryEmbedding",
                 "TPAwareRMSNorm", "TPAwareGemmaRMSNorm"):
        assert ops[name] == f"LayerZero{name}"
        assert op_registry_oot[name].__name__ == f"LayerZero{name}"
        assert op_registry_oot[name].name == name  # vLLM's custom_ops spelling of an OOT op
    # classes with their own rotary forward stay vLLM's
    assert "MRotaryEmbedding" not in ops and "DeepseekScalingRotaryEmbedding" not in ops


def test_register_is_idempotent(plugin_registered):
    from vllm.model_executor.custom_op import op_registry_oot

    before = dict(op_registry_oot)
    layerzero_vllm.register()
    layerzero_vllm.register()
    assert dict(op_registry_oot) == before
    assert layerzero_vllm.registration()["ops"] == plugin_registered["ops"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_vllm(vllm_config, dtype, with_residual):
    from vllm.model_executor.layers.layernorm import RMSNorm

    with vllm_config(["all"]):
        layer = RMSNorm(64, eps=1e-5, dtype=dtype)
    assert type(layer).__name__ == "LayerZeroRMSNorm"
    torch.manual_seed(0)
    layer.weight.data.normal_(1.0, 0.2)
    x = torch.randn(7, 64, dtype=dtype)
    residual = torch.randn(7, 64, dtype=dtype) if with_residual else None
    expected = layer._vllm_native(x.clone(), residual.clone() if residual is not None else None)
    n0 = calls("rms_norm")
    got = layer(x, residual)
    assert calls("rms_norm") == n0 + 1
    if with_residual:
        torch.testing.assert_close(got[0], expected[0], **TOL[dtype])
        torch.testing.assert_close(got[1], expected[1], **TOL[dtype])
    else:
        assert got.dtype == dtype
        torch.testing.assert_close(got, expected, **TOL[dtype])


def test_gemma_rms_norm_matches_vllm(vllm_config):
    from vllm.model_executor.layers.layernorm import GemmaRMSNorm

    with vllm_config(["all"]):
        layer = GemmaRMSNorm(64, eps=1e-6)
    torch.manual_seed(1)
    layer.weight.data.normal_(0.0, 0.3)  # Gemma stores w - 1
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    layer.weight.data = layer.weight.data.to(torch.bfloat16)
    n0 = calls("rms_norm")
    got = layer(x)
    assert calls("rms_norm") == n0 + 1
    torch.testing.assert_close(got, layer._vllm_native(x), **TOL[torch.bfloat16])


def test_silu_and_mul_matches_vllm(vllm_config):
    from vllm.model_executor.layers.activation import SiluAndMul

    with vllm_config(["all"]):
        layer = SiluAndMul()
    x = torch.randn(3, 4, 2 * 48)
    n0 = calls("swiglu")
    got = layer(x)
    assert calls("swiglu") == n0 + 1
    assert got.shape == (3, 4, 48)
    torch.testing.assert_close(got, SiluAndMul.forward_native(x))


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("rotary_dim", [32, 16])
@pytest.mark.parametrize("with_key", [True, False])
def test_rotary_embedding_matches_vllm(vllm_config, neox, rotary_dim, with_key):
    from vllm.model_executor.layers.rotary_embedding import get_rope

    with vllm_config(["all"]):
        rope = get_rope(32, max_position=128, is_neox_style=neox, dtype=torch.float32,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                         "partial_rotary_factor": rotary_dim / 32})
    assert type(rope).__name__ == "LayerZeroRotaryEmbedding"
    assert rope.rotary_dim == rotary_dim
    torch.manual_seed(2)
    positions = torch.tensor([0, 1, 2, 5, 9, 17, 100])
    q = torch.randn(7, 4 * 32)
    k = torch.randn(7, 2 * 32) if with_key else None
    q_in, k_in = q.clone(), (k.clone() if k is not None else None)
    eq, ek = rope._vllm_native(positions, q.clone(), k.clone() if k is not None else None)
    n0 = calls("rope")
    gq, gk = rope(positions, q, k)
    assert calls("rope") == n0 + 1
    torch.testing.assert_close(gq, eq)
    if with_key:
        torch.testing.assert_close(gk, ek)
    else:
        assert gk is None
    torch.testing.assert_close(q, q_in)  # LayerZero's rope never mutates its inputs
    if k is not None:
        torch.testing.assert_close(k, k_in)


@pytest.mark.parametrize(
    "custom_ops, enabled",
    [
        (["all"], True),
        (["none"], False),
        (["none", "+RMSNorm"], True),
        (["none", "+rms_norm"], True),  # vLLM's registered op name keeps working
        (["all", "-RMSNorm"], False),
        (["all", "-rms_norm"], False),
    ],
)
def test_custom_ops_switch(vllm_config, custom_ops, enabled):
    from vllm.model_executor.layers.layernorm import RMSNorm

    with vllm_config(custom_ops):
        layer = RMSNorm(32)
    assert type(layer).__name__ == "LayerZeroRMSNorm"  # the class is always ours; the method is vLLM's choice
    x = torch.randn(3, 32)
    n0 = calls("rms_norm")
    layer(x)
    # disabled -> forward_native, which stays vLLM's own code by default
    assert calls("rms_norm") == n0 + (1 if enabled else 0)


def test_enable_and_disable_together_is_an_error(vllm_config):
    from vllm.model_executor.layers.layernorm import RMSNorm

    with pytest.raises(ValueError, match="both enables and disables"):
        with vllm_config(["none", "+RMSNorm", "-rms_norm"]):
            RMSNorm(32)


def test_native_layerzero_dispatches_forward_native(vllm_config):
    from vllm.model_executor.layers.layernorm import RMSNorm

    with vllm_config(["none"]):
        layer = RMSNorm(32)
    x = torch.randn(3, 32)
    custom_ops.set_native_layerzero(True)
    try:
        n0 = calls("rms_norm")
        out = layer(x)
        assert calls("rms_norm") == n0 + 1
        torch.testing.assert_close(out, layer._vllm_native(x))
    finally:
        custom_ops.set_native_layerzero(False)


def test_variance_size_override_stays_vllm(vllm_config):
    from vllm.model_executor.layers.layernorm import RMSNorm

    with vllm_config(["all"]):
        layer = RMSNorm(64, var_hidden_size=32)
    x = torch.randn(2, 64)
    n0 = calls("rms_norm")
    out = layer(x)
    assert calls("rms_norm") == n0  # not in LayerZero's contract: vLLM's code ran
    torch.testing.assert_close(out, layer._vllm_native(x))
