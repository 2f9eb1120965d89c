"""A tiny random Llama with an offline tokenizer, saved for vLLM (no hub access needed).

head_dim 32 because vLLM's CPU attention supports head sizes 32..256 (and 512). The tokenizer is a
WordLevel model over a fixed vocabulary, trained in-process and wrapped in PreTrainedTokenizerFast, so
``vllm.LLM(model=dir)`` finds everything it needs in ``dir``.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = (
    "the a an of to and in is was for on with as by at from it this that be are or not have has had "
    "red green blue cat dog bird fish tree river stone cloud light dark fast slow big small old new "
    "one two three four five six seven eight nine ten run walk jump sing read write think see hear "
    "hello world model kernel layer norm rope attention policy dispatch token cache engine worker"
).split()

PROMPTS = (
    "hello world the model",
    "the cat and the dog run to the river",
    "one two three four five",
    "attention policy dispatch kernel layer norm rope",
    "a small bird was on the old tree",
)


def mixed_prompts(count: int = 32, shortest: int = 3, longest: int = 300, seed: int = 0) -> list[str]:
    """``count`` prompts whose word counts spread evenly from ``shortest`` to ``longest`` (one word is one
    token of the tiny tokenizer), in a shuffled order so long and short ones share batches."""
    import random

    rng = random.Random(seed)
    step = (longest - shortest) / max(count - 1, 1)
    lengths = [round(shortest + i * step) for i in range(count)]
    rng.shuffle(lengths)
    return [" ".join(rng.choice(WORDS) for _ in range(n)) for n in lengths]


def build(directory: str | Path, seed: int = 0, layers: int = 2, hidden: int = 128) -> Path:
    """Write the model and tokenizer into ``directory`` (reused when it is already complete).

    ``hidden`` is split into heads of 32 (vLLM's CPU attention needs head sizes of 32 or more), half as
    many KV heads (GQA)."""
    out = Path(directory)
    marker = out / ".complete"
    if marker.is_file():
        return out
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 32, num_key_value_heads=max(hidden // 64, 1), head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-6,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False, torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger logits spread: greedy choices are not near-ties
        model.lm_head.weight.mul_(8.0)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    marker.write_text("ok\n")
    return out


if __name__ == "__main__":
    import sys
    import tempfile

    print(build(sys.argv[1] if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "layerzero-tiny-llama"))
