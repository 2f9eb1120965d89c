"""Tiny random-weight Transformers models for integration tests (shared by the attention and patching tests).

Every model is really tiny (2 layers, hidden 64, vocab 128, 4 query heads over 2 kv heads, head_dim 16) so
a forward takes milliseconds on CPU. Each architecture turns on the features worth testing: sliding
windows that bite at short lengths (8 tokens), Gemma-2 logit softcaps, Phi-3 partial rotary, Qwen-3 /
Gemma-3 q/k norms, gpt-oss attention sinks. Models are saved once per session with ``save_pretrained``
so tests exercise the real ``from_pretrained`` path.

Fixtures:
* ``tiny_model_dir(arch) -> Path``: directory of a saved tiny model (built on first request, session-wide);
* ``tiny_config(arch) -> PretrainedConfig``: a fresh config object;
* ``tiny_arch``: a test that takes this argument runs once per architecture in ``TINY_ARCHS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 128
SLIDING_WINDOW = 8

_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    initializer_range=0.1,  # peaked enough that greedy decoding has no near-ties
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def _cfg(cls_name: str, **overrides: Any) -> Callable[[], Any]:
    def build() -> Any:
        cls = getattr(transformers, cls_name)
        return cls(**{**_COMMON, **overrides})

    return build


# arch -> config factory. Two layers: where an architecture mixes layer types, one of each.
TINY_CONFIGS: dict[str, Callable[[], Any]] = {
    "llama": _cfg("LlamaConfig"),
    "mistral": _cfg("MistralConfig", sliding_window=SLIDING_WINDOW),
    "qwen2": _cfg(
        "Qwen2Config",
        use_sliding_window=True,
        sliding_window=SLIDING_WINDOW,
        max_window_layers=1,
        layer_types=["full_attention", "sliding_attention"],
    ),
    "qwen3": _cfg("Qwen3Config"),
    "gemma": _cfg("GemmaConfig", hidden_act="gelu_pytorch_tanh"),
    "gemma2": _cfg(
        "Gemma2Config",
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=16,
        attn_logit_softcapping=5.0,  # small enough to bite with random weights
        final_logit_softcapping=30.0,
    ),
    "gemma3_text": _cfg(
        "Gemma3TextConfig",
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=16,
    ),
    "phi3": _cfg(
        "Phi3Config",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        pad_token_id=0,
    ),
    "gpt_oss": _cfg(
        "GptOssConfig",
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        num_local_experts=4,
        num_experts_per_tok=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
}

TINY_ARCHS: tuple[str, ...] = tuple(TINY_CONFIGS)


def build_tiny_config(arch: str) -> Any:
    try:
        factory = TINY_CONFIGS[arch]
    except KeyError:
        raise KeyError(f"no tiny config for arch {arch!r}; known: {', '.join(TINY_ARCHS)}") from None
    return factory()


def build_tiny_model(arch: str, seed: int = 0) -> Any:
    """A random-weight causal LM of ``arch`` in fp32, eval mode (deterministic for a given seed)."""
    config = build_tiny_config(arch)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    # Zero-initialised norm weights (Gemma) and biases make some paths trivially identical; perturb
    # every parameter a little so each one matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tiny_arch" in metafunc.fixturenames:
        metafunc.parametrize("tiny_arch", TINY_ARCHS)


@pytest.fixture(scope="session")
def tiny_config() -> Callable[[str], Any]:
    return build_tiny_config


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_model_dir(arch)``: path of a saved tiny model, built once per session per arch."""
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            path = tmp_path_factory.mktemp(f"tiny_{arch}")
            build_tiny_model(arch).save_pretrained(path)
            built[arch] = path
        return built[arch]

    return get
