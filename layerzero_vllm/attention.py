"""LayerZero attention inside vLLM's CPU backend (experimental: ``LAYERZERO_VLLM_ATTENTION=experimental``).

What vLLM 0.32 allows: ``CpuPlatform.get_attn_backend_cls`` always answers ``CPU_ATTN`` (or an MLA
backend), whatever backend is requested, so the only way in on CPU is to override the *class path* of
``AttentionBackendEnum.CPU_ATTN`` with ``register_backend``. This backend keeps vLLM's CPU metadata
builder (block tables, ``query_start_loc``, ``seq_lens``, causal flag) and its KV-cache tensor shape, and
replaces the two things a kernel choice needs:

* ``do_kv_cache_update`` writes keys/values into the paged cache in a plain ``[block, kv_head, slot,
  head_dim]`` layout (vLLM's CPU kernel may use an ISA-specific packed layout, which only its own kernel
  can read);
* ``forward`` gathers each request's keys/values from its blocks and calls ``layerzero.ops.attention``
  on ``(1, q_len, heads, head_dim)`` / ``(1, seq_len, kv_heads, head_dim)`` views with bottom-right causal
  alignment. LayerZero's policy sees ``attention.prefill`` (several query tokens) or
  ``attention.decode`` (one), the dtype, head_dim, GQA and sequence lengths, and chooses the kernel
  (SDPA, the fp32 reference, FlexAttention...), with its fallbacks, breakers and telemetry.

Per-request gathering in Python costs time that vLLM's fused paged kernel does not spend: measured 2.5 to
3.5x slower than vLLM's ``CPU_ATTN``. A plugin that must never be slower than vLLM does not offer it as a
switch, so it is reachable only as ``experimental``, for studying kernel choices. Layers this path cannot
serve exactly (ALiBi, fp8 KV cache, encoder attention) keep vLLM's kernel *and* vLLM's cache layout for
their whole lifetime, decided once at construction.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

logger = logging.getLogger("vllm.plugins.layerzero")

CLASS_PATH = "layerzero_vllm.attention.LayerZeroCPUAttentionBackend"


class LayerZeroCPUAttentionImpl(CPUAttentionBackendImpl):
    """vLLM CPU attention whose kernel LayerZero chooses per call (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        reasons = []
        if self.alibi_slopes is not None:
            reasons.append("ALiBi slopes are not in LayerZero's attention contract")
        if self.is_fp8_kv_cache:
            reasons.append(f"kv_cache_dtype={self.kv_cache_dtype!r} (quantized cache)")
        if self.attn_type != AttentionType.DECODER:
            reasons.append(f"attn_type={self.attn_type!r}")
        self.layerzero_enabled = not reasons
        if reasons:
            logger.info("LayerZero attention: this layer keeps vLLM's CPU kernel: %s", "; ".join(reasons))
        from layerzero_vllm.model_setup import orchestrator_for_current_model

        self._lz_orchestrator = orchestrator_for_current_model()

    # ---------------------------------------------------------------------------------------- cache
    @staticmethod
    def _split_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_blocks, num_kv_heads, block_size, _ = kv_cache.shape
        kv = kv_cache.view(num_blocks, num_kv_heads, block_size * 2, -1)
        key_cache, value_cache = kv.chunk(2, dim=2)  # each [blocks, kv_heads, block_size, head_dim]
        return key_cache, value_cache

    def do_kv_cache_update(self, layer: torch.nn.Module, key: torch.Tensor, value: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        if not self.layerzero_enabled:
            return super().do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)
        if self.attn_type in (AttentionType.ENCODER_ONLY, AttentionType.ENCODER):
            return None
        key_cache, value_cache = self._split_cache(kv_cache)
        block_size = key_cache.shape[2]
        n = slot_mapping.shape[0]
        slots = slot_mapping.to(torch.long)
        keep = slots >= 0  # padding tokens carry slot -1
        if not bool(keep.all()):
            slots = slots[keep]
            key, value = key[:n][keep], value[:n][keep]
        else:
            key, value = key[:n], value[:n]
        blocks, offsets = slots // block_size, slots % block_size
        key_cache[blocks, :, offsets] = key.to(key_cache.dtype)
        value_cache[blocks, :, offsets] = value.to(value_cache.dtype)
        return None

    # ---------------------------------------------------------------------------------------- attention
    def forward(self, layer: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: Any, output: torch.Tensor,
                output_scale: torch.Tensor | None = None,
                output_block_scale: torch.Tensor | None = None) -> torch.Tensor:
        if not self.layerzero_enabled:
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                                   output_block_scale)
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("fused output quantization is not supported by LayerZero's CPU attention")
        if attn_metadata is None:  # vLLM's warm-up / profile run
            return output
        if attn_metadata.dynamic_causal is not None:
            raise NotImplementedError(
                "LayerZero's CPU attention does not support per-request causal flags (dynamic_causal); "
                "unset LAYERZERO_VLLM_ATTENTION for this model"
            )
        from layerzero import ops

        key_cache, value_cache = self._split_cache(kv_cache)
        _, num_kv_heads, block_size, head_dim = key_cache.shape
        starts = attn_metadata.query_start_loc.tolist()
        seq_lens = attn_metadata.seq_lens.tolist()
        num_tokens = attn_metadata.num_actual_tokens
        q_all = query[:num_tokens].reshape(num_tokens, self.num_heads, head_dim)
        out_all = output[:num_tokens].view(num_tokens, self.num_heads, head_dim)  # must alias: written in place
        window = self.sliding_window if self.sliding_window and self.sliding_window > 0 else None
        softcap = self.logits_soft_cap or None
        causal = bool(attn_metadata.causal)
        for i, seq_len in enumerate(seq_lens):
            q_start, q_end = starts[i], starts[i + 1]
            if q_end <= q_start or seq_len <= 0:
                continue
            n_blocks = (seq_len + block_size - 1) // block_size
            blocks = attn_metadata.block_table[i, :n_blocks].to(torch.long)
            k = key_cache[blocks].permute(0, 2, 1, 3).reshape(n_blocks * block_size, num_kv_heads, head_dim)
            v = value_cache[blocks].permute(0, 2, 1, 3).reshape(n_blocks * block_size, num_kv_heads, head_dim)
            q = q_all[q_start:q_end].unsqueeze(0)
            out = ops.attention(
                q, k[:seq_len].unsqueeze(0).to(q.dtype), v[:seq_len].unsqueeze(0).to(q.dtype),
                is_causal=causal, scale=self.scale, sliding_window=window, softcap=softcap, sinks=self.sinks,
                orchestrator=self._lz_orchestrator,
            )
            out_all[q_start:q_end] = out[0].to(out_all.dtype)
        return output


class LayerZeroCPUAttentionBackend(CPUAttentionBackend):
    """vLLM's ``CPU_ATTN`` backend with :class:`LayerZeroCPUAttentionImpl` as its implementation.

    ``get_name`` stays ``"CPU_ATTN"``: vLLM's CPU code paths compare backend names."""

    @staticmethod
    def get_impl_cls() -> type[LayerZeroCPUAttentionImpl]:
        return LayerZeroCPUAttentionImpl


def register_attention_backend() -> str | None:
    """Override ``CPU_ATTN``'s class path on the CPU platform; returns the backend replaced, or None."""
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if not current_platform.is_cpu():
        logger.warning(
            "LAYERZERO_VLLM_ATTENTION=experimental is only implemented for vLLM's CPU platform in this version "
            "(platform: %s); attention stays vLLM's", type(current_platform).__name__,
        )
        return None
    register_backend(AttentionBackendEnum.CPU_ATTN, CLASS_PATH)
    return AttentionBackendEnum.CPU_ATTN.name
