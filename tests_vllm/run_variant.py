"""Run the tiny Llama under vLLM once and write what happened as JSON (one process per variant).

Usage: python run_variant.py MODEL_DIR OUT_JSON [--custom-ops none,+RMSNorm] [--no-extension]
       [--max-tokens N] [--block-size N]

The environment chooses the plugin's behaviour (LAYERZERO_VLLM_DISABLE, LAYERZERO_POLICY, ...): vLLM
reads plugins when the engine starts, so each variant needs a fresh process. The JSON holds the greedy
token ids per prompt, the LayerZero telemetry read back from every worker over ``collective_rpc``, and,
when the engine fails to start, the error's type and message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--custom-ops", default=None, help="comma-separated compilation_config.custom_ops")
    parser.add_argument("--no-extension", action="store_true", help="do not install the worker extension")
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--block-size", type=int, default=32, help="small blocks: sequences span several")
    parser.add_argument("--model-impl", default=None, help="vLLM model_impl: auto, vllm or transformers")
    parser.add_argument("--compile", action="store_true", help="let vLLM torch.compile the model (no enforce_eager)")
    parser.add_argument("--dump-dir", default=None, help="ask each worker to write its telemetry file here")
    args = parser.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tiny_model import PROMPTS

    result: dict = {"env": {k: v for k, v in os.environ.items() if k.startswith("LAYERZERO")}}
    t0 = time.time()
    try:
        from vllm import LLM, SamplingParams

        kwargs: dict = dict(model=args.model, enforce_eager=not args.compile, dtype="float32", max_model_len=256,
                            max_num_seqs=8, seed=0, block_size=args.block_size)
        if args.model_impl:
            kwargs["model_impl"] = args.model_impl
        if args.custom_ops is not None:
            kwargs["compilation_config"] = {"custom_ops": args.custom_ops.split(",")}
        if not args.no_extension:
            kwargs["worker_extension_cls"] = "layerzero_vllm.LayerZeroWorkerExtension"
        llm = LLM(**kwargs)
        result["startup_s"] = round(time.time() - t0, 1)
        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
        outs = llm.generate(list(PROMPTS), params)
        result["token_ids"] = [list(o.outputs[0].token_ids) for o in outs]
        result["texts"] = [o.outputs[0].text for o in outs]
        if not args.no_extension:
            from layerzero_vllm import read_worker_telemetry

            result["telemetry"] = read_worker_telemetry(llm)
            if args.dump_dir:
                result["dumped"] = llm.collective_rpc("layerzero_dump_telemetry", args=(args.dump_dir,))
        result["main_pid"] = os.getpid()
        del llm
    except BaseException as exc:  # noqa: BLE001 - the parent test asserts on the error
        result["error"] = {"type": type(exc).__name__, "message": str(exc),
                           "traceback": traceback.format_exc()[-4000:]}
    result["total_s"] = round(time.time() - t0, 1)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
