"""Random-weight configs of the nine shipped architectures, at any small size, each with its own features.

Conformance and parity runs need every feature an architecture brings to reach the kernels: sliding
windows short enough to bite at short prompts, Gemma-2 logit softcaps, Phi-3 partial rotary, Qwen-3 /
Gemma-3 q/k norms, gpt-oss attention sinks and half-width RoPE tables. Layer types alternate so that a
model of any depth has both sliding and full-attention layers where the architecture mixes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ARCHS", "ModelSize", "SMALL", "TINY", "build_config", "build_model"]

ARCHS: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt_oss")


@dataclass(frozen=True)
class ModelSize:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    intermediate: int = 128
    vocab: int = 128
    window: int = 8  # sliding window (bites once a prompt is longer)


TINY = ModelSize()
# head_dim 64: GPU kernels with head-dim limits (cuDNN multiples of 8, FlashInfer's supported sizes) take part
SMALL = ModelSize(hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64, intermediate=512, vocab=1000, window=8)


def _alternating(first: str, second: str, layers: int) -> list[str]:
    return [first if i % 2 == 0 else second for i in range(layers)]


def build_config(arch: str, size: ModelSize = TINY) -> Any:
    """A Transformers config of ``arch`` at ``size`` with the architecture's distinguishing features on."""
    import transformers

    class_name, kwargs = config_kwargs(arch, size)
    return getattr(transformers, class_name)(**kwargs)


def config_kwargs(arch: str, size: ModelSize = TINY) -> tuple[str, dict[str, Any]]:
    """(Transformers config class name, its keyword arguments) of :func:`build_config`, for callers that
    build the config themselves (the benchmarks' model builders)."""
    common: dict[str, Any] = dict(
        vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        head_dim=size.head_dim, max_position_embeddings=512, initializer_range=0.1, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    sliding = _alternating("sliding_attention", "full_attention", size.layers)
    w = size.window
    extra: dict[str, dict[str, Any]] = {
        "llama": {},
        "mistral": dict(sliding_window=w),
        "qwen2": dict(use_sliding_window=True, sliding_window=w, max_window_layers=1,
                      layer_types=_alternating("full_attention", "sliding_attention", size.layers)),
        "qwen3": {},
        "gemma": dict(hidden_act="gelu_pytorch_tanh"),
        "gemma2": dict(sliding_window=w, layer_types=sliding, query_pre_attn_scalar=size.head_dim,
                       attn_logit_softcapping=5.0, final_logit_softcapping=30.0),
        "gemma3_text": dict(sliding_window=w, layer_types=sliding, query_pre_attn_scalar=size.head_dim),
        "phi3": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
        # every token routed to every expert: a top-k router turns bf16 noise into different experts
        # (measured on CPU bf16: logits floor 3.2-4.2 with top-2 of 4, 0.57-0.74 with all 4), which would
        # hide attention-sink or norm errors the parity check exists to catch; LayerZero leaves MoE alone
        "gpt_oss": dict(sliding_window=w, layer_types=sliding, num_local_experts=4, num_experts_per_tok=4,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    }
    classes = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
               "gemma": "GemmaConfig", "gemma2": "Gemma2Config", "gemma3_text": "Gemma3TextConfig",
               "phi3": "Phi3Config", "gpt_oss": "GptOssConfig"}
    if arch not in classes:
        raise KeyError(f"build_config: unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    return classes[arch], {**common, **extra[arch]}


def build_model(arch: str, size: ModelSize = TINY, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu", attn_implementation: str = "eager",
                state_dict: dict[str, torch.Tensor] | None = None) -> Any:
    """A random-weight causal LM in eval mode. Every parameter is perturbed a little (zero-initialised
    Gemma norm weights would otherwise make casting modes indistinguishable). ``state_dict`` loads given
    weights instead, so variants of one experiment share them exactly."""
    import transformers

    config = build_config(arch, size)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    else:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    return model.to(device=device, dtype=dtype).eval()
