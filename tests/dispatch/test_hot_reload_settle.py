"""The settle period: a changed policy file is applied only after its content has read the same for
``reload_settle_seconds``, so a writer that stalls after a valid prefix never gets the prefix served; and
a watched path that is briefly a FIFO never blocks the watcher (``stop()`` returns at once)."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from resilience_helpers import FakeClock, backends, lock_policy_text, registry, version_kernels, write_atomic

from layerzero.dispatch.config_watch import DEFAULT_SETTLE_SECONDS, ConfigWatcher
from layerzero.dispatch.hot_reload import HotReloadDispatcher
from layerzero.dispatch.types import DispatchConfig, DispatchMode
from layerzero.errors import ConfigValidationError

INPUTS = {"x": torch.randn(2, 8), "weight": torch.randn(8)}
PREFIX = "version: '2'\n# comment\n"  # a valid policy on its own: no lock at all
REST = 'kernel_locks: {"rms_norm": "lz_v3"}\n'


def _make(path, **cfg) -> HotReloadDispatcher:
    config = DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path=str(path), **cfg)
    return HotReloadDispatcher(config, kernel_registry=registry(*version_kernels(6)), backend_registry=backends())


def test_default_settle_period_never_serves_a_stalled_writers_prefix(tmp_path):
    path = tmp_path / "kernels.yaml"
    path.write_text(lock_policy_text("lz_v0"))
    d = _make(path, watch_interval_seconds=0.01)
    assert d.config.reload_settle_seconds == DEFAULT_SETTLE_SECONDS >= 1.0
    served: list[dict] = []
    d.on_reload(lambda v: served.append(dict(v.policy.locks)))
    with d:
        with open(path, "w") as fh:  # an in-place rewrite that stalls after a valid prefix
            fh.write(PREFIX)
            fh.flush()
            time.sleep(0.7)  # many polls see the prefix, but it has not settled yet
            assert d.dispatch("rms_norm", INPUTS).kernel_id == "lz_v0" and not served
            fh.write(REST)
        deadline = time.monotonic() + 10
        while not served and time.monotonic() < deadline:
            time.sleep(0.01)
    assert served == [{"rms_norm": "lz_v3"}]  # only the complete file, never the prefix
    assert d.dispatch("rms_norm", INPUTS).kernel_id == "lz_v3"


def test_a_change_is_reported_only_once_it_has_settled(tmp_path):
    clock = FakeClock(0.0)
    path = tmp_path / "f"
    path.write_text("old")
    seen: list[bytes | None] = []
    w = ConfigWatcher(str(path), lambda data, digest, error: seen.append(data), settle_seconds=1.0, clock=clock)
    assert not w.poll_once() and w.pending_digest is not None  # first sight: the settle period starts
    clock.advance(1.0)
    assert w.poll_once() and seen == [b"old"]
    path.write_text(PREFIX)
    assert not w.poll_once()
    clock.advance(0.75)
    assert not w.poll_once()  # stalled for less than the settle period: not applied
    path.write_text(PREFIX + REST)
    clock.advance(0.5)
    assert not w.poll_once()  # changed again: the settle period starts over
    clock.advance(0.75)
    assert not w.poll_once()
    clock.advance(0.25)
    assert w.poll_once() and seen == [b"old", (PREFIX + REST).encode()]
    assert w.pending_digest is None and not w.poll_once()


def test_settle_period_is_validated(tmp_path):
    with pytest.raises(ConfigValidationError, match="reload_settle_seconds") as info:
        DispatchConfig(reload_settle_seconds=-1)
    assert "fix:" in str(info.value)
    with pytest.raises(ConfigValidationError, match="reload_settle_seconds"):
        DispatchConfig(reload_settle_seconds=True)
    with pytest.raises(ValueError, match="reload_settle_seconds"):
        ConfigWatcher(str(tmp_path / "f"), lambda *a: None, settle_seconds=float("nan"))


def test_a_watched_path_that_is_briefly_a_fifo_never_blocks_the_watcher(tmp_path):
    path = tmp_path / "kernels.yaml"
    write_atomic(str(path), lock_policy_text("lz_v0"))
    d = _make(path, watch_interval_seconds=0.01, reload_settle_seconds=0)
    errors: list[BaseException] = []
    d.on_error(errors.append)
    d.watch()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    os.replace(fifo, path)  # the watched path is now a named pipe with no writer
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert errors and "named pipe" in str(errors[0])
    polls = d.watcher.polls
    time.sleep(0.1)
    assert d.watcher.polls > polls  # still polling, not stuck in a read
    start = time.monotonic()
    d.stop()
    assert time.monotonic() - start < 0.5 and not d.watching
    assert d.dispatch("rms_norm", INPUTS).kernel_id == "lz_v0"  # the last good policy keeps serving


def test_construction_and_reload_reject_a_fifo_at_once(tmp_path):
    path = tmp_path / "kernels.yaml"
    os.mkfifo(path)
    result: list[BaseException] = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(ConfigValidationError, _make, path).value))
    t.start()
    t.join(5)
    assert not t.is_alive() and "named pipe" in str(result[0])
