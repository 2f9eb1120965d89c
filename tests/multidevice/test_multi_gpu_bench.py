"""benchmarks/multi_gpu.py: the CPU mode runs both setups end to end (cpu+disk device map in process,
tensor parallel over two gloo processes that the script launches), and without two GPUs the GPU mode says
exactly what it could not run instead of measuring something else."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "multi_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("multi_gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cpu_mode_runs_device_map_and_tp_with_parity(bench, tmp_path: Path):
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    rc = bench.main(["--cpu", "--tp-timeout", "120", "--json", str(out), "--md", str(md)])
    result = json.loads(out.read_text())
    errors = {name: (e.get("error"), (e.get("traceback") or e.get("stderr_tail") or "")[-1500:],
                     e.get("rank_stderr_tails"))
              for name, e in result["setups"].items() if "error" in e}
    assert not errors, errors
    assert rc == 0 and result["status"] == "passed", json.dumps(result, indent=1)[-3000:]
    dm, tp = result["setups"]["device_map"], result["setups"]["tp"]
    for entry in (dm, tp):
        parity = entry["parity_patched_vs_unpatched"]
        assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
        assert parity["greedy_equal"] == parity["greedy_tokens"] > 0
        assert entry["patch"]["attn_implementation"] == "layerzero" and entry["patch"]["failures"] == 0
        assert any(k.endswith("attention") for k in entry["patch"]["kernels"])
        assert all(v > 0 for v in entry["patched"]["prefill_tokens_per_s"].values())
        assert entry["patched"]["decode_ms_per_step"] > 0 and entry["unpatched"]["decode_ms_per_step"] > 0
    assert dm["placement"]["decoder_layers_per_device"] == {"cpu": 1, "disk": 1} and dm["accelerate_hooks"] > 0
    assert tp["patch"]["patched"] == {"rms_norm": 5, "rope": 2, "mlp": 2, "residual_norm": 2}
    assert tp["backend"] == "gloo" and tp["sharding"]["local_shape"][0] * 2 == tp["sharding"]["global_shape"][0]
    assert [r["rank"] for r in tp["ranks"]] == [0, 1] and all(r["parity"]["passed"] for r in tp["ranks"])
    text = md.read_text()
    assert "| device_map |" in text and "| tp |" in text and "Decode ms/step" in text


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine can run the GPU setups")
def test_gpu_mode_without_two_gpus_reports_blocked(bench, tmp_path: Path):
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    assert bench.main(["--json", str(out), "--md", str(md)]) == 2
    result = json.loads(out.read_text())
    assert result["status"] == "blocked" and result["setups"] == {}
    assert [line.split(":")[0] for line in result["not_run"]] == ["device_map", "tp"]
    assert "needs 2 CUDA GPUs" in md.read_text()


def test_rank_stderr_tails_read_torchrun_log_layout(bench, tmp_path: Path):
    for rank, text in (("0", "ok\n"), ("1", "Loading weights: 100%\nterminate called without an active exception\n")):
        log = tmp_path / "run_abc" / "attempt_0" / rank / "stderr.log"
        log.parent.mkdir(parents=True)
        log.write_text(text)
    tails = bench._rank_stderr_tails(tmp_path)
    assert tails == {"attempt_0/rank0": "ok", "attempt_0/rank1": "terminate called without an active exception"}
