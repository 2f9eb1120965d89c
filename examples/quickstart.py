"""LayerZero in one minute (runs on CPU in seconds; on a GPU the same code picks GPU kernels).

1. dispatch() each operation and see which kernel ran and what the dispatch cost;
2. explain() why every other kernel was not chosen (on a CPU box: the GPU kernels, with reasons);
3. a tiny random Llama saved and loaded with ``attn_implementation="layerzero"``, patched with
   ``layerzero_hf.patch``: same logits as plain Transformers, and a report of what was patched.

Run: ``python examples/quickstart.py`` (or ``make demo``).
"""

from __future__ import annotations

import tempfile

import torch

from layerzero.dispatch import dispatch, get_global_dispatcher
from layerzero.selection import SelectionContext

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.float16 if DEVICE == "cuda" else torch.float32


def show(label: str, result) -> None:
    t = result.timing
    print(f"  {label:<22} -> {result.kernel_id:<28} selection {t.selection_us:8.1f} us   "
          f"execution {t.execution_us:9.1f} us   cache hit: {result.cache_hit}")


def dispatch_tour() -> None:
    print(f"== 1. dispatch on {DEVICE} ({str(DTYPE).removeprefix('torch.')})")
    torch.manual_seed(0)
    b, s, h, hkv, d, hidden = 2, 64, 8, 2, 64, 512
    mk = lambda *shape: torch.randn(*shape, device=DEVICE, dtype=DTYPE)  # noqa: E731
    q, k, v = mk(b, s, h, d), mk(b, s, hkv, d), mk(b, s, hkv, d)  # grouped-query: 8 query heads over 2 kv heads
    for attempt in ("first call", "second call"):  # the second call is a cache hit: one dict lookup
        show(f"attention {attempt}", dispatch("attention.causal", {"query": q, "key": k, "value": v}))
    x, w = mk(b * s, hidden), mk(hidden)
    show("rms_norm", dispatch("rms_norm", {"x": x, "weight": w}, eps=1e-6))
    cos, sin = mk(b, s, d), mk(b, s, d)
    qr, kr = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, S, D): the Transformers layout
    show("rope", dispatch("rope", {"q": qr, "k": kr, "cos": cos, "sin": sin}))
    show("swiglu", dispatch("swiglu", {"gate": mk(b * s, 4 * hidden), "up": mk(b * s, 4 * hidden)}))


def explain_tour() -> None:
    print("\n== 2. explain(): every candidate, chosen / eligible (+) / rejected (-) with the reason")
    ctx = SelectionContext(operation="attention.causal", batch_size=8, seq_len=2048, num_heads=32, num_kv_heads=8,
                           head_dim=128, dtype=str(DTYPE).removeprefix("torch."), device=DEVICE, is_causal=True)
    print(get_global_dispatcher().explain("attention.causal", ctx))
    print("  (the same from a shell: layerzero explain attention.causal --batch 8 --seq 2048 --heads 32 "
          f"--kv-heads 8 --head-dim 128 --device {DEVICE})")


def transformers_tour() -> None:
    print("\n== 3. Transformers: a tiny random Llama through LayerZero")
    try:
        import transformers
    except ImportError:
        print("  transformers is not installed: pip install 'layerzero[hf]' to run this part")
        return
    import layerzero_hf  # registers attn_implementation="layerzero"

    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        transformers.LlamaForCausalLM(config).save_pretrained(tmp)
        plain = transformers.AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="sdpa").to(DEVICE).eval()
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="layerzero")
        model = model.to(DEVICE).eval()
    report = layerzero_hf.patch(model)  # norms, RoPE and the MLP activation, per instance
    ids = torch.randint(3, config.vocab_size, (2, 24), device=DEVICE)
    with torch.no_grad():
        expected = plain(ids).logits
        got = model(ids).logits
    diff = (got - expected).abs().max().item()
    print(f"  logits vs plain Transformers (sdpa): max |diff| = {diff:.2e}")
    assert diff < 1e-4, f"patched model disagrees with Transformers: {diff}"
    print(report)
    telemetry = layerzero_hf.model_telemetry(model)["snapshot"]
    print(f"  dispatches in this model: {telemetry.dispatch_count}")
    layerzero_hf.unpatch(model)


if __name__ == "__main__":
    dispatch_tour()
    explain_tour()
    transformers_tour()
