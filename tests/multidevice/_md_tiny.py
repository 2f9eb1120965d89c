"""A tiny random-weight Llama for the multi-device tests, importable from test files and from the worker
scripts that ``torch.distributed.run`` launches (they run as plain scripts, outside pytest).

Same shape as ``tests/hf/conftest.py``'s llama (2 layers, hidden 64, 4 query heads over 2 kv heads,
head_dim 16): the 2 kv heads split evenly over 2 tensor-parallel ranks, and 2 layers split over two
placements of a device map.
"""

from __future__ import annotations

from pathlib import Path

import torch

CONFIG = dict(
    vocab_size=128,
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


def save_tiny_llama(path: Path, seed: int = 0) -> Path:
    """Build the model (fp32, every parameter perturbed so norms are not all ones) and ``save_pretrained``
    it, so tests exercise the real ``from_pretrained`` loading paths (device maps, tensor parallel)."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(path)
    return Path(path)


def prompt_ids(batch: int = 2, seq: int = 12, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, CONFIG["vocab_size"], (batch, seq), generator=g)
