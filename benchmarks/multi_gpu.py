"""Multi-GPU: a LayerZero-patched Llama-shaped model split over two GPUs, against the same model unpatched.

Two ways of splitting a model, each measured unpatched, then patched (``layerzero_hf.patch(model,
attention=True)``), on the same weights in the same process:

* ``device_map="auto"`` (accelerate, one process; the decoder layers are balanced over the visible GPUs);
* ``tp_plan="auto"`` (Transformers tensor parallel, spelled ``DistributedConfig(tp_plan="auto")`` in 5.17;
  one process per GPU under ``torch.distributed.run``, NCCL). This script launches those processes itself.

For each: logits parity vs the unpatched model (max/mean abs diff of float logits on one prompt, top-1
agreement, greedy tokens), the noise floor that parity is judged against (HF eager vs HF sdpa on the same
weights and placement: two correct implementations disagree by this much in bf16), prefill tokens/s and
decode ms/step unpatched vs patched, what the patch bound or skipped (and why), which kernels ran, and the
per-device circuit keys the dispatcher created (``kernel@cuda:N``: one breaker per kernel per GPU).

Random weights (no download): the checkpoint is built once, saved with ``save_pretrained`` and loaded through
the real ``from_pretrained`` paths. ``--cpu`` runs the same code paths on CPU for CI: a tiny fp32 Llama, the
device map split over cpu + disk offload (accelerate installs the same dispatch hooks), tensor parallel over
two gloo processes; parity must then hold to 1e-4.

    python benchmarks/multi_gpu.py --json benchmarks/results/multi_gpu.json --md benchmarks/results/multi_gpu.md
    python benchmarks/multi_gpu.py --cpu --json /tmp/multi_gpu.json --md /tmp/multi_gpu.md     # CPU smoke test

Exit status: 0 when every requested setup ran and passed parity, 1 when a setup failed or parity did not
hold, 2 when the machine cannot run the GPU setups (fewer than 2 GPUs): the JSON and markdown then say
exactly what was not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from multi_gpu_measure import run_variants  # noqa: E402
from multi_gpu_report import headline, markdown  # noqa: E402
from result_files import git_commit  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.1-8B
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256, head_dim=128, max_position_embeddings=8192,
               rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
               tie_word_embeddings=False),
    # Llama-3.2-1B
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, head_dim=64, max_position_embeddings=8192,
               rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
               tie_word_embeddings=True),
    # the CPU smoke test: 2 kv heads split over 2 ranks, 2 layers split over 2 placements
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=128, head_dim=16, max_position_embeddings=512,
                 rms_norm_eps=1e-5, initializer_range=0.1, tie_word_embeddings=False),
}
# The lent multi-GPU hosts must never use NVLink multicast (it can take the shared GPUs out of service); the
# launcher passes these to every rank even if the caller's environment lost them.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
CPU_DEFAULTS = dict(prefill="1x32,2x16", parity_len=24, prompt=8, steps=6, greedy=6, warmup=1, repeats=2, rounds=1)
GPU_DEFAULTS = dict(prefill="1x2048,8x512", parity_len=512, prompt=128, steps=32, greedy=16, warmup=2, repeats=5,
                    rounds=5)  # per-round ratios spread 0.65-1.38x over 3 rounds on a busy host (2026-12-01)


def _parse_shapes(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]  # type: ignore[misc]
    except ValueError:
        raise SystemExit(f"--prefill {text!r}: expected BATCHxSEQ[,BATCHxSEQ...], e.g. 1x2048,8x512") from None


# ---------------------------------------------------------------------------------------------- checkpoint
def build_checkpoint(path: Path, shape: str, layers: int | None, dtype: torch.dtype, device: str) -> dict[str, Any]:
    """Random weights, saved with ``save_pretrained``. 1-D weights (norms) are perturbed so a kernel that
    ignored them would show in parity."""
    import transformers

    cfg = dict(SHAPES[shape])
    if layers:
        cfg["num_hidden_layers"] = layers
    config = transformers.LlamaConfig(**cfg, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM._from_config(config, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {k: v for k, v in cfg.items() if k != "rope_parameters"}


# ---------------------------------------------------------------------------------------------- device_map
def cpu_device_map(num_layers: int) -> dict[str, str]:
    """First half of the layers in memory, the rest (and the head) offloaded to disk: Transformers only
    dispatches (installs accelerate's hooks) when a map has more than one placement."""
    half = max(1, num_layers // 2)
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu"}
    dm.update({f"model.layers.{i}": ("cpu" if i < half else "disk") for i in range(num_layers)})
    dm.update({"model.norm": "disk", "lm_head": "disk"})
    return dm


def _placement_summary(device_map: dict[str, Any]) -> dict[str, Any]:
    layers: dict[str, int] = {}
    for name, dev in device_map.items():
        key = str(dev) if isinstance(dev, str) else f"cuda:{dev}" if isinstance(dev, int) else str(dev)
        layers[key] = layers.get(key, 0) + (1 if ".layers." in name else 0)
    return {"decoder_layers_per_device": layers, "modules": len(device_map)}


def run_device_map(args: argparse.Namespace, ckpt: Path, dtype: torch.dtype, vocab: int, num_layers: int) -> dict:
    import transformers

    if args.cpu:
        offload = Path(tempfile.mkdtemp(prefix="lz_offload_"))
        device_map: Any = cpu_device_map(num_layers)
        kwargs = dict(device_map=device_map, offload_folder=offload)
        device_type = "cpu"
    else:
        kwargs = dict(device_map="auto")
        device_type = "cuda"
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa",
                                                              **kwargs).eval()
    load_s = time.perf_counter() - t0
    hf_map = dict(getattr(model, "hf_device_map", {}) or {})
    placements = {str(v) for v in hf_map.values()}
    result: dict[str, Any] = {"load_s": load_s, "placement": _placement_summary(hf_map),
                              "accelerate_hooks": sum(1 for m in model.modules() if hasattr(m, "_hf_hook"))}
    if len(placements) < 2:
        result["error"] = (f"device_map did not split the model (placements {sorted(placements)}); "
                           "a split needs 2 visible GPUs" if not args.cpu else "no split")
        return result
    input_device = model.get_input_embeddings().weight.device
    if input_device.type == "meta":
        input_device = torch.device("cpu")
    result.update(run_variants(model, args, input_device, device_type, vocab, dtype))
    del model
    gc.collect()
    if device_type == "cuda":
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------- tensor parallel
def _load_tp(ckpt: Path, dtype: torch.dtype):
    import transformers

    try:
        from transformers.distributed import DistributedConfig
    except ImportError:  # Transformers before the DistributedConfig spelling
        return transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, tp_plan="auto",
                                                                 attn_implementation="sdpa")
    return transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa",
                                                             distributed_config=DistributedConfig(tp_plan="auto"))


def tp_rank_main(args: argparse.Namespace) -> int:
    """One rank under torch.distributed.run. Rank 0 writes the part file with every rank's parity."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    dtype = torch.float32 if args.cpu else torch.bfloat16
    device_type = "cpu" if args.cpu else "cuda"
    result: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        model = _load_tp(args.checkpoint, dtype).eval()
        result["load_s"] = time.perf_counter() - t0
        result["world_size"] = dist.get_world_size()
        result["backend"] = dist.get_backend()
        w = model.model.layers[0].self_attn.q_proj.weight
        result["sharding"] = {"q_proj": type(w).__name__, "global_shape": list(w.shape),
                              "local_shape": list(w.to_local().shape) if hasattr(w, "to_local") else list(w.shape)}
        input_device = torch.device("cpu") if args.cpu else torch.device("cuda", torch.cuda.current_device())
        result["device"] = str(input_device)
        result.update(run_variants(model, args, input_device, device_type, model.config.vocab_size, dtype))
    except Exception as exc:  # noqa: BLE001 - reported, and the other rank's collective fails too
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
    gathered: list[Any] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(gathered, {"rank": rank, "parity": result.get("parity_patched_vs_unpatched"),
                                          "error": result.get("error"), "device": result.get("device"),
                                          "circuit_keys": result.get("patch", {}).get("circuit_keys")})
    except Exception as exc:  # noqa: BLE001
        gathered = [{"rank": rank, "error": f"all_gather_object failed: {exc}"}]
    if rank == 0:
        result["ranks"] = gathered
        Path(args.part).write_text(json.dumps(result, indent=2))
    dist.destroy_process_group()
    return 0 if "error" not in result else 1


def run_tp(args: argparse.Namespace, ckpt: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="lz_tp_"))
    part, logs = workdir / "tp.json", workdir / "logs"
    # --log-dir/--tee keep each rank's own stderr: torchrun's summary of a dead rank names the signal only.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
           "--log-dir", str(logs), "--tee", "3",
           str(Path(__file__).resolve()), "--mode", "tp", "--checkpoint", str(ckpt), "--part", str(part),
           "--prefill", args.prefill, "--parity-len", str(args.parity_len), "--prompt", str(args.prompt),
           "--steps", str(args.steps), "--greedy", str(args.greedy), "--warmup", str(args.warmup),
           "--repeats", str(args.repeats)] + (["--cpu"] if args.cpu else []) + (
               ["--profile"] if args.profile else []) + ([] if args.fp32_check else ["--no-fp32-check"])
    env = {**os.environ, **NO_MULTICAST_ENV,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.cpu:
        env["OMP_NUM_THREADS"] = "1"
    # A launcher that fails before any rank reports (e.g. another process took the rendezvous port that
    # --standalone picked) is retried once; a rank that ran and failed is a result, not retried.
    for attempt in (1, 2):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.tp_timeout)
        except subprocess.TimeoutExpired as exc:
            tail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return {"error": f"tensor-parallel run exceeded {args.tp_timeout} s", "stderr_tail": tail[-3000:]}
        if part.exists():
            break
    else:
        return {"error": f"tensor-parallel run wrote no result in 2 attempts (rc={proc.returncode})",
                "stderr_tail": proc.stderr[-3000:]}
    result = json.loads(part.read_text())
    result["returncode"] = proc.returncode
    result["launch_attempts"] = attempt
    if proc.returncode and "error" not in result:
        result["error"] = f"a rank failed (rc={proc.returncode})"
        result["stderr_tail"] = proc.stderr[-3000:]
        result["rank_stderr_tails"] = _rank_stderr_tails(logs)
    return result


def _rank_stderr_tails(logs: Path, chars: int = 1500) -> dict[str, str]:
    """The end of each rank's stderr.log under torchrun's --log-dir (layout: <run>/attempt_<n>/<rank>/)."""
    tails = {}
    for log in sorted(logs.glob("*/attempt_*/*/stderr.log")):
        text = "\n".join(line for line in log.read_text(errors="replace").splitlines()
                         if line.strip() and "Loading weights" not in line)
        tails[f"{log.parent.parent.name}/rank{log.parent.name}"] = text[-chars:]
    return tails


# ---------------------------------------------------------------------------------------------- orchestration
def versions() -> dict[str, Any]:
    import transformers

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "accelerate": None, "git": None}
    try:
        import accelerate

        out["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    out["git"] = git_commit()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import layerzero_hf  # noqa: F401  (registers attn_implementation="layerzero")

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    dtype = torch.float32 if args.cpu else torch.bfloat16
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "cpu" if args.cpu else "gpu",
        "device": ("cpu: " + (platform.processor() or platform.machine())) if args.cpu else
        ", ".join(torch.cuda.get_device_name(i) for i in range(n_gpus)) or "no CUDA device",
        "gpus": n_gpus, "dtype": str(dtype).removeprefix("torch."), "shape": args.shape,
        "versions": versions(), "setups": {}, "not_run": [],
    }
    wanted = ["device_map", "tp"] if args.mode == "all" else [args.mode]
    if not args.cpu and n_gpus < 2:
        why = f"needs 2 CUDA GPUs in one host, this machine has {n_gpus}"
        result["not_run"] = [f"{name}: {why}" for name in wanted]
        result["status"] = "blocked"
        return result

    ckpt = Path(args.checkpoint) if args.checkpoint else Path(tempfile.mkdtemp(prefix="lz_ckpt_"))
    if not (ckpt / "config.json").exists():
        t0 = time.perf_counter()
        result["config"] = build_checkpoint(ckpt, args.shape, args.layers, dtype, "cpu" if args.cpu else "cuda:0")
        result["checkpoint_build_s"] = time.perf_counter() - t0
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(ckpt)
    result.setdefault("config", {k: getattr(cfg, k) for k in SHAPES["tiny"] if hasattr(cfg, k)})
    for name in wanted:
        print(f"[multi_gpu] {name} ...", flush=True)
        try:
            entry = (run_device_map(args, ckpt, dtype, cfg.vocab_size, cfg.num_hidden_layers) if name == "device_map"
                     else run_tp(args, ckpt))
        except Exception as exc:  # noqa: BLE001 - one setup failing is a result; the other still runs
            entry = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
        result["setups"][name] = entry
        print(f"[multi_gpu] {name}: {json.dumps(headline(entry))}", flush=True)
    failed = [n for n, e in result["setups"].items()
              if "error" in e or not e.get("parity_patched_vs_unpatched", {}).get("passed", False)
              or not e.get("fp32_check", {"passed": True}).get("passed", False)]
    result["status"] = "failed" if failed else "passed"
    result["failed"] = failed
    return result


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="CI smoke test: tiny fp32 model, cpu+disk map, gloo TP")
    ap.add_argument("--mode", choices=["all", "device_map", "tp"], default="all",
                    help="'tp' is the per-rank entry point that this script launches under torch.distributed.run")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="model shape (default 8b on GPU, tiny on CPU)")
    ap.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    ap.add_argument("--checkpoint", type=Path, default=None, help="reuse / create the random checkpoint here")
    ap.add_argument("--nproc", type=int, default=2, help="tensor-parallel processes")
    ap.add_argument("--tp-timeout", type=int, default=None, help="seconds for the whole tensor-parallel run")
    ap.add_argument("--prefill", default=None, help="prefill shapes BATCHxSEQ,...")
    ap.add_argument("--parity-len", type=int, default=None)
    ap.add_argument("--prompt", type=int, default=None, help="decode prompt length")
    ap.add_argument("--steps", type=int, default=None, help="decode steps per measurement")
    ap.add_argument("--greedy", type=int, default=None, help="greedy tokens compared for parity")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None, help="alternating unpatched/patched timing rounds")
    ap.add_argument("--fp32-check", action=argparse.BooleanOptionalAction, default=True,
                    help="also compare patched vs unpatched with the weights upcast to fp32 (GPU runs)")
    ap.add_argument("--profile", action="store_true", help="profile a short decode, unpatched and patched")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--md", type=Path, help="write the markdown table here")
    args = ap.parse_args(argv)
    defaults = CPU_DEFAULTS if args.cpu else GPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.shape is None:
        args.shape = "tiny" if args.cpu else "8b"
    if args.tp_timeout is None:
        args.tp_timeout = 150 if args.cpu else 360
    args.prefill_shapes = _parse_shapes(args.prefill)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for key, value in NO_MULTICAST_ENV.items():
        os.environ.setdefault(key, value)
    if args.mode == "tp" and "RANK" in os.environ:
        if not args.part or not args.checkpoint:
            raise SystemExit("--mode tp runs under torch.distributed.run with --checkpoint and --part; "
                             "run the script without --mode to launch it")
        rc = tp_rank_main(args)
        # Leave without running C++ static destructors: on CPU/gloo a rank that had already reported and
        # destroyed its process group still died at interpreter exit now and then with "terminate called
        # without an active exception" (a joinable std::thread in a static object), which torchrun turns
        # into a failed run. Everything this rank owes is written and flushed before this point.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    result = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    md = markdown(result)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    print(md)
    return {"passed": 0, "failed": 1, "blocked": 2}[result["status"]]


if __name__ == "__main__":
    sys.exit(main())
