"""Writing a benchmark's result: the JSON and the markdown table, each where the command line asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_result(result: Any, markdown: str, json_path: Path | None, md_path: Path | None) -> None:
    """``result`` as JSON (values JSON cannot hold as their ``str``) to ``json_path`` and ``markdown`` to
    ``md_path``, each only when given."""
    if json_path:
        json_path.write_text(json.dumps(result, indent=1, default=str))
    if md_path:
        md_path.write_text(markdown)
