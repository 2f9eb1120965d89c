"""Load and patch in one call, the way ``AutoModelForCausalLM.from_pretrained`` loads.

``layerzero_hf.from_pretrained(path_or_id, **kwargs)`` is ``AutoModelForCausalLM.from_pretrained`` with
``attn_implementation="layerzero"`` (attention dispatched per call from the first forward) followed by
:func:`layerzero_hf.patch` (norms, RoPE and MLP activations). Patch options go in ``patch=``; everything else
(``config=`` included: here it is the Transformers config) goes to Transformers unchanged. The report is on
the model (:func:`layerzero_hf.patch_report`).
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["from_pretrained"]


def from_pretrained(pretrained_model_name_or_path: Any, *model_args: Any, patch: Mapping[str, Any] | None = None,
                    model_class: Any = None, **kwargs: Any) -> Any:
    """Load a causal LM with LayerZero attention and patch it.

    ``patch``: arguments of :func:`layerzero_hf.patch` as a mapping: ``targets=PatchTargets(...)``,
    ``choice=KernelChoice(...)`` and/or their keywords (``kernels=``, ``rules=``, ``policy=``, ``strict=``,
    ...). They are validated before the model is loaded. ``model_class``: the Transformers auto class to load
    with (default ``AutoModelForCausalLM``). A caller's own ``attn_implementation`` is kept (then only norms,
    RoPE and MLPs go through LayerZero)."""
    import transformers

    from layerzero_hf.lifecycle import patch as patch_model
    from layerzero_hf.patch_config import resolve_arguments

    options = dict(patch or {})
    targets, choice = resolve_arguments("patch", options.pop("targets", None), options.pop("choice", None), options)
    cls = model_class if model_class is not None else transformers.AutoModelForCausalLM
    kwargs.setdefault("attn_implementation", "layerzero")
    model = cls.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
    patch_model(model, targets, choice)
    return model
