"""Load test: 8 threads x 5,000 dispatches while the policy file is rewritten 100 times.

A third of the rewrites are invalid (a wrong field, or a file truncated mid-write); valid ones arrive by
atomic rename or by in-place rewrite (which a poll can catch empty). Each valid version locks rms_norm to
its own kernel, so ``result.kernel_id`` names the version that served a call. Checked: no exception
escapes a dispatch; every output equals the reference; every call ran under exactly one valid version,
and versions never go backwards within a thread; each invalid content fired ``on_error`` once with a
message naming the field; stats agree with the callbacks; ``rollback()`` returns to the previous version.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time

import pytest
import torch
from resilience_helpers import backends, ref_rms_norm, registry, version_kernels, write_atomic, write_inplace

from layerzero.dispatch.hot_reload import HotReloadDispatcher
from layerzero.dispatch.types import DispatchConfig, DispatchMode
from layerzero.errors import ConfigValidationError

THREADS = 8
CALLS = 5000
REWRITES = 100


def valid_text(k: int) -> str:
    # One flow mapping and no trailing newline: every proper prefix is invalid YAML, so a torn read can
    # never be mistaken for a valid policy.
    return f'{{"version": "load-{k}", "kernel_locks": {{"rms_norm": "lz_v{k}"}}}}'


INVALID = {
    # kind: (text for write i, field the error must name)
    "unknown_kernel": (lambda i: f'{{"version": "bad-{i}", "kernel_locks": {{"rms_norm": "lz_missing_{i}"}}}}',
                       "kernel_locks.rms_norm"),
    "bad_priority": (lambda i: f'{{"version": "bad-{i}", "dispatch_rules": [{{"operation": "rms_norm", '
                               f'"kernel": "lz_v0", "priority": "high-{i}"}}]}}', "dispatch_rules[0].priority"),
    "bad_lock_mode": (lambda i: f'{{"version": "bad-{i}", "defaults": {{"lock_mode": "sometimes-{i}"}}}}',
                      "defaults.lock_mode"),
}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.slow
def test_reload_under_load(tmp_path):
    rng = random.Random(0)
    plan = []  # (kind, text, how)
    k = 0
    for i in range(REWRITES):
        if i % 3 == 2:
            kind = ("unknown_kernel", "bad_priority", "bad_lock_mode", "truncated")[(i // 3) % 4]
            if kind == "truncated":
                full = valid_text(999)  # never completed: a writer died mid-write
                plan.append(("truncated", full[: rng.randrange(1, len(full) - 1)], "inplace"))
            else:
                plan.append((kind, INVALID[kind][0](i), rng.choice(["atomic", "inplace"])))
        else:
            k += 1
            plan.append(("valid", valid_text(k), "atomic" if i % 2 else "inplace"))
    n_valid = k
    n_invalid = REWRITES - n_valid
    assert n_invalid == 33

    kr = registry(*version_kernels(n_valid + 1))
    path = str(tmp_path / "kernels.yaml")
    write_atomic(path, valid_text(0))
    config = DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path=path, watch_interval_seconds=0.002,
                            reload_settle_seconds=0.01, validate_on_reload=True)
    d = HotReloadDispatcher(config, kernel_registry=kr, backend_registry=backends())
    current_write = [-1]
    errors: list[tuple[int, BaseException]] = []
    reloads = []
    d.on_error(lambda exc: errors.append((current_write[0], exc)))
    d.on_reload(reloads.append)

    escaped: list[BaseException] = []
    seen: list[list[int]] = [[] for _ in range(THREADS)]
    bad_outputs = [0] * THREADS
    start = threading.Barrier(THREADS + 1)

    def worker(w: int) -> None:
        gen = torch.Generator().manual_seed(w)
        inputs = {"x": torch.randn(2, 16, generator=gen), "weight": torch.randn(16, generator=gen)}
        expected = ref_rms_norm(**inputs)
        out = seen[w]
        start.wait()
        for _ in range(CALLS):
            try:
                r = d.dispatch("rms_norm", inputs)
            except BaseException as e:  # noqa: BLE001 - the assertion is that nothing escapes
                escaped.append(e)
                continue
            if r.was_fallback or not torch.equal(r.output, expected):
                bad_outputs[w] += 1
            out.append(int(r.kernel_id.removeprefix("lz_v")))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(THREADS)]
    for t in threads:
        t.start()
    d.watch()
    t0 = time.monotonic()
    start.wait()
    try:
        for i, (kind, text, how) in enumerate(plan):
            current_write[0] = i
            (write_atomic if how == "atomic" else write_inplace)(path, text)
            deadline = time.monotonic() + 20
            while d.seen_file_hash != _sha(text):  # wait until the watcher has handled this content
                assert time.monotonic() < deadline, f"write {i} ({kind}) was never processed"
                time.sleep(0.001)
            time.sleep(rng.random() * 0.01)
        for t in threads:
            t.join(60)
    finally:
        d.stop()
    elapsed = time.monotonic() - t0

    assert not escaped, f"{len(escaped)} dispatch calls raised, first: {escaped[0]!r}"
    assert bad_outputs == [0] * THREADS, f"calls with a fallback or a wrong output per thread: {bad_outputs}"
    valid_versions = set(range(n_valid + 1))
    observed = set()
    for w in range(THREADS):
        assert len(seen[w]) == CALLS, f"thread {w} finished {len(seen[w])} of {CALLS} calls"
        assert set(seen[w]) <= valid_versions, f"thread {w} ran under {sorted(set(seen[w]) - valid_versions)}"
        # Each call ran under one version, and a thread never sees an older version after a newer one.
        back = [(a, b) for a, b in zip(seen[w], seen[w][1:]) if a > b]
        assert not back, f"thread {w} went back to an older version: {back[:5]}"
        observed |= set(seen[w])
    assert len(observed) > 3, "the writes did not overlap the dispatches"

    # Every invalid content fired on_error once, naming its field. Errors are matched to writes by the
    # rejected content's hash (carried on the error), not by timing; any other rejected content is a torn
    # in-place write caught empty or half-written, and those can only fail as a whole document.
    planned = {_sha(text): i for i, (_, text, _) in enumerate(plan)}
    by_write: dict[int, list[BaseException]] = {}
    torn: list[BaseException] = []
    for _, exc in errors:
        assert isinstance(exc, ConfigValidationError)
        i = planned.get(getattr(exc, "config_hash", None))
        (by_write.setdefault(i, []) if i is not None else torn).append(exc)
    assert all(e.problems[0].field == "<document>" for e in torn), [str(e) for e in torn]
    n_inplace = sum(1 for _, _, how in plan if how == "inplace")
    assert not torn or n_inplace, "a torn read happened although every write was atomic"
    for i, (kind, text, how) in enumerate(plan):
        excs = by_write.get(i, [])
        if kind == "valid":
            assert not excs, f"valid write {i} produced errors {excs}"
        elif kind == "truncated":
            assert len(excs) == 1, f"truncated write {i}: errors {excs}"
            assert "YAML syntax error" in str(excs[0]) or "empty" in str(excs[0])
        else:
            field = INVALID[kind][1]
            assert len(excs) == 1, f"write {i} ({kind}): errors {excs}"
            assert any(p.field == field for p in excs[0].problems) and field in str(excs[0])
    s = d.stats
    assert s.total_reloads == n_valid == len(reloads), (s, n_valid, [v.version for v in reloads])
    assert s.failed_reloads == len(errors) >= n_invalid, (s, len(errors), [str(e) for _, e in errors][:5])
    assert s.current_version == n_valid + 1 == d.current_version.version, (s, n_valid)
    assert [v.version for v in reloads] == list(range(2, n_valid + 2))

    last = d.current_version
    prev = d.rollback()
    assert prev.version == last.version - 1
    assert d.dispatch("rms_norm", {"x": torch.randn(2, 16), "weight": torch.randn(16)}).kernel_id == f"lz_v{n_valid - 1}"
    assert d.stats.rollbacks == 1 and d.stats.total_reloads == n_valid + 1
    assert elapsed < 60, f"load test took {elapsed:.1f}s"
