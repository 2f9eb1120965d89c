"""The repository stands alone: no doc, config, comment or script points at design notes, example files or
machine paths that are not in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("README.md", "docs", "configs", "patches", "layerzero", "layerzero_hf", "layerzero_vllm", "examples",
           "scripts", "benchmarks", "tests", "Makefile", "pyproject.toml", ".ci")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".ipynb", ".txt", ""}
FORBIDDEN = re.compile(r"DESIGN\.md|\bshared/|\bthe seed\b|/work/|code_examples\.md")


def _files():
    for entry in SCANNED:
        path = ROOT / entry
        paths = [path] if path.is_file() else path.rglob("*")
        for p in paths:
            if p.is_file() and p.suffix in SUFFIXES and "results" not in p.parts and "__pycache__" not in p.parts:
                yield p


def test_no_reference_outside_the_repository():
    me = Path(__file__).resolve()
    hits = []
    for p in _files():
        if p.resolve() == me:
            continue
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()[:120]}")
    assert not hits, "\n".join(hits)
