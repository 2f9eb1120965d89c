"""One intra-op thread for the duration of a block.

The Transformers tests run tiny tensors on a shared machine: intra-op threads only add wake-up and
scheduling latency there (milliseconds per call, several times per linear layer), which makes timings
noisy and tests slow.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """On a machine with a GPU the block runs unchanged: there the tests time nothing on the CPU, and a
    changed thread count is global state that every compiled graph (FlexAttention's) guards on, so
    toggling it made torch._dynamo recompile Flex until its recompile limit (seen on an H200)."""
    if torch.cuda.is_available():
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
