"""End to end: a tiny random Llama served by ``vllm.LLM`` with and without the plugin.

Each variant runs in its own process (vLLM loads plugins and reads the environment at engine start) via
``run_variant.py``, which reads LayerZero's telemetry back from vLLM's worker process over
``collective_rpc``. The proof that LayerZero ran inside vLLM is that telemetry, not a log line: the counts
come from the worker's own dispatcher, in a process whose pid differs from the caller's.

Every variant generates 40 greedy tokens for 5 prompts with 32-token KV blocks, so sequences span
several blocks (which the LayerZero attention backend must gather correctly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
WORKDIR = Path(os.environ.get("LAYERZERO_VLLM_WORKDIR") or Path(tempfile.gettempdir()) / "layerzero-vllm-tests")
TIMEOUT_S = int(os.environ.get("LAYERZERO_VLLM_RUN_TIMEOUT", "400"))
_RESULTS: dict[str, dict] = {}

# rope locked to the fp32 reference: proves the policy file reaches the worker (the default picks torch_rope)
POLICY = """\
version: "1.0"
kernel_locks:
  rope: reference_rope
"""

# per-model rules (the layerzero_hf format): swiglu of llama models on the fp32 reference
RULES = """\
version: 1
rules:
  - name: llama-reference-swiglu
    match: {model_type: [llama]}
    kernels: {swiglu: reference_swiglu}
"""

BAD_POLICY = """\
version: "1.0"
kernel_locks:
  rope: no_such_rope_kernel
"""


@pytest.fixture(scope="session")
def model_dir() -> Path:
    sys.path.insert(0, str(HERE))
    from tiny_model import build

    return build(WORKDIR / "tiny-llama")


def run(name: str, model: Path, env: dict[str, str] | None = None, *args: str) -> dict:
    """Run one variant once per session and return its JSON result."""
    if name in _RESULTS:
        return _RESULTS[name]
    out = WORKDIR / f"{name}.json"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERZERO_")}
    full_env.update(VLLM_CPU_KVCACHE_SPACE=full_env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
                    VLLM_CACHE_ROOT=str(WORKDIR / "vllm-cache"))  # compiled graphs of these runs only
    full_env.update(env or {})
    log = WORKDIR / f"{name}.log"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, str(HERE / "run_variant.py"), str(model), str(out), *args],
                              env=full_env, stdout=fh, stderr=subprocess.STDOUT, timeout=TIMEOUT_S)
    assert proc.returncode == 0 and out.is_file(), f"variant {name} crashed; see {log}"
    result = json.loads(out.read_text())
    result["log"] = str(log)
    _RESULTS[name] = result
    return result


def ok(result: dict) -> dict:
    assert "error" not in result, f"engine failed: {result['error']['type']}: {result['error']['message']}\n" \
                                  f"{result['error']['traceback']}\n(log: {result['log']})"
    return result


def operations(result: dict) -> dict[str, dict]:
    """LayerZero per-operation counts summed over the workers of a run."""
    totals: dict[str, dict] = {}
    for worker in result["telemetry"]:
        assert worker["pid"] != result["main_pid"], "telemetry must come from vLLM's worker process"
        for op, stats in worker["operations"].items():
            t = totals.setdefault(op, {"calls": 0, "kernels": {}})
            t["calls"] += stats["calls"]
            for kid, n in stats["kernels"].items():
                t["kernels"][kid] = t["kernels"].get(kid, 0) + n
    return totals


@pytest.fixture(scope="session")
def baseline(model_dir) -> dict:
    """vLLM without LayerZero: the plugin is installed but opted out."""
    return ok(run("off", model_dir, {"LAYERZERO_VLLM_DISABLE": "1"}))


def test_opt_out_runs_no_layerzero_code(baseline):
    assert operations(baseline) == {}
    assert all(w["dispatch_count"] == 0 and w["layers"] == {} for w in baseline["telemetry"])


def test_plugin_runs_layerzero_ops_in_the_worker_with_identical_outputs(model_dir, baseline):
    policy = WORKDIR / "policy.yaml"
    policy.write_text(POLICY)
    rules = WORKDIR / "models.yaml"
    rules.write_text(RULES)
    dump_dir = WORKDIR / "dumps"
    for old in dump_dir.glob("*.json"):
        old.unlink()
    on = ok(run("on", model_dir, {"LAYERZERO_POLICY": str(policy), "LAYERZERO_RULES": str(rules)},
                "--dump-dir", str(dump_dir)))
    ops = operations(on)
    assert ops["rms_norm"]["calls"] > 0 and ops["swiglu"]["calls"] > 0 and ops["rope"]["calls"] > 0, ops
    assert set(ops["rope"]["kernels"]) == {"reference_rope"}, "the policy file must reach the worker"
    assert set(ops["swiglu"]["kernels"]) == {"reference_swiglu"}, "the per-model rules must reach the worker"
    assert set(ops["rms_norm"]["kernels"]) == {"torch_rms_norm"}  # the packaged default's choice
    # 2 layers: 2 norms per layer + the final norm, 1 rope and 1 swiglu per layer, per forward step
    assert ops["rms_norm"]["calls"] == 5 * ops["rope"]["calls"] // 2
    assert ops["swiglu"]["calls"] == ops["rope"]["calls"]
    assert "attention.prefill" not in ops  # the attention backend is opt-in
    (worker,) = on["telemetry"]
    assert list(worker["orchestrators"]) == ["layerzero_hf:llama:1"]  # one orchestrator for the model
    assert worker["layers"]["LayerZeroRMSNorm"] == 5 and worker["layers"]["LayerZeroSiluAndMul"] == 2
    assert worker["layers"]["LayerZeroRotaryEmbedding"] >= 1
    assert on["token_ids"] == baseline["token_ids"]
    assert all(len(t) == 40 for t in on["token_ids"])
    # the same counters, written by the worker on demand (collective_rpc "layerzero_dump_telemetry")
    from layerzero_vllm.telemetry import read_telemetry_dir, sum_operation_calls

    files = read_telemetry_dir(str(dump_dir))
    assert [f["pid"] for f in files] == [worker["pid"]]
    assert sum_operation_calls(files) == {op: s["calls"] for op, s in ops.items()}


def test_transformers_backend_uses_tp_aware_rms_norm(model_dir, baseline):
    """vLLM's Transformers modelling backend swaps HF norms for TPAwareRMSNorm: replaced as well."""
    result = ok(run("transformers_backend", model_dir, None, "--model-impl", "transformers"))
    (worker,) = result["telemetry"]
    assert worker["layers"].get("LayerZeroTPAwareRMSNorm", 0) == 5, worker["layers"]
    ops = operations(result)
    assert ops["rms_norm"]["calls"] > 0 and ops["swiglu"]["calls"] > 0
    assert result["token_ids"] == baseline["token_ids"]


@pytest.mark.parametrize(
    "name, custom_ops, expected_ops",
    [
        ("none", "none", set()),  # every op disabled -> vLLM's forward_native
        ("none_rmsnorm", "none,+RMSNorm", {"rms_norm"}),
    ],
)
def test_custom_ops_variants(model_dir, baseline, name, custom_ops, expected_ops):
    result = ok(run(name, model_dir, None, "--custom-ops", custom_ops))
    assert {op for op, s in operations(result).items() if s["calls"]} == expected_ops
    assert result["token_ids"] == baseline["token_ids"]


def test_torch_compile_with_native_layerzero(model_dir, baseline):
    """vLLM's compiled mode (Dynamo; custom_ops default "none") with LAYERZERO_VLLM_NATIVE=layerzero:
    forward_native dispatches through LayerZero, traced as the opaque layerzero::* custom ops."""
    result = ok(run("compile_native", model_dir, {"LAYERZERO_VLLM_NATIVE": "layerzero"}, "--compile"))
    ops = operations(result)
    assert {op for op, s in ops.items() if s["calls"]} == {"rms_norm", "rope", "swiglu"}
    assert result["token_ids"] == baseline["token_ids"]


def test_attention_backend_lets_layerzero_choose(model_dir, baseline):
    result = ok(run("attention", model_dir, {"LAYERZERO_VLLM_ATTENTION": "1"}))
    ops = operations(result)
    assert ops["attention.prefill"]["calls"] > 0 and ops["attention.decode"]["calls"] > 0, ops
    assert ops["attention.decode"]["calls"] > ops["attention.prefill"]["calls"]
    assert result["token_ids"] == baseline["token_ids"]


@pytest.mark.parametrize("kind", ["missing", "invalid"])
def test_bad_policy_fails_at_engine_start_with_a_clear_error(model_dir, kind):
    if kind == "missing":
        path = WORKDIR / "does-not-exist.yaml"
        expected = "file not found"
    else:
        path = WORKDIR / "bad-policy.yaml"
        path.write_text(BAD_POLICY)
        expected = "no_such_rope_kernel"
    result = run(f"bad_policy_{kind}", model_dir, {"LAYERZERO_POLICY": str(path)})
    err = result.get("error")
    assert err is not None, "a bad policy must stop the engine"
    assert err["type"] == "PluginConfigError", err
    assert "LAYERZERO_POLICY" in err["message"] and str(path) in err["message"] and expected in err["message"]
    assert "startup_s" not in result  # raised while creating the engine, before any worker served
