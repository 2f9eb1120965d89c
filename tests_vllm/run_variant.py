"""Serve the tiny Llama with vLLM in one process, for one or more engine settings, and write what happened
as JSON.

Usage: python run_variant.py MODEL_DIR OUT_JSON [--modes fp32-eager,bf16-eager,fp32-compile,bf16-compile]
       [--prompts mixed|short] [--max-tokens N] [--no-extension] [--custom-ops none,+RMSNorm]
       [--model-impl transformers] [--dump-dir DIR] [--timing]

The environment chooses the plugin's behaviour (LAYERZERO_VLLM, LAYERZERO_VLLM_DISABLE, LAYERZERO_POLICY,
...): vLLM loads plugins once per process, so each plugin variant needs a fresh process; the engine
settings of one variant run one after the other in it (an engine is deleted before the next starts). Per
mode the JSON holds the greedy token ids per prompt, start-up and warm generation times, the LayerZero
telemetry read back from every worker over ``collective_rpc`` (or the error that read raised), and, when
the engine fails, the error's type and message.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback

MODES = {  # name -> (dtype, enforce_eager)
    "fp32-eager": ("float32", True),
    "bf16-eager": ("bfloat16", True),
    "fp32-compile": ("float32", False),
    "bf16-compile": ("bfloat16", False),
}


def run_mode(args: argparse.Namespace, mode: str, prompts: list[str]) -> dict:
    from vllm import LLM, SamplingParams

    dtype, eager = MODES[mode]
    out: dict = {}
    t0 = time.time()
    kwargs: dict = dict(model=args.model, enforce_eager=eager, dtype=dtype, max_model_len=512, max_num_seqs=16,
                        seed=0, block_size=args.block_size)
    if args.model_impl:
        kwargs["model_impl"] = args.model_impl
    if args.custom_ops is not None:
        kwargs["compilation_config"] = {"custom_ops": args.custom_ops.split(",")}
    if not args.no_extension:
        kwargs["worker_extension_cls"] = "layerzero_vllm.LayerZeroWorkerExtension"
    llm = LLM(**kwargs)
    out["startup_s"] = round(time.time() - t0, 2)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    t1 = time.time()
    outs = llm.generate(prompts, params, use_tqdm=False)
    out["first_generate_s"] = round(time.time() - t1, 3)
    out["token_ids"] = [list(o.outputs[0].token_ids) for o in outs]
    if args.timing:  # warm passes: the engine and its caches are started
        times = []
        for _ in range(args.timing):
            t2 = time.perf_counter()
            again = llm.generate(prompts, params, use_tqdm=False)
            times.append(time.perf_counter() - t2)
            assert [list(o.outputs[0].token_ids) for o in again] == out["token_ids"], "greedy output changed"
        tokens = sum(len(t) for t in out["token_ids"])
        out["warm_s"] = times
        out["warm_tokens_per_s"] = round(tokens / min(times), 1)
    from layerzero_vllm import read_worker_telemetry

    try:
        out["telemetry"] = read_worker_telemetry(llm)
    except RuntimeError as exc:
        out["telemetry_error"] = str(exc)
    if args.dump_dir and "telemetry" in out:
        out["dumped"] = llm.collective_rpc("layerzero_dump_telemetry", args=(args.dump_dir,))
    del llm
    gc.collect()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--modes", default="fp32-eager", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--prompts", default="mixed", choices=("mixed", "short"))
    parser.add_argument("--custom-ops", default=None, help="comma-separated compilation_config.custom_ops")
    parser.add_argument("--no-extension", action="store_true", help="do not install the worker extension")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=32, help="small blocks: sequences span several")
    parser.add_argument("--model-impl", default=None, help="vLLM model_impl: auto, vllm or transformers")
    parser.add_argument("--dump-dir", default=None, help="ask each worker to write its telemetry file here")
    parser.add_argument("--timing", type=int, default=0, help="warm generate passes to time per mode")
    args = parser.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tiny_model import PROMPTS, mixed_prompts

    prompts = mixed_prompts() if args.prompts == "mixed" else list(PROMPTS)
    result: dict = {"env": {k: v for k, v in os.environ.items() if k.startswith("LAYERZERO")},
                    "main_pid": os.getpid(), "modes": {}}
    t0 = time.time()
    try:
        for mode in args.modes.split(","):
            result["modes"][mode] = run_mode(args, mode, prompts)
    except BaseException as exc:  # noqa: BLE001 - the parent test asserts on the error
        result["error"] = {"type": type(exc).__name__, "message": str(exc),
                           "traceback": traceback.format_exc()[-4000:]}
    result["total_s"] = round(time.time() - t0, 1)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
