"""The key a model's own measurements are stored under: a stable hash of its config.

Apart from :mod:`layerzero_hf.tune` so that building a model's orchestrator (which looks the key up to rank
by the model's tuned times) does not import the tuning pass.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["model_key"]

_NOT_STRUCTURAL = frozenset({"transformers_version", "architectures", "name_or_path", "auto_map"})


def model_key(model_or_config: Any) -> str:
    """A stable hash of a model's config (what decides its calls): the same after save/from_pretrained,
    different for another size or architecture. Private (``_``-prefixed) and naming fields are left out."""
    config = getattr(model_or_config, "config", model_or_config)
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    kept = {k: v for k, v in raw.items() if not k.startswith("_") and k not in _NOT_STRUCTURAL}
    text = json.dumps(kept, sort_keys=True, default=str)
    return f"{raw.get('model_type', 'model')}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
