"""The `layerzero` command: every subcommand through typer's CliRunner (exit codes and output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("typer")
pytest.importorskip("rich")

from typer.testing import CliRunner  # noqa: E402

from layerzero.cli.app import app  # noqa: E402

runner = CliRunner()

ATTN_ARGS = ["explain", "attention.causal", "--batch", "8", "--seq", "2048", "--heads", "32", "--kv-heads", "8",
             "--head-dim", "128", "--dtype", "float16"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny CPU kernels on a shared machine: threads only add noise
    yield
    torch.set_num_threads(n)


def run(*args: str):
    result = runner.invoke(app, list(args), env={"COLUMNS": "200", "LAYERZERO_POLICY": ""})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# ============================================================================================== doctor
def test_doctor_table():
    r = run("doctor")
    assert r.exit_code == 0, r.output
    for text in ("Environment", "Backends", "torch", "flash_attn", "flashinfer", "liger", "Policy choices on"):
        assert text in r.output
    assert torch.__version__ in r.output


def test_doctor_json_reports_why_a_backend_is_unusable():
    r = run("doctor", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    rows = {b["backend"]: b for b in data["backends"]}
    assert rows["torch"]["installed"] and rows["torch"]["usable"] and rows["torch"]["version"]
    for row in rows.values():
        assert set(row) >= {"installed", "version", "usable", "reason"}
        if not row["usable"]:
            assert row["reason"], row  # every unusable backend says why
        if not row["installed"]:
            assert "not installed" in row["reason"] or "no CUDA" in row["reason"] or "TRITON" in row["reason"]
    assert data["environment"]["cuda_available"] == torch.cuda.is_available()
    assert all(c["chosen"] for c in data["default_choices"])


# ============================================================================================== kernels
def test_kernels_filter_by_op():
    r = run("kernels", "--op", "rms_norm")
    assert r.exit_code == 0, r.output
    assert "torch_rms_norm" in r.output and "reference_rms_norm" in r.output and "liger_rms_norm" in r.output
    assert "torch_sdpa_attention" not in r.output


def test_kernels_json_filter_by_backend():
    r = run("kernels", "--backend", "flash_attn", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data and {k["backend"] for k in data} == {"flash_attn"}
    fa2 = next(k for k in data if k["kernel_id"] == "flash_attn_v2_attention")
    assert "flash_attention_v2" in fa2["aliases"]
    assert "cuda" in fa2["constraints_summary"] and "sm>=80" in fa2["constraints_summary"]


def test_kernels_attention_glob_lists_every_attention_kernel():
    r = run("kernels", "--op", "attention.*", "--json")
    ids = {k["kernel_id"] for k in json.loads(r.output)}
    assert {"torch_sdpa_attention", "reference_attention", "flash_attn_v2_attention"} <= ids
    assert "torch_rms_norm" not in ids


@pytest.mark.parametrize("args, text", [(("--op", "attn"), "--op 'attn'"), (("--backend", "cutlass"), "cutlass")])
def test_kernels_bad_filters(args, text):
    r = run("kernels", *args)
    assert r.exit_code == 2
    assert text in r.output


# ============================================================================================== explain
def test_explain_gpu_call_lists_every_candidate_with_reason():
    r = run(*ATTN_ARGS, "--device", "cuda", "--capability", "9.0")
    assert r.exit_code == 0, r.output
    out = r.output
    assert "chosen:" in out and "rejected" in out and "eligible" in out
    # SDPA mem-efficient cannot do GQA (32 query heads over 8 kv heads): the reason is printed
    assert "torch_sdpa_efficient_attention" in out and "grouped-query attention (32 query / 8 kv heads)" in out


def test_explain_json_on_cpu_rejects_gpu_kernels():
    r = run(*ATTN_ARGS, "--device", "cpu", "--dtype", "float32", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["operation"] == "attention.causal"
    assert data["context"]["num_kv_heads"] == 8 and data["context"]["is_causal"] is True
    by_id = {c["kernel_id"]: c for c in data["candidates"]}
    assert by_id[data["chosen"]]["status"] == "chosen"
    cudnn = by_id["torch_sdpa_cudnn_attention"]
    assert cudnn["status"] == "rejected"
    assert any("device cpu not supported" in reason for reason in cudnn["reasons"])
    assert by_id["reference_attention"]["status"] in ("eligible", "chosen")


def test_explain_with_policy_lock(tmp_path: Path):
    policy = tmp_path / "lock.yaml"
    policy.write_text('version: "1.0"\nkernel_locks:\n  rms_norm: reference_rms_norm\n')
    r = run("explain", "rms_norm", "--tokens", "16", "--hidden", "64", "--dtype", "float32", "--device", "cpu",
            "--policy", str(policy), "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["chosen"] == "reference_rms_norm"
    assert data["policy"] == str(policy)
    torch_rms = next(c for c in data["candidates"] if c["kernel_id"] == "torch_rms_norm")
    assert torch_rms["status"] == "rejected" and torch_rms["reasons"]


def test_explain_no_kernel_exits_1(tmp_path: Path):
    policy = tmp_path / "deny.yaml"
    policy.write_text('version: "1.0"\nkernel_denies: ["*"]\n')
    r = run("explain", "swiglu", "--tokens", "4", "--hidden", "8", "--device", "cpu", "--dtype", "float32",
            "--policy", str(policy))
    assert r.exit_code == 1
    assert "no kernel can run" in r.output


def test_explain_invalid_policy_exits_2(tmp_path: Path):
    policy = tmp_path / "bad.yaml"
    policy.write_text('version: "1.0"\nkernel_lokcs: {}\n')
    r = run("explain", "rms_norm", "--device", "cpu", "--policy", str(policy))
    assert r.exit_code == 2
    assert "kernel_lokcs" in r.output and "layerzero validate" in r.output


@pytest.mark.parametrize("args, text", [
    (("explain", "attention.sideways"), "attention.sideways"),
    (("explain", "rms_norm", "--dtype", "int8"), "--dtype 'int8'"),
    (("explain", "rms_norm", "--capability", "nine"), "--capability 'nine'"),
    (("explain", "attention.causal", "--mask", "sparse"), "--mask 'sparse'"),
])
def test_explain_bad_arguments(args, text):
    r = run(*args)
    assert r.exit_code == 2
    assert text in r.output


# ============================================================================================== validate
def test_validate_ok():
    seed = Path(__file__).resolve().parents[2] / "configs" / "examples" / "seed_kernels.yaml"
    r = run("validate", str(seed))
    assert r.exit_code == 0, r.output
    assert r.output.startswith("OK")


INVALID = {
    "unknown_key": ('version: "1.0"\nkernel_lokcs:\n  rms_norm: torch_rms_norm\n',
                    "kernel_lokcs", "'kernel_lokcs'"),
    "wrong_type": ('version: "1.0"\ndispatch_rules:\n  - operation: rms_norm\n    kernel: torch_rms_norm\n'
                   '    priority: high\n', "dispatch_rules[0].priority", "'high'"),
    "unknown_kernel": ('version: "1.0"\nkernel_locks:\n  rms_norm: liger_rms_nrom\n',
                       "kernel_locks.rms_norm", "'liger_rms_nrom'"),
    "unknown_condition_field": ('version: "1.0"\ndispatch_rules:\n  - operation: rms_norm\n'
                                '    conditions: {batch_sise_gte: 8}\n    kernel: torch_rms_norm\n',
                                "dispatch_rules[0].conditions.batch_sise_gte", "8"),
    "unknown_condition_operator": ('version: "1.0"\ndispatch_rules:\n  - operation: rms_norm\n'
                                   '    conditions: {batch_size_gtx: 8}\n    kernel: torch_rms_norm\n',
                                   "dispatch_rules[0].conditions.batch_size_gtx", "8"),
    "bad_glob": ('version: "1.0"\nkernel_denies: ["flash_[attn*"]\n', "kernel_denies[0]", "'flash_[attn*'"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_validate_invalid_prints_field_and_value(tmp_path: Path, name: str):
    text, field, value = INVALID[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    r = run("validate", str(path))
    assert r.exit_code == 1, r.output
    assert r.output.startswith("INVALID")
    line = next(line for line in r.output.splitlines() if line.strip().startswith(field + ":"))
    assert f"(got {value})" in line, line


def test_validate_json_lists_problems(tmp_path: Path):
    path = tmp_path / "two.yaml"
    path.write_text('version: "1.0"\nkernel_lokcs: {}\nkernel_denies: ["flash_[attn*"]\n')
    r = run("validate", str(path), "--json")
    assert r.exit_code == 1
    data = json.loads(r.output)
    assert data["valid"] is False
    fields = {p["field"] for p in data["problems"]}
    assert {"kernel_lokcs", "kernel_denies[0]"} <= fields


def test_validate_missing_file(tmp_path: Path):
    r = run("validate", str(tmp_path / "nope.yaml"))
    assert r.exit_code == 2  # unreadable input: a usage error, not an invalid file
    assert "not found" in r.output


# ============================================================================================== bench
@pytest.fixture
def shapes_file(tmp_path: Path) -> Path:
    path = tmp_path / "shapes.yaml"
    path.write_text("- {operation: rms_norm, tokens: 8, hidden: 64, dtype: float32}\n"
                    "- {operation: attention.causal, batch: 1, seq: 8, heads: 2, kv_heads: 1, head_dim: 16,"
                    " dtype: float32}\n")
    return path


def test_bench_json_out(tmp_path: Path, shapes_file: Path):
    out = tmp_path / "bench.json"
    r = run("bench", "--shapes", str(shapes_file), "--device", "cpu", "--repeats", "2", "--warmup", "0",
            "--out", str(out), "--no-progress")
    assert r.exit_code == 0, r.output
    assert "torch_rms_norm" in r.output and f"wrote {out}" in r.output
    data = json.loads(out.read_text())
    assert data["meta"]["device"] == "cpu" and data["meta"]["repeats"] == 2
    rows = data["results"]
    assert {r["operation"] for r in rows} == {"rms_norm", "attention.causal"}
    for row in rows:
        assert row["ok"] and row["median_us"] > 0 and row["max_error"] < 1e-4
    assert sum(row["chosen"] for row in rows) == 2  # one chosen kernel per shape


def test_bench_markdown_with_kernel_filter(tmp_path: Path, shapes_file: Path):
    out = tmp_path / "bench.md"
    r = run("bench", "--shapes", str(shapes_file), "--op", "rms_norm", "--kernel", "reference_rms_norm",
            "--kernel", "torch_rms_norm", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--out", str(out),
            "--no-progress")
    assert r.exit_code == 0, r.output
    md = out.read_text()
    assert md.startswith("# LayerZero kernel benchmark")
    assert "## rms_norm: x 8x64 float32" in md
    assert "| torch_rms_norm **(chosen)** |" in md and "| reference_rms_norm |" in md
    assert "attention" not in md


def test_bench_default_grid_json_stdout():
    r = run("bench", "--op", "swiglu", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--json",
            "--no-progress")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert {row["kernel_id"] for row in data["results"]} >= {"torch_swiglu", "reference_swiglu"}


def test_bench_rejects_bad_inputs(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {operation: rms_norm, tokens: many}\n- {operation: rms_nrom}\n")
    r = run("bench", "--shapes", str(bad), "--device", "cpu")
    assert r.exit_code == 2
    assert "shapes[0].tokens" in r.output and "'many'" in r.output and "shapes[1].operation" in r.output
    r = run("bench", "--op", "swiglu", "--kernel", "triton_swiglo", "--device", "cpu")
    assert r.exit_code == 2 and "triton_swiglo" in r.output and "did you mean" in r.output
    r = run("bench", "--op", "swiglu", "--device", "cpu", "--out", str(tmp_path / "x.txt"), "--repeats", "1",
            "--no-progress")
    assert r.exit_code == 2 and "--format" in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_bench_cuda_without_gpu():
    r = run("bench", "--device", "cuda")
    assert r.exit_code == 2 and "no CUDA device" in r.output


# ============================================================================================== tune
def test_tune_fills_cache(tmp_path: Path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps({"shapes": [{"operation": "swiglu", "tokens": 8, "hidden": 32, "dtype": "float32"},
                                             {"operation": "rms_norm", "tokens": 8, "hidden": 32,
                                              "dtype": "float32"}]}))
    cache = tmp_path / "tune.json"
    r = run("tune", "--shapes", str(shapes), "--cache", str(cache), "--device", "cpu", "--json", "--no-progress")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["cache"] == str(cache) and data["entries"] == 2
    chosen = {row["shape"]: row["kernel_id"] for row in data["results"]}
    assert chosen["swiglu t8 h32 float32"].endswith("swiglu")
    assert chosen["rms_norm t8 h32 float32"].endswith("rms_norm")
    assert cache.is_file() and json.loads(cache.read_text())["entries"]
    r = run("tune", "--shapes", str(shapes), "--cache", str(cache), "--device", "cpu", "--no-progress")
    assert r.exit_code == 0 and "swiglu t8 h32 float32" in r.output and str(cache) in r.output


def test_main_entry_point_help(capsys):
    from layerzero.cli import main

    with pytest.raises(SystemExit) as info:
        import sys

        old = sys.argv
        sys.argv = ["layerzero", "--help"]
        try:
            main()
        finally:
            sys.argv = old
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("doctor", "kernels", "explain", "validate", "bench", "tune"):
        assert cmd in out


def test_python_dash_m_entry_point():
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "layerzero.cli", "kernels", "--op", "swiglu", "--json"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {k["kernel_id"] for k in json.loads(proc.stdout)} >= {"torch_swiglu", "reference_swiglu"}
