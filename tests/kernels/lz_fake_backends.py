"""Stand-in modules for GPU-only libraries, so their adapters can be tested on CPU.

Each stand-in implements the library's *documented* semantics (flash-attn's window_size, FlashInfer's
inclusive window_left and paged KV layout, xFormers' bias classes and BMGHK, Liger's in-place RoPE) in
plain fp32 PyTorch, written from the docs independently of LayerZero's reference, and records every call.
An adapter that passes the wrong layout or option then disagrees with ``layerzero.kernels.reference``.
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import torch
import torch.nn.functional as F


class CallLog(list):
    def names(self) -> list[str]:
        return [c[0] for c in self]


def _band_attention(q, k, v, scale, causal, left, right, softcap):
    """(B, Sq, H, D) attention with flash-attn's band: key j visible to query i iff
    i + Sk - Sq - left <= j <= i + Sk - Sq + right (a negative bound is unbounded); causal => right = 0."""
    b, sq, h, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    assert h % hkv == 0, "GQA: heads must be a multiple of kv heads"
    k = k.float().repeat_interleave(h // hkv, dim=2)
    v = v.float().repeat_interleave(h // hkv, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k) * (scale if scale is not None else 1 / math.sqrt(d))
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq).view(-1, 1) + (sk - sq)
    j = torch.arange(sk).view(1, -1)
    ok = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        right = 0
    if left is not None and left >= 0:
        ok &= j >= i - left
    if right is not None and right >= 0:
        ok &= j <= i + right
    s = s.masked_fill(~ok, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, v).to(q.dtype)


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    for k, val in attrs.items():
        setattr(mod, k, val)
    return mod


# ----------------------------------------------------------------------------------------------- flash-attn
def fake_flash_attn(log: CallLog) -> dict[str, types.ModuleType]:
    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
        assert q.dim() == 4 and k.dim() == 4, "flash_attn_func takes (B, S, H, D)"
        assert dropout_p == 0.0, "tests run without dropout"
        log.append(("flash_attn_func", dict(causal=causal, window_size=window_size, softcap=softcap, q=q)))
        return _band_attention(q, k, v, softmax_scale, causal, window_size[0], window_size[1], softcap)

    def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, softmax_scale=None, causal=False,
                                window_size=(-1, -1), softcap=0.0, **unused):
        assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, "k_cache must have contiguous last dimension"
        log.append(("flash_attn_with_kvcache", dict(causal=causal, window_size=window_size)))
        return _band_attention(q, k_cache, v_cache, softmax_scale, causal, window_size[0], window_size[1], softcap)

    return {"flash_attn": _module("flash_attn", __version__="2.8.3", flash_attn_func=flash_attn_func,
                                  flash_attn_with_kvcache=flash_attn_with_kvcache)}


def fake_flash_attn_3(log: CallLog) -> dict[str, types.ModuleType]:
    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                        v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                        pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
        log.append(("fa3.flash_attn_func", dict(causal=causal, window_size=window_size)))
        out = _band_attention(q, k, v, softmax_scale, causal, window_size[0], window_size[1], softcap)
        lse = torch.zeros(q.shape[0], q.shape[2], q.shape[1])
        return out, lse  # early FA3 releases return (out, softmax_lse)

    return {"flash_attn_interface": _module("flash_attn_interface", flash_attn_func=flash_attn_func)}


# ----------------------------------------------------------------------------------------------- FlashInfer
def _fi_attention(q, k, v, causal, window_left, cap, scale):
    """FlashInfer append attention for one request (NHD): bottom-right causal, window_left inclusive."""
    out = _band_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), scale, causal,
                          window_left if window_left >= 0 else -1, -1, cap or 0.0)
    return out[0]


def _fi_check_contiguous(k: torch.Tensor, v: torch.Tensor) -> None:
    """FlashInfer's own check (its error text), which the real kernel makes on the KV cache it is given."""
    if not k.is_contiguous():
        raise RuntimeError("Check failed: (k.IsContiguous()) is false: k must be contiguous")
    if not v.is_contiguous():
        raise RuntimeError("Check failed: (v.IsContiguous()) is false: v must be contiguous")


def fake_flashinfer(log: CallLog) -> dict[str, types.ModuleType]:
    def single_prefill_with_kv_cache(q, k, v, custom_mask=None, causal=False, kv_layout="NHD", sm_scale=None,
                                     window_left=-1, logits_soft_cap=None, **unused):
        assert kv_layout == "NHD" and q.dim() == 3 and k.dim() == 3
        log.append(("single_prefill_with_kv_cache", dict(causal=causal, window_left=window_left)))
        return _fi_attention(q, k, v, causal, window_left, logits_soft_cap, sm_scale)

    def single_decode_with_kv_cache(q, k, v, kv_layout="NHD", use_tensor_cores=False, window_left=-1,
                                    logits_soft_cap=None, sm_scale=None, **unused):
        assert q.dim() == 2 and kv_layout in ("NHD", "HND")
        _fi_check_contiguous(k, v)
        log.append(("single_decode_with_kv_cache", dict(window_left=window_left, kv_layout=kv_layout)))
        if kv_layout == "HND":
            k, v = k.transpose(0, 1), v.transpose(0, 1)
        return _fi_attention(q.unsqueeze(0), k, v, False, window_left, logits_soft_cap, sm_scale)[0]

    class BatchPrefillWithRaggedKVCacheWrapper:
        def __init__(self, workspace, kv_layout="NHD"):
            assert workspace.dtype == torch.uint8 and kv_layout == "NHD"

        def plan(self, qo_indptr, kv_indptr, num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo=None,
                 causal=False, window_left=-1, logits_soft_cap=None, sm_scale=None, q_data_type=None,
                 kv_data_type=None, **unused):
            assert qo_indptr.dtype == torch.int32 and kv_indptr.dtype == torch.int32
            self.p = dict(qo=qo_indptr.tolist(), kv=kv_indptr.tolist(), causal=causal, wl=window_left,
                          cap=logits_soft_cap, scale=sm_scale, h=num_qo_heads, hkv=num_kv_heads)
            log.append(("BatchPrefillWithRaggedKVCacheWrapper.plan", dict(self.p)))

        def run(self, q, k, v):
            p = self.p
            assert q.shape[1] == p["h"] and k.shape[1] == p["hkv"]
            outs = [
                _fi_attention(q[p["qo"][i]:p["qo"][i + 1]], k[p["kv"][i]:p["kv"][i + 1]],
                              v[p["kv"][i]:p["kv"][i + 1]], p["causal"], p["wl"], p["cap"], p["scale"])
                for i in range(len(p["qo"]) - 1)
            ]
            return torch.cat(outs, dim=0)

    class BatchDecodeWithPagedKVCacheWrapper:
        def __init__(self, workspace, kv_layout="NHD", use_tensor_cores=False):
            assert kv_layout in ("NHD", "HND")
            self.layout = kv_layout

        def plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size,
                 window_left=-1, logits_soft_cap=None, sm_scale=None, q_data_type=None, kv_data_type=None,
                 **unused):
            self.p = dict(indptr=indptr.tolist(), indices=indices.tolist(), last=last_page_len.tolist(),
                          page=page_size, wl=window_left, cap=logits_soft_cap, scale=sm_scale)
            log.append(("BatchDecodeWithPagedKVCacheWrapper.plan", dict(self.p)))

        def run(self, q, paged_kv_cache):
            k_cache, v_cache = paged_kv_cache  # each (num_pages, page_size, Hkv, D), or HND: (pages, Hkv, page, D)
            _fi_check_contiguous(k_cache, v_cache)
            log.append(("BatchDecodeWithPagedKVCacheWrapper.run", dict(kv_layout=self.layout)))
            if self.layout == "HND":
                k_cache, v_cache = k_cache.transpose(1, 2), v_cache.transpose(1, 2)
            p = self.p
            outs = []
            for b in range(len(p["indptr"]) - 1):
                pages = p["indices"][p["indptr"][b]:p["indptr"][b + 1]]
                ks = [k_cache[pg] for pg in pages]
                vs = [v_cache[pg] for pg in pages]
                ks[-1], vs[-1] = ks[-1][: p["last"][b]], vs[-1][: p["last"][b]]
                outs.append(_fi_attention(q[b:b + 1], torch.cat(ks), torch.cat(vs), False, p["wl"], p["cap"],
                                          p["scale"]))
            return torch.cat(outs, dim=0)

    def rmsnorm(x, w, eps=1e-6, out=None, enable_pdl=None):
        assert x.dim() in (2, 3) and w.dtype == x.dtype
        log.append(("rmsnorm", {}))
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)

    def gemma_rmsnorm(x, w, eps=1e-6, out=None, enable_pdl=None):
        log.append(("gemma_rmsnorm", {}))
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w.float())).to(x.dtype)

    def apply_rope_with_cos_sin_cache(positions, query, key, head_size, cos_sin_cache, is_neox=True):
        assert cos_sin_cache.dtype == torch.float32, "cos_sin_cache should be float32"
        assert query.dim() == 2 and key.dim() == 2
        log.append(("apply_rope_with_cos_sin_cache", dict(is_neox=is_neox)))
        rot = cos_sin_cache.shape[-1]
        cos = cos_sin_cache[positions, : rot // 2].unsqueeze(1)
        sin = cos_sin_cache[positions, rot // 2:].unsqueeze(1)

        def apply(x):
            x = x.view(x.shape[0], -1, head_size).float()
            r, rest = x[..., :rot], x[..., rot:]
            if is_neox:
                x1, x2 = r[..., : rot // 2], r[..., rot // 2:]
                r = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
            else:
                x1, x2 = r[..., 0::2], r[..., 1::2]
                r = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
            return torch.cat((r, rest), dim=-1).flatten(1)

        return apply(query).to(query.dtype), apply(key).to(key.dtype)

    def silu_and_mul(x, out=None, enable_pdl=None):
        assert x.shape[-1] % 2 == 0
        log.append(("silu_and_mul", dict(data_ptr=x.data_ptr())))
        n = x.shape[-1] // 2
        return (F.silu(x[..., :n].float()) * x[..., n:].float()).to(x.dtype)

    mod = _module(
        "flashinfer", __version__="0.7.2", single_prefill_with_kv_cache=single_prefill_with_kv_cache,
        single_decode_with_kv_cache=single_decode_with_kv_cache,
        BatchPrefillWithRaggedKVCacheWrapper=BatchPrefillWithRaggedKVCacheWrapper,
        BatchDecodeWithPagedKVCacheWrapper=BatchDecodeWithPagedKVCacheWrapper, rmsnorm=rmsnorm,
        gemma_rmsnorm=gemma_rmsnorm, apply_rope_with_cos_sin_cache=apply_rope_with_cos_sin_cache,
        silu_and_mul=silu_and_mul,
    )
    return {"flashinfer": mod}


# ----------------------------------------------------------------------------------------------- xFormers
def fake_xformers(log: CallLog) -> dict[str, types.ModuleType]:
    class LowerTriangularFromBottomRightMask:
        def keep(self, sq, sk):
            return torch.ones(sq, sk).tril(sk - sq).bool()

    class LowerTriangularFromBottomRightLocalAttentionMask:
        def __init__(self, window_size):
            self.window = window_size

        def keep(self, sq, sk):  # xFormers' _materialize_causal_mask(window_size, from_bottomright=True)
            shift = sk - sq
            return torch.ones(sq, sk).tril(shift).triu(shift - self.window + 1).bool()

    class LocalAttentionFromBottomRightMask:
        def __init__(self, window_left, window_right):
            self.left, self.right = window_left, window_right

        def keep(self, sq, sk):  # q - window_left <= k + s <= q + window_right, s = Sq - Sk
            qi = torch.arange(sq).view(-1, 1)
            kj = torch.arange(sk).view(1, -1) + (sq - sk)
            return (qi - self.left <= kj) & (kj <= qi + self.right)

    attn_bias = _module(
        "xformers.ops.fmha.attn_bias", LowerTriangularFromBottomRightMask=LowerTriangularFromBottomRightMask,
        LowerTriangularFromBottomRightLocalAttentionMask=LowerTriangularFromBottomRightLocalAttentionMask,
        LocalAttentionFromBottomRightMask=LocalAttentionFromBottomRightMask,
    )

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, op=None):
        assert query.dim() in (4, 5)
        log.append(("memory_efficient_attention", dict(ndim=query.dim(), bias=type(attn_bias).__name__)))
        if query.dim() == 5:  # BMGHK: fold groups and heads; kv must be expanded over H
            b, m, g, h, kdim = query.shape
            assert key.shape[2:4] == (g, h) and key.stride(3) == 0, "BMGHK kv expanded (stride 0) over heads"
            q4 = query.reshape(b, m, g * h, kdim)
            k4 = key.reshape(b, key.shape[1], g * h, kdim)
            v4 = value.reshape(b, value.shape[1], g * h, value.shape[-1])
            return memory_efficient_attention(q4, k4, v4, attn_bias, p, scale).reshape(b, m, g, h, -1)
        sq, sk = query.shape[1], key.shape[1]
        qf, kf, vf = query.float(), key.float(), value.float()
        s = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * (scale if scale is not None else query.shape[-1] ** -0.5)
        if attn_bias is not None:
            s = s.masked_fill(~attn_bias.keep(sq, sk), float("-inf"))
        out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1).nan_to_num(0.0), vf)
        return out.to(query.dtype)

    fmha = _module("xformers.ops.fmha", attn_bias=attn_bias, memory_efficient_attention=memory_efficient_attention)
    ops = _module("xformers.ops", fmha=fmha, memory_efficient_attention=memory_efficient_attention)
    root = _module("xformers", __version__="0.0.33", ops=ops)
    return {"xformers": root, "xformers.ops": ops, "xformers.ops.fmha": fmha, "xformers.ops.fmha.attn_bias": attn_bias}


# ----------------------------------------------------------------------------------------------- Liger
def fake_liger(log: CallLog) -> dict[str, types.ModuleType]:
    class LigerRMSNormFunction:
        @staticmethod
        def apply(X, W, eps, offset=0.0, casting_mode="llama", in_place=True, row_mode=None):
            log.append(("LigerRMSNormFunction", dict(offset=offset, casting_mode=casting_mode)))
            if casting_mode == "none":
                y = X * torch.rsqrt(X.pow(2).mean(-1, keepdim=True) + eps)
                return y * (offset + W) if W is not None else y
            xf = X.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            if casting_mode == "llama":
                y = y.to(X.dtype)
                return (y * (offset + W.float())).to(X.dtype) if W is not None else y
            return (y * (offset + W.float()) if W is not None else y).to(X.dtype)

    class LigerLayerNormFunction:
        @staticmethod
        def apply(X, W, B, eps):
            assert W is not None and B is not None
            log.append(("LigerLayerNormFunction", {}))
            return F.layer_norm(X.float(), (X.shape[-1],), W.float(), B.float(), eps).to(X.dtype)

    class LigerRopeFunction:
        @staticmethod
        def apply(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
            # Like Liger: works on the physical (B, S, H, D) storage, IN PLACE.
            log.append(("LigerRopeFunction", {}))
            if cos.dim() == 2:
                cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
            qs, ks = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
            rot = cos.shape[-1]
            c, s = cos.unsqueeze(2).float(), sin.unsqueeze(2).float()
            for t in (qs, ks):
                r = t[..., :rot].float()
                half = rot // 2
                rotated = torch.cat((-r[..., half:], r[..., :half]), dim=-1)
                t[..., :rot] = (r * c + rotated * s).to(t.dtype)
            return qs.transpose(1, 2), ks.transpose(1, 2)

    class LigerSiLUMulFunction:
        @staticmethod
        def apply(a, b):
            log.append(("LigerSiLUMulFunction", {}))
            return (F.silu(a.float()) * b.float()).to(a.dtype)

    class LigerGELUMulFunction:
        @staticmethod
        def apply(a, b):
            log.append(("LigerGELUMulFunction", {}))
            return (F.gelu(a.float(), approximate="tanh") * b.float()).to(a.dtype)

    mods = {
        "liger_kernel": _module("liger_kernel"),
        "liger_kernel.ops": _module("liger_kernel.ops"),
        "liger_kernel.ops.rms_norm": _module("liger_kernel.ops.rms_norm", LigerRMSNormFunction=LigerRMSNormFunction),
        "liger_kernel.ops.layer_norm": _module("liger_kernel.ops.layer_norm", LigerLayerNormFunction=LigerLayerNormFunction),
        "liger_kernel.ops.rope": _module("liger_kernel.ops.rope", LigerRopeFunction=LigerRopeFunction),
        "liger_kernel.ops.swiglu": _module("liger_kernel.ops.swiglu", LigerSiLUMulFunction=LigerSiLUMulFunction),
        "liger_kernel.ops.geglu": _module("liger_kernel.ops.geglu", LigerGELUMulFunction=LigerGELUMulFunction),
    }
    return mods


FAKES = {
    "flash_attn": fake_flash_attn,
    "flash_attn_3": fake_flash_attn_3,
    "flashinfer": fake_flashinfer,
    "xformers": fake_xformers,
    "liger": fake_liger,
}


def install(monkeypatch, backend: str) -> CallLog:
    """Put the stand-in modules of ``backend`` into sys.modules for the duration of a test."""
    log = CallLog()
    for name, mod in FAKES[backend](log).items():
        monkeypatch.setitem(sys.modules, name, mod)
    return log
