"""One rank of the tensor-parallel test: ``python -m torch.distributed.run --standalone --nproc-per-node 2
_tp_worker.py CHECKPOINT OUT_DIR`` (gloo on CPU; Transformers initialises the process group itself).

Each rank loads the checkpoint with ``tp_plan="auto"`` (``DistributedConfig(tp_plan="auto")``, the spelling
Transformers 5.17 prefers), runs it unpatched, patched (``layerzero_hf.patch(model, attention=True)``) and
unpatched again, and writes ``rank<N>.json`` with what it measured. The test process judges the numbers, so
a failing assertion shows every rank's evidence. Any exception is written to the file too (and exits 1).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # the repository root: layerzero, layerzero_hf

NEW_TOKENS = 6


def load_tp(path: str):
    import transformers

    try:
        from transformers.distributed import DistributedConfig
    except ImportError:  # older Transformers: the standalone argument
        return transformers.AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", attn_implementation="eager")
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, distributed_config=DistributedConfig(tp_plan="auto"), attn_implementation="eager")


def run(path: str, rank: int) -> dict:
    import transformers

    import layerzero_hf
    from _md_tiny import prompt_ids

    torch.manual_seed(0)
    model = load_tp(path).eval()
    ids = prompt_ids()
    q = model.model.layers[0].self_attn.q_proj.weight

    def logits():
        with torch.no_grad():
            out = model(ids).logits
        return out.full_tensor() if hasattr(out, "full_tensor") else out

    def tokens():
        return model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                              pad_token_id=0, eos_token_id=None)

    unpatched, unpatched_tokens = logits(), tokens()
    report = layerzero_hf.patch(model, attention=True)
    patched, patched_tokens = logits(), tokens()
    snap = layerzero_hf.model_telemetry(model)["snapshot"]
    layerzero_hf.unpatch(model)
    restored = logits()

    single = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        single_logits = single(ids).logits
    return {
        "rank": rank,
        "world_size": torch.distributed.get_world_size(),
        "backend": torch.distributed.get_backend(),
        "tp_size": getattr(model, "tp_size", None),
        "q_proj_type": type(q).__name__,
        "q_proj_global_shape": list(q.shape),
        "q_proj_local_shape": list(q.to_local().shape) if hasattr(q, "to_local") else list(q.shape),
        "patched": report.counts(),
        "skipped": [f"{s.path}: {s.reason}" for s in report.skipped],
        "attn_implementation": report.attn_implementation,
        "per_operation": dict(snap.per_operation),
        "kernels": {k: v.calls for k, v in snap.per_kernel.items() if v.calls},
        "failures": snap.failure_count,
        "patched_vs_unpatched": (patched - unpatched).abs().max().item(),
        "restored_vs_unpatched": (restored - unpatched).abs().max().item(),
        "unpatched_vs_single_process": (unpatched - single_logits).abs().max().item(),
        "unpatched_tokens": unpatched_tokens.tolist(),
        "patched_tokens": patched_tokens.tolist(),
    }


def main() -> int:
    path, out_dir = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    out = out_dir / f"rank{rank}.json"
    try:
        result = run(path, rank)
    except BaseException as exc:  # noqa: BLE001 - the evidence goes to the test process
        out.write_text(json.dumps({"rank": rank, "error": f"{type(exc).__name__}: {exc}",
                                   "traceback": traceback.format_exc()}))
        return 1
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
