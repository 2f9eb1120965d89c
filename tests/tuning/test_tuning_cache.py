"""Autotune cache faults never fail a dispatch: an unusable path degrades to in-memory tuning with one
warning, malformed entries are dropped, the default location never falls back to the current directory,
and writers in several processes merge rather than overwrite each other."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from layerzero.dispatch import DispatchConfig, DispatchMode
from layerzero.dispatch.autotune import AutotuneDispatcher
from layerzero.registry import KernelRegistry, KernelSpec
from layerzero.tuning.cache import AutotuneCacheWarning, TuneEntry, TuningCache, default_cache_path

VERSIONS = {"torch": "1.0"}


def _dispatcher(path) -> AutotuneDispatcher:
    registry = KernelRegistry([
        KernelSpec("reference_rms_norm", "rms_norm", "torch", "layerzero.kernels.reference:rms_norm", priority=0,
                   tags={"reference"}),
        KernelSpec("torch_rms_norm", "rms_norm", "torch", "layerzero.kernels.torch_ops:torch_rms_norm", priority=50),
    ])
    cfg = DispatchConfig(mode=DispatchMode.AUTOTUNE, autotune_cache_path=str(path), autotune_warmup=0,
                         autotune_repeats=1)
    return AutotuneDispatcher(cfg, kernel_registry=registry, tuning_cache=TuningCache(path, versions=VERSIONS))


def _dispatch_buckets(path, n=3) -> tuple[AutotuneDispatcher, list[warnings.WarningMessage]]:
    """Build a dispatcher and run ``n`` different shape buckets; returns it and the cache warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = _dispatcher(path)
        for i in range(n):
            x = torch.randn(2, 8 * 2 ** i)
            r = d.dispatch("rms_norm", {"x": x, "weight": torch.ones(x.shape[-1])})
            assert r.output.shape == x.shape
    return d, [w for w in caught if issubclass(w.category, AutotuneCacheWarning)]


def test_directory_at_the_cache_path_degrades_to_memory_with_one_warning(tmp_path):
    d, warned = _dispatch_buckets(tmp_path)
    assert len(warned) == 1 and "in memory" in str(warned[0].message)
    assert not d.tuning.persistent and len(d.tuning) == 3


@pytest.mark.parametrize("where", ["under_a_file", "in_proc"])
def test_unwritable_cache_path_degrades_to_memory_with_one_warning(tmp_path, where):
    if where == "under_a_file":
        blocker = tmp_path / "not_a_dir"
        blocker.write_text("x")
        path = blocker / "sub" / "tune.json"  # its directory can never be created
    else:
        if not os.path.isdir("/proc/self"):
            pytest.skip("needs procfs")
        path = "/proc/self/layerzero-no-such-dir/tune.json"  # readable as "missing", never writable
    d, warned = _dispatch_buckets(path)
    assert len(warned) == 1 and "fix:" in str(warned[0].message)
    assert not d.tuning.persistent and len(d.tuning) == 3
    if where == "in_proc":
        assert "cannot write" in str(warned[0].message)


def test_fifo_at_the_cache_path_never_blocks(tmp_path):
    fifo = tmp_path / "tune.json"
    os.mkfifo(fifo)
    d, warned = _dispatch_buckets(fifo, n=1)
    assert len(warned) == 1 and "named pipe" in str(warned[0].message) and not d.tuning.persistent


def test_malformed_entries_are_dropped_with_a_warning(tmp_path):
    path = tmp_path / "tune.json"
    good = {"kernel_id": "torch_rms_norm", "times_us": {"torch_rms_norm": 1.0}, "rejected": {}, "measured_at": 1.0}
    path.write_text(json.dumps({"schema": 1, "fingerprint": json.dumps(VERSIONS), "versions": VERSIONS, "entries": {
        "ok": good,
        "unhashable": {**good, "kernel_id": ["torch_rms_norm"]},
        "bad_times": {**good, "times_us": {"torch_rms_norm": "fast"}},
        "not_a_mapping": 3,
    }}))
    with pytest.warns(AutotuneCacheWarning, match="dropped 3 malformed entries"):
        cache = TuningCache(path, versions=VERSIONS)
    assert set(cache.entries()) == {"ok"} and cache.dropped == 3 and cache.persistent
    # A bucket whose stored entry was malformed is simply measured again: no TypeError reaches dispatch.
    d, warned = _dispatch_buckets(path, n=1)
    assert len(warned) == 1 and d.tuning.persistent and len(d.tuning) == 2


def test_corrupt_file_is_ignored_and_rewritten(tmp_path):
    path = tmp_path / "tune.json"
    path.write_text('{"schema": 1, "entr')
    d, warned = _dispatch_buckets(path, n=1)
    assert len(warned) == 1 and "not valid JSON" in str(warned[0].message)
    assert d.tuning.persistent and len(json.loads(path.read_text())["entries"]) == 1


def test_default_location_never_uses_the_current_directory(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAYERZERO_TUNE_CACHE", raising=False)
    for xdg in ("", ".", "relative/dir"):
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        path = default_cache_path()
        assert path.is_absolute() and path.name == "autotune.json"
        assert not path.is_relative_to(tmp_path / "layerzero") and not path.is_relative_to(tmp_path / "relative")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == tmp_path / "xdg" / "layerzero" / "autotune.json"
    monkeypatch.setenv("LAYERZERO_TUNE_CACHE", "  ")
    assert default_cache_path() == tmp_path / "xdg" / "layerzero" / "autotune.json"
    monkeypatch.setenv("LAYERZERO_TUNE_CACHE", str(tmp_path / "mine.json"))
    assert default_cache_path() == tmp_path / "mine.json"


def test_writers_in_several_processes_merge_instead_of_overwriting(tmp_path):
    path = tmp_path / "tune.json"
    # Two caches opened before either wrote: what two ranks starting together hold in memory.
    rank0, rank1 = TuningCache(path, versions=VERSIONS), TuningCache(path, versions=VERSIONS)
    rank0.put("k0", TuneEntry("a", {"a": 1.0}))
    rank1.put("k1", TuneEntry("b", {"b": 2.0}))
    on_disk = json.loads(path.read_text())["entries"]
    assert set(on_disk) == {"k0", "k1"} and on_disk["k0"]["kernel_id"] == "a"
    assert set(TuningCache(path, versions=VERSIONS).entries()) == {"k0", "k1"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".autotune-")]  # no temp files left


def test_a_lock_held_elsewhere_times_out_into_memory_mode(tmp_path):
    from filelock import FileLock

    path = tmp_path / "tune.json"
    cache = TuningCache(path, versions=VERSIONS, lock_timeout_seconds=0.05)
    with FileLock(f"{path}.lock"):
        import threading

        t = threading.Thread(target=cache.put, args=("k", TuneEntry("a", {"a": 1.0})))  # another "process"
        with pytest.warns(AutotuneCacheWarning, match="cannot write"):
            t.start()
            t.join(5)
    assert not cache.persistent and cache.get("k") is not None and not path.exists()
