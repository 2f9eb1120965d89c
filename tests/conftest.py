"""Shared fixtures. GPU tests are marked ``gpu`` and skipped when no CUDA device is present."""

from __future__ import annotations

import logging
import os
import threading

import pytest
import torch

# Triton kernels run on CPU only through the interpreter, chosen when a kernel is decorated (module import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine with -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def opaque_compile():
    """Compile strategy "opaque" for the test: norms, RoPE and activations stay ``layerzero::*`` custom ops
    that dispatch inside a compiled graph (the default, "inline", traces them as plain torch)."""
    from layerzero import ops

    with ops.compile_strategy_set_to("opaque"):
        yield


@pytest.fixture
def run_threads():
    """``run_threads(worker, count=8)``: start ``count`` threads running ``worker`` and wait for them all
    (the concurrency tests' race: every thread is started before any is joined)."""

    def run(worker, count: int = 8) -> None:
        threads = [threading.Thread(target=worker) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return run


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


class _RecompileLimitWatch(logging.Handler):
    """Collects torch._dynamo's "hit recompile_limit" messages: a kernel path that recompiles per call
    (e.g. per decode step) falls back to eager once the limit is hit and silently runs slowly."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "recompile_limit" in message or "cache_size_limit" in message:
            self.hits.append(message.splitlines()[0][:300])


@pytest.fixture(autouse=True)
def _no_recompile_limit():
    """With LAYERZERO_FAIL_ON_RECOMPILE_LIMIT=1 (the GPU tier sets it), a test during which torch._dynamo
    hits its recompile limit fails, naming the message."""
    if os.environ.get("LAYERZERO_FAIL_ON_RECOMPILE_LIMIT") != "1":
        yield
        return
    watch = _RecompileLimitWatch()
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(watch)
    try:
        yield
    finally:
        logger.removeHandler(watch)
    if watch.hits:
        pytest.fail("torch._dynamo hit its recompile limit: " + " | ".join(watch.hits))
