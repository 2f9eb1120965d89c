"""The distribution's metadata as a user meets it on the package index and in ``pip install`` lines.

These read the repository's files (pyproject.toml, LICENSE, MANIFEST.in, README.md); building and
installing the wheel is ``scripts/check_wheel.sh`` (``make check-wheel``), too slow for the unit tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
DIST = "layerzero-dispatch"


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_distribution_name_is_not_the_taken_one():
    # `layerzero` on the package index is an unrelated project (a PyTorch NN-building helper).
    assert _project()["name"] == DIST


def test_license_is_spdx_with_the_full_apache_text():
    project = _project()
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    # no license classifier next to an SPDX expression (setuptools rejects the combination)
    assert not any(c.startswith("License ::") for c in project["classifiers"])


def test_classifiers_urls_and_all_extra():
    project = _project()
    assert "Programming Language :: Python :: 3" in project["classifiers"]
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(project["urls"])
    extras = project["optional-dependencies"]
    (all_req,) = extras["all"]
    bundled = set(re.fullmatch(rf"{DIST}\[(.+)\]", all_req).group(1).split(","))
    # every extra that installs with pip alone; flash-attn compiles against CUDA and vllm pins torch
    assert bundled == set(extras) - {"all", "dev", "flash-attn", "vllm"}


def test_dev_extra_has_the_docs_and_packaging_tools():
    names = {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in _project()["optional-dependencies"]["dev"]}
    assert {"pdoc", "build", "twine"} <= names


def test_sdist_manifest_carries_docs_examples_configs_patches_tests():
    manifest = (ROOT / "MANIFEST.in").read_text()
    for folder in ("docs", "examples", "configs", "patches", "tests"):
        assert re.search(rf"^(recursive-include|graft) {folder}\b", manifest, re.M), folder
    assert re.search(r"^include .*\bLICENSE\b", manifest, re.M)


def test_readme_install_lines_use_the_distribution_name():
    readme = (ROOT / "README.md").read_text()
    install = readme[readme.index("## Install"):readme.index("## Use it")]
    lines = [ln for ln in install.splitlines() if ln.startswith("pip install")]
    assert lines and all(DIST in ln for ln in lines), lines
    extras = {m for ln in lines for m in re.findall(rf"{DIST}\[([\w-]+)\]", ln)}
    assert {"hf", "notebook", "vllm", "cli", "all"} <= extras
    # nowhere in the README is the other project's name installed
    assert not re.search(r"pip install \"?layerzero(\[|\s|\"|$)", readme, re.M)
