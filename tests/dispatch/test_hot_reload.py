"""HotReloadDispatcher: load, reload, reject, roll back, drain, watch (rename, ConfigMap, half-written)."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest
import torch
from resilience_helpers import (
    ConfigMapDir,
    backends,
    good_kernel,
    lock_policy_text,
    ref_rms_norm,
    registry,
    spec,
    version_kernels,
    write_atomic,
    write_inplace,
)

from layerzero.dispatch.config_watch import ConfigWatcher
from layerzero.dispatch.hot_reload import ConfigVersion, HotReloadDispatcher, ReloadStats, create_hot_reload_dispatcher
from layerzero.dispatch.types import DispatchConfig, DispatchMode
from layerzero.errors import ConfigValidationError, LayerZeroError

INPUTS = {"x": torch.randn(2, 8), "weight": torch.randn(8)}


@pytest.fixture
def kr():
    return registry(*version_kernels(6))


@pytest.fixture
def cfg_path(tmp_path):
    p = tmp_path / "kernels.yaml"
    p.write_text(lock_policy_text("lz_v0"))
    return str(p)


def _make(path, kr, **cfg) -> HotReloadDispatcher:
    # No settle period here: these tests poll by hand right after each complete write. The default
    # (1 s against stalled writers) is tested in test_hot_reload_settle.py.
    cfg.setdefault("reload_settle_seconds", 0)
    config = DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path=path, **cfg)
    return HotReloadDispatcher(config, kernel_registry=kr, backend_registry=backends())


def _kernel(d) -> str:
    r = d.dispatch("rms_norm", INPUTS)
    torch.testing.assert_close(r.output, ref_rms_norm(**INPUTS))
    return r.kernel_id


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


# ---------------------------------------------------------------------------- construction
def test_initial_load(cfg_path, kr):
    d = _make(cfg_path, kr)
    v = d.current_version
    assert isinstance(v, ConfigVersion) and v.version == 1 and v.source == cfg_path
    assert v.config_hash == d.policy.config_hash and len(v.config_hash) == 64
    assert d.stats == ReloadStats(current_version=1)
    assert d.mode is DispatchMode.HOT_RELOAD
    assert _kernel(d) == "lz_v0"
    assert d.versions == [v]


def test_invalid_initial_file_raises_naming_the_field(tmp_path, kr):
    p = tmp_path / "bad.yaml"
    p.write_text('version: "1.0"\nkernel_locks: {"rms_norm": "no_such_kernel"}\n')
    with pytest.raises(ConfigValidationError) as ei:
        _make(str(p), kr)
    assert ei.value.problems[0].field == "kernel_locks.rms_norm"
    with pytest.raises(ConfigValidationError, match="file not found"):
        _make(str(tmp_path / "missing.yaml"), kr)
    with pytest.raises(ConfigValidationError) as ei2:
        HotReloadDispatcher(DispatchConfig(mode=DispatchMode.HOT_RELOAD), kernel_registry=kr)
    assert ei2.value.problems[0].field == "config_path"


# ---------------------------------------------------------------------------- reload / reject / rollback
def test_reload_reject_and_rollback(cfg_path, kr):
    d = _make(cfg_path, kr)
    reloaded, errors = [], []
    d.on_reload(reloaded.append)
    d.on_error(errors.append)

    assert d.reload() is d.current_version  # unchanged content: nothing to do
    assert d.stats.total_reloads == 0

    write_inplace(cfg_path, lock_policy_text("lz_v1"))
    v2 = d.reload(validate=True, grace_period_seconds=2.0)
    assert v2.version == 2 and _kernel(d) == "lz_v1" and reloaded == [v2]

    write_inplace(cfg_path, 'version: "1.0"\nkernel_locks: {"rms_norm": "lz_typo"}\n')
    with pytest.raises(ConfigValidationError) as ei:
        d.reload()
    assert "kernel_locks.rms_norm" in str(ei.value) and "lz_typo" in str(ei.value)
    assert _kernel(d) == "lz_v1" and d.current_version is v2  # the last good policy keeps serving
    with pytest.raises(ConfigValidationError):
        d.reload()  # the caller hears it again ...
    assert len(errors) == 1 and d.stats.failed_reloads == 1  # ... but it is reported once
    assert errors[0].problems[0].field == "kernel_locks.rms_norm"

    write_inplace(cfg_path, 'version: "1.0"\ndispatch_rules: [{operation: rms_norm, kernel: lz_v2, priority: high}]\n')
    with pytest.raises(ConfigValidationError) as ei:
        d.reload()
    assert "dispatch_rules[0].priority" in str(ei.value)

    write_inplace(cfg_path, lock_policy_text("lz_v3"))
    v3 = d.reload()
    assert v3.version == 3 and _kernel(d) == "lz_v3"
    s = d.stats
    assert (s.total_reloads, s.failed_reloads, s.current_version, s.rollbacks) == (2, 2, 3, 0)
    assert s.last_reload_time_ms is not None and s.last_reload_time_ms >= 0

    back = d.rollback()
    assert back is v2 and _kernel(d) == "lz_v1" and d.stats.current_version == 2 and d.stats.rollbacks == 1
    assert d.rollback().version == 1 and _kernel(d) == "lz_v0"
    with pytest.raises(LayerZeroError, match="no configuration version before v1"):
        d.rollback()
    assert [v.version for v in reloaded] == [2, 3, 2, 1]
    # The file did not change, so polling leaves the rollback in place; a new content is loaded.
    assert not d.poll()
    write_atomic(cfg_path, lock_policy_text("lz_v4"))
    assert d.poll() and _kernel(d) == "lz_v4" and d.current_version.version == 4


def test_bad_content_written_again_after_a_good_one_is_reported_again(cfg_path, kr):
    d = _make(cfg_path, kr)
    errors = []
    d.on_error(errors.append)
    bad = 'version: "1.0"\nkernel_locks: {"rms_norm": "lz_nope"}\n'
    write_inplace(cfg_path, bad)
    assert d.poll() and not d.poll()
    write_inplace(cfg_path, lock_policy_text("lz_v1"))
    d.poll()
    write_inplace(cfg_path, bad)
    d.poll()
    assert len(errors) == 2 and d.stats.failed_reloads == 2 and _kernel(d) == "lz_v1"


def test_history_is_bounded(cfg_path, kr):
    config = DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path=cfg_path)
    d = HotReloadDispatcher(config, kernel_registry=kr, backend_registry=backends(), history_size=3)
    for i in range(1, 6):
        write_inplace(cfg_path, lock_policy_text(f"lz_v{i}"))
        d.reload()
    assert [v.version for v in d.versions] == [4, 5, 6]


def test_validation_warns_about_locks_that_cannot_take_effect(tmp_path):
    from layerzero.registry import KernelConstraints, KernelSpec

    gpu_only = KernelSpec("lz_gpu", "rms_norm", "lz_test", good_kernel("gpu"),
                          KernelConstraints(platforms=frozenset({"cuda"})), priority=90)
    kr = registry(gpu_only, spec("lz_cpu", good_kernel("cpu")))
    p = tmp_path / "k.yaml"
    p.write_text('version: "1.0"\nkernel_locks: {"rms_norm": "lz_gpu"}\n')
    d = _make(str(p), kr)
    if torch.cuda.is_available():
        assert d.current_version.warnings == ()
    else:
        # The lock is legal, so the policy serves (lock_mode prefer), and the version says why it has
        # no effect here.
        (w,) = d.current_version.warnings
        assert w.startswith("rms_norm:") and "lz_gpu" in w
        assert _kernel(d) == "lz_cpu"
    p.write_text('version: "1.0"\nkernel_locks: {"rms_norm": "lz_cpu"}\n')
    assert d.reload(validate=False).warnings == ()


# ---------------------------------------------------------------------------- grace period
def test_grace_period_waits_for_calls_on_the_old_version(tmp_path):
    started, release = threading.Event(), threading.Event()

    def slow(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        started.set()
        release.wait(10)
        return ref_rms_norm(x, weight, eps)

    kr = registry(spec("lz_slow", slow), spec("lz_fast", good_kernel("fast")))
    p = tmp_path / "k.yaml"
    p.write_text(lock_policy_text("lz_slow"))
    d = _make(str(p), kr)
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("slow", d.dispatch("rms_norm", INPUTS)))
    t.start()
    assert started.wait(5)
    write_inplace(str(p), lock_policy_text("lz_fast"))
    reload_done = threading.Event()
    rt = threading.Thread(target=lambda: (d.reload(grace_period_seconds=10.0), reload_done.set()))
    rt.start()
    _wait_for(lambda: d.current_version.version == 2)
    assert _kernel(d) == "lz_fast"  # new calls use the new version at once ...
    time.sleep(0.05)
    assert not reload_done.is_set()  # ... while reload() waits for the in-flight call on v1
    assert d.stats.in_flight_at_last_swap == 1
    release.set()
    t.join(5)
    rt.join(5)
    assert reload_done.is_set()
    assert results["slow"].kernel_id == "lz_slow"  # the old call finished on the old version
    torch.testing.assert_close(results["slow"].output, ref_rms_norm(**INPUTS))
    assert d.stats.last_grace_wait_ms > 0


def test_grace_period_is_bounded(tmp_path):
    release = threading.Event()

    def stuck(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        release.wait(10)
        return ref_rms_norm(x, weight, eps)

    kr = registry(spec("lz_stuck", stuck), spec("lz_fast", good_kernel("fast")))
    p = tmp_path / "k.yaml"
    p.write_text(lock_policy_text("lz_stuck"))
    d = _make(str(p), kr)
    t = threading.Thread(target=lambda: d.dispatch("rms_norm", INPUTS))
    t.start()
    _wait_for(lambda: d.in_flight() == 1)
    write_inplace(str(p), lock_policy_text("lz_fast"))
    t0 = time.monotonic()
    d.reload(grace_period_seconds=0.1)
    assert 0.09 <= time.monotonic() - t0 < 5
    release.set()
    t.join(5)


# ---------------------------------------------------------------------------- watching
def test_watch_thread_picks_up_changes_and_stops(cfg_path, kr):
    d = _make(cfg_path, kr, watch_interval_seconds=0.01)
    with d:
        assert d.watching
        write_atomic(cfg_path, lock_policy_text("lz_v2"))
        _wait_for(lambda: d.current_version.version == 2)
        assert _kernel(d) == "lz_v2"
    assert not d.watching
    write_atomic(cfg_path, lock_policy_text("lz_v3"))
    time.sleep(0.05)
    assert d.current_version.version == 2  # stopped: no more reloads


def test_configmap_symlink_swap(tmp_path, kr):
    cm = ConfigMapDir(str(tmp_path))
    cm.write(lock_policy_text("lz_v0"))
    d = _make(cm.path, kr)
    assert _kernel(d) == "lz_v0"
    cm.write(lock_policy_text("lz_v1"))
    assert os.path.islink(cm.path) and d.poll()
    assert _kernel(d) == "lz_v1"
    cm.write('version: "1.0"\nkernel_locks: {"rms_norm": 42}\n')
    errors = []
    d.on_error(errors.append)
    assert d.poll() and _kernel(d) == "lz_v1"
    assert errors and "kernel_locks.rms_norm" in str(errors[0])
    cm.write(lock_policy_text("lz_v2"))
    assert d.poll() and _kernel(d) == "lz_v2"


def test_half_written_file_is_reported_once_then_loaded_when_complete(cfg_path, kr):
    d = _make(cfg_path, kr)
    errors = []
    d.on_error(errors.append)
    full = lock_policy_text("lz_v5")
    cut = full.index("lz_v5") + 3
    with open(cfg_path, "w") as fh:
        fh.write(full[:cut])  # the writer is mid-way
        fh.flush()
        assert d.poll()
        assert not d.poll()  # same partial content: not reported again
        fh.write(full[cut:])
    assert d.poll() and _kernel(d) == "lz_v5"
    assert len(errors) == 1 and "YAML syntax error" in str(errors[0])
    assert d.stats.failed_reloads == 1 and d.stats.total_reloads == 1


def test_missing_file_keeps_serving_and_is_reported_once(cfg_path, kr):
    d = _make(cfg_path, kr)
    errors = []
    d.on_error(errors.append)
    os.remove(cfg_path)
    assert d.poll() and not d.poll()
    assert len(errors) == 1 and "file not found" in str(errors[0]) and _kernel(d) == "lz_v0"
    write_atomic(cfg_path, lock_policy_text("lz_v1"))
    assert d.poll() and _kernel(d) == "lz_v1"


def test_watcher_survives_callback_errors(tmp_path):
    p = tmp_path / "f"
    p.write_text("a")
    seen = []

    def cb(data, digest, error):
        seen.append(data)
        raise RuntimeError("consumer bug")

    w = ConfigWatcher(str(p), cb, interval_seconds=0.01, settle_seconds=0)
    assert w.poll_once() and not w.poll_once()
    p.write_text("b")
    assert w.poll_once()
    assert seen == [b"a", b"b"]
    with pytest.raises(ValueError, match="watch_interval_seconds"):
        ConfigWatcher(str(p), cb, interval_seconds=0)


def test_a_read_overlapping_a_rewrite_is_never_reported(tmp_path, monkeypatch):
    """A read racing ``echo > file`` can return old bytes then new ones (seen in CI: a mix of two policies
    whose key read ``kernellocks``). Reads are repeated until two agree, so only real contents reach the
    consumer; a mix that settles back to the old content is no change at all."""
    import layerzero.dispatch.config_watch as cw

    p = tmp_path / "f"
    p.write_text('{"version": "old"}')
    seen = []
    w = ConfigWatcher(str(p), lambda data, digest, error: seen.append(data), interval_seconds=0.01,
                      settle_seconds=0)
    assert w.poll_once() and seen == [b'{"version": "old"}']

    real = cw._read_once
    mixes = [b'{"version": "oldnew"}']  # what one racing read returns, once

    def racing(path):
        if mixes:
            data = mixes.pop()
            return data, cw.hashlib.sha256(data).hexdigest(), None
        return real(path)

    monkeypatch.setattr(cw, "_read_once", racing)
    assert not w.poll_once() and len(seen) == 1  # the mix settled back to the unchanged file
    p.write_text('{"version": "new"}')
    mixes.append(b'{"version": "nold"}')
    assert w.poll_once() and seen[-1] == b'{"version": "new"}'
    data, digest, _ = cw.read_config_bytes(str(p))
    assert data == b'{"version": "new"}' and digest == cw.hashlib.sha256(data).hexdigest()


def test_unreferenced_dispatcher_stops_its_watcher(cfg_path, kr):
    d = _make(cfg_path, kr, watch_interval_seconds=0.01)
    d.watch()
    watcher = d.watcher
    del d
    gc.collect()
    write_atomic(cfg_path, lock_policy_text("lz_v1"))  # the next poll finds the dispatcher gone
    _wait_for(lambda: not watcher.running)


# ---------------------------------------------------------------------------- factory / orchestrator
def test_factory_and_shared_resilience_state(cfg_path, kr):
    d = create_hot_reload_dispatcher(cfg_path, validate_on_reload=True, watch_interval_seconds=0.01,
                                     reload_settle_seconds=0.02,
                                     start_watching=True, kernel_registry=kr, backend_registry=backends(),
                                     failure_threshold=4)
    try:
        assert d.watching and d.config.failure_threshold == 4 and d.config.mode is DispatchMode.HOT_RELOAD
        circuits, telemetry = d.circuits, d.telemetry
        _kernel(d)
        write_atomic(cfg_path, lock_policy_text("lz_v1"))
        _wait_for(lambda: d.current_version.version == 2)
        _kernel(d)
        # Breakers and telemetry outlive the swap: one set for every version.
        assert d.dispatcher.circuits is circuits and d.dispatcher.telemetry is telemetry
        snap = telemetry.snapshot()
        assert snap.per_kernel["lz_v0"].calls == 1 and snap.per_kernel["lz_v1"].calls == 1
    finally:
        d.stop()


def test_orchestrator_hot_reload_mode(cfg_path, kr):
    from layerzero.dispatch import create_orchestrator
    from layerzero.policy import load_policy

    config = DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path=cfg_path)
    orch = create_orchestrator(config=config, kernel_registry=kr, backend_registry=backends())
    d = orch.get_dispatcher()
    assert isinstance(d, HotReloadDispatcher)
    assert orch.dispatch("rms_norm", INPUTS).kernel_id == "lz_v0"
    orch.set_policy(load_policy({"version": "x", "kernel_locks": {"rms_norm": "lz_v5"}}, registry=kr))
    assert orch.dispatch("rms_norm", INPUTS).kernel_id == "lz_v5"
    assert d.current_version.origin == "set_policy"
    assert d.rollback().version == 1 and orch.dispatch("rms_norm", INPUTS).kernel_id == "lz_v0"
    orch.close()


def test_orchestrator_hot_reload_mode_watches_its_file_until_closed(cfg_path, kr):
    from layerzero.dispatch import create_orchestrator

    config = DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path=cfg_path, watch_interval_seconds=0.01,
                            reload_settle_seconds=0.02)
    with create_orchestrator(config=config, kernel_registry=kr, backend_registry=backends()) as orch:
        d = orch.get_dispatcher()
        assert d.watching
        write_atomic(cfg_path, lock_policy_text("lz_v2"))
        _wait_for(lambda: orch.dispatch("rms_norm", INPUTS).kernel_id == "lz_v2")
    assert not d.watching  # close() (here: leaving the with block) stops the watcher
    write_atomic(cfg_path, lock_policy_text("lz_v3"))
    time.sleep(0.1)
    assert orch.dispatch("rms_norm", INPUTS).kernel_id == "lz_v2"
