"""Tests of the vLLM plugin. They run only inside the vLLM venv (scripts/test_vllm.sh builds it)."""

from __future__ import annotations

import contextlib
import os

import pytest

pytest.importorskip("vllm", reason="tests_vllm/ runs in the vLLM venv: make test-vllm")

for _name in ("LAYERZERO_VLLM_DISABLE", "LAYERZERO_POLICY", "LAYERZERO_RULES", "LAYERZERO_HF_RULES",
              "LAYERZERO_VLLM_NATIVE", "LAYERZERO_VLLM_ATTENTION"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session", autouse=True)
def plugin_registered():
    """The plugin, opted in for this process (installing it alone activates nothing)."""
    import layerzero_vllm

    previous = os.environ.get("LAYERZERO_VLLM")
    os.environ["LAYERZERO_VLLM"] = "1"
    try:
        layerzero_vllm.register()
    finally:
        if previous is None:
            os.environ.pop("LAYERZERO_VLLM", None)
        else:
            os.environ["LAYERZERO_VLLM"] = previous
    return layerzero_vllm.registration()


@pytest.fixture
def vllm_config():
    """Context manager factory: a vLLM config with the given ``custom_ops`` set as the current one."""
    from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config

    @contextlib.contextmanager
    def make(custom_ops=("all",)):
        cfg = VllmConfig(compilation_config=CompilationConfig(custom_ops=list(custom_ops)))
        with set_current_vllm_config(cfg):
            yield cfg

    return make
