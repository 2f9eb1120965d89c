"""End to end: a tiny random Llama served by ``vllm.LLM`` with the plugin installed but off, on, on with a
policy that chooses LayerZero's kernels, and with a deny-all policy. (An odd opt-out value is tested
in-process, in test_plugin_config.py: the opt-out makes register() return before anything else.)

Each plugin variant runs in its own process (vLLM loads plugins and reads the environment at engine start)
via ``run_variant.py``; inside it the engine settings run one after the other: fp32 and bf16 eager, and
bf16 in vLLM's default ``torch.compile`` mode, each on 32 prompts of 3 to 300 tokens. Greedy tokens
must be identical to vLLM without the plugin in every one of them. What ran in the worker comes from the
worker's own telemetry, read over ``collective_rpc``.
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
TIMEOUT_S = int(os.environ.get("LAYERZERO_VLLM_RUN_TIMEOUT", "1200"))
# fp32 and bf16 eager, and vLLM's default compiled mode in bf16 (the dtype where rounding differences
# show). Compiling costs minutes on 2 cores, so fp32-compile is left out of CI; run_variant.py and
# benchmarks/vllm_plugin.py take --modes fp32-compile to check it.
ALL_MODES = "fp32-eager,bf16-eager,bf16-compile"
_RESULTS: dict[str, dict] = {}

# LayerZero's own kernels for rope and rms_norm: proves the policy file reaches the worker
POLICY = """\
version: "1.0"
kernel_locks:
  rope: reference_rope
  rms_norm: torch_rms_norm
"""

# per-model rules (the layerzero_hf format): swiglu of llama models on the fp32 reference
RULES = """\
version: 1
rules:
  - name: llama-reference-swiglu
    match: {model_type: [llama]}
    kernels: {swiglu: reference_swiglu}
"""

DENY_ALL = """\
version: "1.0"
kernel_denies:
  - "*rms_norm*"
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
    WORKDIR.mkdir(parents=True, exist_ok=True)
    out = WORKDIR / f"{name}.json"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERZERO_") and k != "VLLM_PLUGINS"}
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


def operations(result: dict, mode: str) -> dict[str, dict]:
    """LayerZero per-operation counts summed over the workers of one mode of a run."""
    totals: dict[str, dict] = {}
    for worker in result["modes"][mode]["telemetry"]:
        assert worker["pid"] != result["main_pid"], "telemetry must come from vLLM's worker process"
        for op, stats in worker["operations"].items():
            t = totals.setdefault(op, {"calls": 0, "kernels": {}})
            t["calls"] += stats["calls"]
            for kid, n in stats["kernels"].items():
                t["kernels"][kid] = t["kernels"].get(kid, 0) + n
    return totals


def plans(result: dict, mode: str) -> dict[str, dict]:
    (worker,) = result["modes"][mode]["telemetry"]
    return worker["plans"]


@pytest.fixture(scope="session")
def baseline(model_dir) -> dict:
    """vLLM with LayerZero installed but not enabled: exactly plain vLLM (no worker extension either)."""
    return ok(run("off", model_dir, None, "--modes", ALL_MODES, "--no-extension"))


@pytest.fixture(scope="session")
def plugin_on(model_dir) -> dict:
    return ok(run("on", model_dir, {"LAYERZERO_VLLM": "1"}, "--modes", ALL_MODES))


def test_installed_but_not_enabled_runs_no_layerzero_code(baseline):
    log = Path(baseline["log"]).read_text()
    assert "LayerZero vLLM plugin" not in log and "LayerZero orchestrator" not in log, \
        "installing the package must not activate the plugin"
    for mode in ALL_MODES.split(","):
        assert len(baseline["modes"][mode]["token_ids"]) == 32


def test_telemetry_without_the_extension_says_what_to_set(baseline):
    error = baseline["modes"]["fp32-eager"]["telemetry_error"]
    assert "worker_extension_cls='layerzero_vllm.LayerZeroWorkerExtension'" in error, error
    assert "Call to collective_rpc method failed" not in error


@pytest.mark.parametrize("mode", ALL_MODES.split(","))
def test_plugin_on_is_exact(baseline, plugin_on, mode):
    """Greedy tokens identical to plain vLLM on 32 mixed-length prompts, fp32 and bf16, eager and compiled."""
    assert plugin_on["modes"][mode]["token_ids"] == baseline["modes"][mode]["token_ids"]


@pytest.mark.parametrize("mode", ["bf16-eager", "bf16-compile"])
def test_plugin_on_keeps_vllms_forward_and_says_so(plugin_on, mode):
    got = plans(plugin_on, mode)
    direct = "(vLLM's own forward, called directly)"
    assert got["RMSNorm"]["runs"] == {f"vllm_rms_norm {direct}": 5}, got  # 2 per layer + the final norm
    assert got["SiluAndMul"]["runs"] == {f"vllm_silu_and_mul {direct}": 2}, got
    assert list(got["RotaryEmbedding"]["runs"]) == [f"vllm_rope {direct}"], got
    assert operations(plugin_on, mode) == {}  # nothing dispatched per call: no overhead to pay
    log = Path(plugin_on["log"]).read_text()
    assert f"LayerZero vLLM plugin: RMSNorm (rms_norm) runs vllm_rms_norm {direct}" in log


def test_policy_and_rules_choose_layerzero_kernels_in_the_worker(model_dir, baseline):
    WORKDIR.mkdir(parents=True, exist_ok=True)
    policy = WORKDIR / "policy.yaml"
    policy.write_text(POLICY)
    rules = WORKDIR / "models.yaml"
    rules.write_text(RULES)
    dump_dir = WORKDIR / "dumps"
    for old in dump_dir.glob("*.json"):
        old.unlink()
    on = ok(run("policy", model_dir, {"LAYERZERO_VLLM": "1", "LAYERZERO_POLICY": str(policy),
                                      "LAYERZERO_RULES": str(rules)}, "--dump-dir", str(dump_dir)))
    ops = operations(on, "fp32-eager")
    assert set(ops["rope"]["kernels"]) == {"reference_rope"}, "the policy file must reach the worker"
    assert set(ops["rms_norm"]["kernels"]) == {"torch_rms_norm"}, ops
    assert set(ops["swiglu"]["kernels"]) == {"reference_swiglu"}, "the per-model rules must reach the worker"
    # 2 layers: 2 norms per layer + the final norm, 1 rope and 1 swiglu per layer, per forward step
    assert ops["rms_norm"]["calls"] == 5 * ops["rope"]["calls"] // 2
    assert ops["swiglu"]["calls"] == ops["rope"]["calls"]
    (worker,) = on["modes"]["fp32-eager"]["telemetry"]
    assert [n for n in worker["orchestrators"] if n.startswith("layerzero_vllm:llama")] == ["layerzero_vllm:llama:1"]
    assert worker["layers"]["LayerZeroRMSNorm"] == 5 and worker["layers"]["LayerZeroSiluAndMul"] == 2
    # fp32: LayerZero's kernels round like vLLM's here (measured: 32/32 prompts identical)
    assert on["modes"]["fp32-eager"]["token_ids"] == baseline["modes"]["fp32-eager"]["token_ids"]
    from layerzero_vllm.telemetry import read_telemetry_dir, sum_operation_calls

    files = read_telemetry_dir(str(dump_dir))
    assert [f["pid"] for f in files] == [worker["pid"]]
    assert sum_operation_calls(files) == {op: s["calls"] for op, s in ops.items()}


def test_deny_all_policy_stops_llm_at_start_naming_the_file(model_dir):
    path = WORKDIR / "deny-all.yaml"
    WORKDIR.mkdir(parents=True, exist_ok=True)
    path.write_text(DENY_ALL)
    result = run("deny_all", model_dir, {"LAYERZERO_VLLM": "1", "LAYERZERO_POLICY": str(path)})
    err = result.get("error")
    assert err is not None, "a deny-all policy must stop the engine"
    assert err["type"] == "PluginConfigError", err
    assert str(path) in err["message"] and "kernel_denies[0] = '*rms_norm*'" in err["message"], err["message"]
    assert result["modes"] == {}  # raised while creating the engine, before it served anything
