"""Load and patch in one call, the way ``AutoModelForCausalLM.from_pretrained`` loads.

``layerzero_hf.from_pretrained(path_or_id, **kwargs)`` is ``AutoModelForCausalLM.from_pretrained`` with
``attn_implementation="layerzero"`` (attention dispatched per call from the first forward) followed by
:func:`layerzero_hf.patch` (norms, RoPE and MLP activations). Patch options go in ``patch=``; everything else
goes to Transformers unchanged. The report is on the model (:func:`layerzero_hf.patch_report`).
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["from_pretrained"]


def from_pretrained(pretrained_model_name_or_path: Any, *model_args: Any, patch: Mapping[str, Any] | None = None,
                    model_class: Any = None, **kwargs: Any) -> Any:
    """Load a causal LM with LayerZero attention and patch it.

    ``patch``: keyword arguments for :func:`layerzero_hf.patch` (``kernels=``, ``policy=``, ``strict=``, ...).
    ``model_class``: the Transformers auto class to load with (default ``AutoModelForCausalLM``). A caller's
    own ``attn_implementation`` is kept (then only norms, RoPE and MLPs go through LayerZero)."""
    import transformers

    from layerzero_hf.patching import patch as patch_model

    cls = model_class if model_class is not None else transformers.AutoModelForCausalLM
    kwargs.setdefault("attn_implementation", "layerzero")
    model = cls.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
    patch_model(model, **dict(patch or {}))
    return model
