"""Writing a benchmark's result: the JSON and the markdown table, each where the command line asked, and the
commit they measured."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    """The commit measured: ``$LAYERZERO_COMMIT`` (set by ``benchmarks/gpu_run.sh``: the GPU machine's copy
    of the tree has no usable git history), else ``git rev-parse --short HEAD``; None when neither answers."""
    try:
        return os.environ.get("LAYERZERO_COMMIT") or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=_REPO).stdout.strip() or None
    except OSError:
        return None


def write_result(result: Any, markdown: str, json_path: Path | None, md_path: Path | None) -> None:
    """``result`` as JSON (values JSON cannot hold as their ``str``) to ``json_path`` and ``markdown`` to
    ``md_path``, each only when given."""
    if json_path:
        json_path.write_text(json.dumps(result, indent=1, default=str))
    if md_path:
        md_path.write_text(markdown)
