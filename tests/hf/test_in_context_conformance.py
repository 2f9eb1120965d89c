"""In-context conformance: the calls the nine tiny architectures really dispatch, replayed on every eligible
kernel against the fp32 reference.

Each (architecture, dtype) is recorded once (module-scoped cache): a prompt with the dynamic cache, with a
static cache, and a left-padded batch of two, each prefill + 3 decode steps. While recording, the model
runs the torch/reference kernels (pinned) so the Triton interpreter and eager Flex do not run inside the
model as well; the recorded arguments are the model's own (the attention function and the patched
modules build them), and every kernel the dispatcher finds eligible then runs on them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import layerzero_hf  # noqa: E402,F401  (registers the "layerzero" attention implementation)
from layerzero.dispatch import DispatchConfig, DispatchMode, create_orchestrator  # noqa: E402
from layerzero.kernels import builtin_kernels  # noqa: E402
from layerzero.policy import default_policy_path  # noqa: E402
from layerzero.registry import KernelRegistry, KernelSpec  # noqa: E402
from single_thread import one_intra_op_thread  # noqa: E402
from layerzero_hf.conformance import (  # noqa: E402
    clone_exact,
    load_calls,
    record_calls,
    record_scenarios,
    replay,
    save_calls,
)

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt_oss")
DTYPES = (torch.float32, torch.bfloat16)
PROMPT = 17  # longer than the sliding window (8), and > 16 so decode steps share a dispatch bucket
PIN = {"attention.*": "reference_attention", "rope": "torch_rope", "rms_norm": "torch_rms_norm",
       "swiglu": "torch_swiglu", "geglu": "torch_geglu"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_intra_op_thread():
        yield


@pytest.fixture(scope="module")
def recorded(tiny_model_dir):
    """``recorded(arch, dtype)``: the merged calls of the three scenarios, recorded once per module."""
    cache: dict[tuple[str, torch.dtype], list] = {}

    def get(arch: str, dtype: torch.dtype) -> list:
        if (arch, dtype) not in cache:
            model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch), dtype=dtype).eval()
            cache[(arch, dtype)] = record_scenarios(model, prompt_len=PROMPT, decode_steps=3, keep=1, kernels=PIN)
        return cache[(arch, dtype)]

    return get


# dtype-major order: Flex's eager path traces per dtype and layout, and consecutive architectures of one
# dtype reuse those traces
@pytest.mark.parametrize(("arch", "dtype"), [(a, d) for d in DTYPES for a in ARCHS],
                         ids=[f"{a}-{str(d).removeprefix('torch.')}" for d in DTYPES for a in ARCHS])
def test_every_eligible_kernel_passes_recorded_calls(arch, dtype, recorded):
    calls = recorded(arch, dtype)
    assert {c.label for c in calls} == {"dynamic", "static", "padded"}
    assert {c.phase for c in calls} == {"prefill", "decode"}
    ops = {c.operation.split(".")[0] for c in calls}
    assert {"attention", "rope", "rms_norm"} <= ops, ops
    report = replay(calls)
    ran = {r.kernel_id for r in report.results}
    assert {"reference_attention", "torch_sdpa_attention" if arch not in ("gemma2", "gpt_oss") else
            "torch_flex_attention", "torch_rope", "reference_rope"} <= ran, ran
    assert report.ok, str(report)


STAND_IN_BACKENDS = ("flashinfer", "liger", "flash_attn", "flash_attn_3", "xformers")


@pytest.fixture(scope="module")
def recorded_small():
    """The bf16 calls of each architecture at the small size (head_dim 64, which FlashInfer, cuDNN and the
    flash-attn family accept; the tiny models' head_dim 16 rules them out), recorded once per module."""
    from layerzero_hf.conformance.archs import SMALL, build_model

    cache: dict[str, list] = {}

    def get(arch: str) -> list:
        if arch not in cache:
            model = build_model(arch, SMALL, dtype=torch.bfloat16)
            cache[arch] = record_scenarios(model, prompt_len=PROMPT, decode_steps=2, keep=1, kernels=PIN)
        return cache[arch]

    return get


@pytest.mark.parametrize("backend", STAND_IN_BACKENDS)
def test_gpu_backend_adapters_pass_recorded_calls_with_stand_ins(recorded_small, monkeypatch, backend):
    """The GPU-only backends' adapters on the calls the nine architectures make, on CPU: each library is
    replaced by its stand-in module (tests/kernels/lz_fake_backends.py, which makes the library's own
    argument checks, e.g. FlashInfer's contiguous KV pages) and the kernel's constraints are checked as if on
    an sm90 GPU. On synthetic shapes these adapters passed while FlashInfer decode failed every model's
    decode call on an H200 (a Transformers cache hands attention a transposed view); this replays the
    models' own layouts in CI."""
    import sys
    from pathlib import Path

    from layerzero.context import SelectionContext
    from layerzero.registry import get_global_kernel_registry

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
    from lz_fake_backends import install

    install(monkeypatch, backend)
    specs = [s for s in get_global_kernel_registry().all() if s.backend == backend]
    assert specs, f"no {backend} kernels registered"

    def as_on_sm90(call):
        ctx = SelectionContext.from_inputs(call.operation, call.inputs, **call.options).replace(
            device="cuda:0", platform="cuda", compute_capability=(9, 0))
        return [s.kernel_id for s in specs if s.serves(call.operation) and not s.constraints.check(ctx)]

    ran: set[str] = set()
    for arch in ARCHS:
        report = replay(recorded_small(arch), eligible=as_on_sm90)
        assert report.ok, f"{arch}: {report}"
        ran |= {r.kernel_id for r in report.results if r.status == "pass"}
    if backend in ("flashinfer", "liger"):
        assert ran, f"no {backend} kernel was eligible for any recorded call"
    if backend == "flashinfer":
        assert {"flashinfer_decode_attention", "flashinfer_prefill_attention", "flashinfer_rope"} <= ran, ran


def test_recorded_calls_carry_the_models_layouts_and_features(recorded):
    gemma2 = recorded("gemma2", torch.float32)
    attention = [c for c in gemma2 if c.operation.startswith("attention")]
    assert all(c.options.get("softcap") == 5.0 for c in attention)
    # the sliding layer's window bites at 17 tokens: as a mask (Transformers builds one) or as the option
    assert any(c.options.get("sliding_window") == 8 or (
        c.module == "model.layers.0.self_attn" and c.options.get("attn_mask") is not None
        and not bool(c.options["attn_mask"][0, 0, -1, 0])) for c in attention)
    assert all(c.module and c.module.endswith("self_attn") for c in attention)
    # Transformers hands (B, H, S, D) tensors over; the canonical (B, S, H, D) is a strided view
    assert any(not c.inputs["key"].is_contiguous() for c in attention)
    padded = [c for c in attention if c.label == "padded" and c.phase == "prefill"]
    assert padded and all(c.options["attn_mask"].dtype == torch.bool for c in padded)
    sinks = [c for c in recorded("gpt_oss", torch.float32) if c.operation.startswith("attention")]
    assert sinks and all(c.options.get("sinks") is not None for c in sinks)
    rope = [c for c in recorded("phi3", torch.float32) if c.operation == "rope"]
    assert rope and all(c.inputs["cos"].shape[-1] < c.inputs["q"].shape[-1] for c in rope)  # partial rotary
    # the fused residual norm's calls are recorded as the model makes them (the recorder's path hooks are
    # observers, which the fused call skips), in prefill and decode, under the decoder layer's path
    for arch in ("llama", "qwen3", "gemma"):
        fused = [c for c in recorded(arch, torch.float32)
                 if c.operation == "rms_norm" and c.options.get("residual") is not None]
        assert {c.phase for c in fused} >= {"prefill", "decode"}, arch
        assert all(c.module and c.module.split(".")[-1].isdigit() for c in fused), [c.module for c in fused]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "bfloat16"])
def test_gemma3_qk_norms_are_replayed_transposed_on_the_triton_kernel(recorded, dtype):
    """Gemma-3 normalises q and k after the (B, S, H, D) -> (B, H, S, D) transpose: the recorded calls keep
    that layout, and the Triton RMSNorm (interpreted on CPU), which reads such input in memory order and
    returns the input's strides, passes them like every other eligible kernel."""
    calls = recorded("gemma3_text", dtype)
    qk = [c for c in calls if c.operation == "rms_norm" and c.module and c.module.endswith(("q_norm", "k_norm"))]
    assert qk and any(not c.inputs["x"].is_contiguous() and c.inputs["x"].shape[2] > 1 for c in qk)
    report = replay(qk)
    assert "triton_rms_norm" in {r.kernel_id for r in report.results}
    assert report.ok, str(report)
    from layerzero.kernels.triton.rms_norm import rms_norm as triton_rms_norm

    call = next(c for c in qk if not c.inputs["x"].is_contiguous())
    x = clone_exact(call.inputs["x"])
    out = triton_rms_norm(x, call.inputs["weight"], call.options["eps"], call.options["offset"], call.options["casting"], None)
    assert out.stride() == x.stride()  # read and written in place order: no copy


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "bfloat16"])
def test_gemma2_soft_capped_prefill_is_replayed_on_the_triton_prefill_kernel(recorded, dtype):
    """Gemma-2's prefill attention as the model makes it (softcap, the layouts and strides the integration hands
    over, its query_pre_attn_scalar scale) passes on the Triton prefill kernel, interpreted on CPU; every
    unmasked prefill call reaches it."""
    calls = recorded("gemma2", dtype)
    prefill = [c for c in calls if c.operation == "attention.prefill"]
    assert prefill and all(c.options.get("softcap") for c in prefill)
    report = replay(prefill)
    unmasked = sum(1 for c in prefill if c.inputs.get("attn_mask") is None and c.options.get("attn_mask") is None)
    on_triton = [r for r in report.results if r.kernel_id == "triton_prefill_attention" and r.status == "pass"]
    assert unmasked and len(on_triton) == unmasked and report.ok, str(report)


def test_clone_exact_keeps_strides_offsets_and_broadcasts():
    fused = torch.randn(2, 3, 8)
    gate, up = fused.chunk(2, dim=-1)
    mask = (torch.rand(2, 1, 1, 5) > 0.5).expand(2, 1, 4, 5)  # stride-0 query dim
    view = torch.randn(2, 4, 3, 6).transpose(1, 2)
    for t in (gate, up, mask, view):
        c = clone_exact(t)
        assert (c.shape, c.stride(), c.storage_offset(), c.dtype) == (t.shape, t.stride(), t.storage_offset(), t.dtype)
        assert torch.equal(c, t) and c.data_ptr() != t.data_ptr()


def test_save_and_load_round_trip(recorded, tmp_path):
    calls = recorded("llama", torch.bfloat16)[:6]
    save_calls(calls, tmp_path / "calls.pt")
    back = load_calls(tmp_path / "calls.pt")
    assert [c.signature for c in back] == [c.signature for c in calls]
    assert [(c.phase, c.label, c.module, c.count) for c in back] == [(c.phase, c.label, c.module, c.count) for c in calls]
    for a, b in zip(calls, back):
        for name, t in a.inputs.items():
            if isinstance(t, torch.Tensor):
                assert b.inputs[name].storage_offset() == t.storage_offset() and torch.equal(b.inputs[name], t)
    (tmp_path / "bad.pt").write_bytes(b"")
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a recorded-calls file"):
        load_calls(tmp_path / "bad.pt")


def _orchestrator_with(*extra: KernelSpec) -> Any:
    registry = KernelRegistry(builtin_kernels())
    for spec in extra:
        registry.register(spec)
    path = default_policy_path()
    return create_orchestrator(DispatchConfig(mode=DispatchMode.DYNAMIC, policy_path=str(path) if path else None),
                               kernel_registry=registry)


def _wrong_rms_norm(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
    """Forgets the weight offset (a Gemma-style bug); right for plain Llama norms."""
    from layerzero.kernels import reference as ref

    return ref.rms_norm(x, weight, eps=eps, offset=0.0, casting=casting, residual=residual)


def _raising_swiglu(gate, up):
    raise RuntimeError("unsupported layout")


def test_a_wrong_kernel_is_reported_failing(recorded):
    calls = recorded("gemma", torch.float32)  # offset-1 norms, GeGLU
    orch = _orchestrator_with(KernelSpec("wrong_rms_norm", "rms_norm", "torch", _wrong_rms_norm, priority=1))
    report = replay(calls, orchestrator=orch)
    wrong = [r for r in report.results if r.kernel_id == "wrong_rms_norm"]
    norms = [c for c in calls if c.operation == "rms_norm"]
    assert len(wrong) == len(norms) > 0
    assert all(r.status == "fail" and "max error" in r.error and r.max_abs_error > r.atol for r in wrong)
    assert {r.kernel_id for r in report.failures} == {"wrong_rms_norm"}
    assert not report.ok and "wrong_rms_norm" in str(report)


def test_a_raising_kernel_is_a_failure_and_kernels_filter(recorded):
    calls = [c for c in recorded("llama", torch.float32) if c.operation == "swiglu"]
    orch = _orchestrator_with(KernelSpec("raising_swiglu", "swiglu", "torch", _raising_swiglu, priority=1))
    report = replay(calls, orchestrator=orch, kernels=["raising_swiglu", "torch_swiglu"])
    assert {r.kernel_id for r in report.results} == {"raising_swiglu", "torch_swiglu"}
    failed = report.failures
    assert failed and all(r.kernel_id == "raising_swiglu" and "unsupported layout" in r.error for r in failed)


def test_record_calls_restores_the_orchestrator_and_patch_state(tiny_model_dir):
    from layerzero import ops

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()
    report = layerzero_hf.patch(model, attention=True, kernels=PIN)
    real = ops.get_orchestrator(report.orchestrator)
    ids = torch.randint(3, 128, (1, 5))
    calls = record_calls(model, ids, decode_steps=2, keep=2)
    assert ops.get_orchestrator(report.orchestrator) is real
    assert layerzero_hf.is_patched(model)
    decode = [c for c in calls if c.phase == "decode" and c.operation == "attention.decode"]
    assert decode and all(c.inputs["query"].shape[1] == 1 for c in decode)
    layerzero_hf.unpatch(model)
    assert not layerzero_hf.is_patched(model)
    with pytest.raises(ValueError, match="cache="):
        record_calls(model, ids, cache="paged")


@pytest.mark.gpu
def test_gpu_recorded_calls_pass_on_every_eligible_gpu_kernel():
    from layerzero_hf.conformance.archs import ARCHS as ALL, SMALL, TINY, build_model

    total = None
    started = time.perf_counter()
    for arch in ALL:
        for size in (TINY, SMALL):
            model = build_model(arch, size, dtype=torch.bfloat16, device="cuda")
            calls = record_scenarios(model, prompt_len=PROMPT, decode_steps=3, keep=1)
            for c in calls:  # the report's rows then say which model a call came from
                c.label = f"{arch}/head_dim{size.head_dim}/{c.label}"
            report = replay(calls)
            if total is None:
                total = report
            else:
                total.extend(report)
            del model
    total.meta = {"device": torch.cuda.get_device_name(), "seconds": round(time.perf_counter() - started, 1)}
    log = os.environ.get("LZ_CONFORMANCE_LOG")
    if log:
        with open(log, "w") as f:
            json.dump(total.as_dict(), f, indent=1, default=str)
    ran = {r.kernel_id for r in total.results}
    assert "torch_sdpa_attention" in ran and "reference_rope" in ran
    assert total.ok, str(total)
