"""Tensor parallelism without GPUs: two CPU processes (gloo) load the tiny Llama with ``tp_plan="auto"``.

Transformers 5.17 supports this on CPU: ``initialize_tensor_parallelism`` builds a ``cpu`` device mesh and
``_ensure_torch_distributed`` maps cpu to the gloo backend. Its TP hooks replace the forwards of the
projections (nn.Linear) only, so every norm, RoPE and MLP of the Llama spec is patched, and each rank's
attention sees its local heads (2 of 4 query heads, 1 of 2 kv heads). Each rank must match its own
unpatched logits (fp32, 1e-4) and greedy tokens, and the single-process model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available in this torch build", allow_module_level=True)

TOL = 1e-4
WORKER = Path(__file__).resolve().parent / "_tp_worker.py"
TIMEOUT_S = 150


@pytest.fixture(scope="module")
def ranks(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("tp_ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(WORKER), str(tiny_llama_dir), str(out)]
    for _ in range(2):  # retried once only if the launcher failed before any rank wrote (rendezvous port race)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        if any(out.glob("rank*.json")):
            break
    results = []
    for rank in range(2):
        path = out / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote nothing (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
        results.append(json.loads(path.read_text()))
    errors = [f"rank {r['rank']}: {r['error']}\n{r['traceback']}" for r in results if "error" in r]
    assert not errors, "\n".join(errors)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return results


def test_model_is_really_sharded_over_two_gloo_ranks(ranks):
    for r in ranks:
        assert (r["world_size"], r["backend"], r["tp_size"]) == (2, "gloo", 2)
        assert r["q_proj_type"] == "DTensor"
        assert r["q_proj_local_shape"][0] * 2 == r["q_proj_global_shape"][0]


def test_every_rank_patches_the_whole_spec_and_dispatches_attention(ranks):
    for r in ranks:
        assert r["patched"] == {"rms_norm": 5, "rope": 2, "mlp": 2, "residual_norm": 2}, r["skipped"]
        assert r["skipped"] == [] and r["attn_implementation"] == "layerzero"
        assert {"rms_norm", "rope", "swiglu"} <= set(r["per_operation"])
        assert any(op.startswith("attention") for op in r["per_operation"])
        assert r["failures"] == 0


def test_patched_logits_and_tokens_match_unpatched_on_every_rank(ranks):
    for r in ranks:
        assert r["patched_vs_unpatched"] <= TOL, r
        assert r["restored_vs_unpatched"] == 0.0, r
        assert r["unpatched_vs_single_process"] <= TOL, r
        assert r["patched_tokens"] == r["unpatched_tokens"]
    assert ranks[0]["patched_tokens"] == ranks[1]["patched_tokens"]
