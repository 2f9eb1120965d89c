"""Patching across Transformers releases: decorated attention forwards and every shipped spec.

Transformers 5.24 wraps attention forwards in ``@deprecate_kwarg`` (a ``functools.wraps`` decorator), so
the function that looks up ``apply_rotary_pos_emb`` is no longer ``type(module).forward`` itself. These
tests wrap a real attention forward in such a decorator (independent of the installed release) and check
the RoPE patch reaches through it, keeps the decorator's behaviour and unpatches exactly; and, on whatever
Transformers is installed, that every shipped spec patches everything it declares (``make test-hf-newest``
runs this file on the newest 5.x).
"""

from __future__ import annotations

import gc

import functools
import sys
from typing import Any, Callable

import pytest
import torch

transformers = pytest.importorskip("transformers")

import layerzero_hf  # noqa: E402
from layerzero_hf.specs import builtin_specs, parse_arch_spec  # noqa: E402

from conftest import TINY_CONFIGS, build_tiny_model  # noqa: E402

from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaAttention  # noqa: E402


def _ids(seq: int = 10) -> torch.Tensor:
    return torch.randint(3, 128, (2, seq), generator=torch.Generator().manual_seed(11))


def rename_kwarg(old: str, new: str, calls: list[str]) -> Callable[[Callable], Callable]:
    """A decorator shaped like Transformers' ``deprecate_kwarg``: ``functools.wraps``, the wrapped function
    held in a closure cell, ``old=`` renamed to ``new=`` before the call; ``calls`` records each call."""

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                kwargs[new] = kwargs.pop(old)
                calls.append("renamed")
            else:
                calls.append("plain")
            return func(*args, **kwargs)

        return wrapped

    return decorate


DECORATOR_CALLS: list[str] = []


class DecoratedAttention(LlamaAttention):
    forward = rename_kwarg("rotary", "position_embeddings", DECORATOR_CALLS)(LlamaAttention.forward)


class ByNameAttention(LlamaAttention):
    """A wrapper that reaches the forward through a module global, not a closure cell: not rebuildable."""

    @functools.wraps(LlamaAttention.forward)
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return _BY_NAME_TARGET(self, *args, **kwargs)


_BY_NAME_TARGET = LlamaAttention.forward


class _CallableWrapper:
    """A callable object (like a C-level wrapper) with ``__wrapped__``: cannot be copied with new cells."""

    def __init__(self, func: Callable) -> None:
        self.__wrapped__ = func

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return functools.partial(self.__call__, obj) if obj is not None else self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)


class ObjectWrappedAttention(LlamaAttention):
    forward = _CallableWrapper(LlamaAttention.forward)


def _llama_with(cls: type) -> tuple[Any, dict[str, Any]]:
    """A tiny Llama whose attention modules are ``cls``, and the llama spec retargeted to that class."""
    model = build_tiny_model("llama")
    for layer in model.model.layers:
        layer.self_attn.__class__ = cls
    base = builtin_specs()["llama"]
    spec = {"model_types": ["llama"], "attention": {"classes": [cls.__name__]}, "patches": [
        {"name": p.name, "kind": p.kind,
         "params": {k: list(v) if isinstance(v, tuple) else v for k, v in p.params.items()},
         "match": {"classes": [cls.__name__ if c == "LlamaAttention" else c for c in p.match.classes]}}
        for p in base.patches]}
    return model, spec


def _rope_calls(model: Any) -> int:
    return layerzero_hf.model_telemetry(model)["snapshot"].per_operation.get("rope", 0)


def _innermost(fn: Callable) -> Callable:
    while "apply_rotary_pos_emb" not in fn.__code__.co_names:
        fn = fn.__wrapped__
    return fn


def _overlays() -> set[str]:
    return {k for k in sys.modules if k.startswith("_layerzero_overlay_")}


def test_rope_is_patched_through_a_wraps_decorator():
    model, spec = _llama_with(DecoratedAttention)
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
    gc.collect()  # models dropped by earlier tests release their overlays now, not in the middle of this one
    overlays_before = _overlays()
    report = layerzero_hf.patch(model, spec=spec, self_check="all")
    assert report.counts() == {"rms_norm": 5, "rope": 2, "mlp": 2, "residual_norm": 2} and not report.skipped, report
    rope = [p for p in report.patched if p.kind == "rope"]
    assert all("through decorator(s)" in p.detail and "wrapped" in p.detail for p in rope), rope

    attn = model.model.layers[0].self_attn
    bound = attn.__dict__["forward"].__func__
    assert bound is not DecoratedAttention.forward and bound.__code__ is DecoratedAttention.forward.__code__
    inner = bound
    while "apply_rotary_pos_emb" not in inner.__code__.co_names:  # down to the copy that calls the global
        inner = inner.__wrapped__
    assert inner.__code__ is _innermost(LlamaAttention.forward).__code__
    assert inner.__globals__["apply_rotary_pos_emb"] is not modeling_llama.apply_rotary_pos_emb
    assert modeling_llama.apply_rotary_pos_emb.__module__ == modeling_llama.__name__  # the global is untouched
    DECORATOR_CALLS.clear()
    calls = _rope_calls(model)
    with torch.no_grad():
        out = model(ids).logits
    assert (out - ref).abs().max() <= 1e-4
    assert _rope_calls(model) == calls + 2  # the replacement ran in both layers, behind the decorator
    assert DECORATOR_CALLS == ["plain", "plain"]  # the decorator still runs on every call

    # the decorator's kwarg renaming still works: position embeddings passed under the old name
    hidden = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(3))
    cos_sin = model.model.rotary_emb(hidden, torch.arange(10).expand(2, 10))
    with torch.no_grad():
        got, _ = attn(hidden, rotary=cos_sin, attention_mask=None)
        want, _ = DecoratedAttention.forward(attn, hidden, rotary=cos_sin, attention_mask=None)
    assert DECORATOR_CALLS[-2:] == ["renamed", "renamed"]
    assert _rope_calls(model) == calls + 3
    assert (got - want).abs().max() <= 1e-5

    assert layerzero_hf.unpatch(model) is True
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert type(attn).forward is DecoratedAttention.forward
    assert _overlays() <= overlays_before  # every overlay this patch built is gone
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)


@pytest.mark.parametrize("cls, reason", [
    (ByNameAttention, "holds no closure cell"),
    (ObjectWrappedAttention, "not a Python function"),
])
def test_unrebuildable_wrappers_are_skipped_with_the_reason(cls, reason):
    model, spec = _llama_with(cls)
    ids = _ids(6)
    with torch.no_grad():
        ref = model(ids).logits
    gc.collect()  # models dropped by earlier tests release their overlays now, not in the middle of this one
    overlays_before = _overlays()
    report = layerzero_hf.patch(model, spec=spec)
    assert report.counts() == {"rms_norm": 5, "mlp": 2, "residual_norm": 2}, report
    skipped = [s for s in report.skipped if s.kind == "rope"]
    assert len(skipped) == 2 and all(reason in s.reason for s in skipped), skipped
    assert not any("forward" in layer.self_attn.__dict__ for layer in model.model.layers)
    assert _overlays() <= overlays_before  # nothing built for a chain that cannot be rebuilt
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max() <= 1e-4
    layerzero_hf.unpatch(model)


SHIPPED = sorted(builtin_specs())


@pytest.mark.parametrize("stem", SHIPPED)
def test_every_shipped_spec_patches_everything_it_declares(stem):
    """On the installed Transformers: every patch entry of the spec (RoPE, norms, MLPs and the fused
    residual norm; every kind is asked for) binds on the tiny model, nothing is skipped, and the
    logits match the unpatched model."""
    spec = builtin_specs()[stem]
    archs = [mt for mt in spec.model_types if mt in TINY_CONFIGS]
    assert archs, f"patches/{stem}.yaml serves {list(spec.model_types)}; add a tiny config to tests/hf/conftest.py"
    model = build_tiny_model(archs[0])
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
    report = layerzero_hf.patch(model, only=list(layerzero_hf.patch_kinds()))
    assert not report.skipped, report
    sources = {p.source for p in report.patched}
    assert {p.name for p in spec.patches} <= sources, report
    assert report.counts().get("rope", 0) >= 2, report
    calls = _rope_calls(model)  # the self-check may have called it
    with torch.no_grad():
        out = model(ids).logits
    assert (out - ref).abs().max() <= 1e-4
    assert _rope_calls(model) == calls + report.counts()["rope"]
    layerzero_hf.unpatch(model)


def test_spec_parsing_accepts_the_retargeted_llama_spec():
    """Guards the helper above: the retargeted spec is valid and names only the decorated class."""
    _, spec = _llama_with(DecoratedAttention)
    parsed = parse_arch_spec(spec, "<test>")
    assert parsed.attention_classes == ("DecoratedAttention",)
    assert "LlamaAttention" not in {c for p in parsed.patches for c in p.match.classes}
