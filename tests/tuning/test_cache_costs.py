"""Local cost measurements in the autotune cache: they survive a reload, stay apart per device class and
scope, sit beside the dispatcher's own entries, and a bucket key that does not parse is skipped."""

from __future__ import annotations

from layerzero.tuning.cache import TuneEntry, TuningCache, cost_entries, cost_key, put_costs
from layerzero.tuning.cost_table import CostBucket

VERSIONS = {"torch": "1.0"}
BUCKET = CostBucket.make("rms_norm", "float32", {"hidden": 64}, 100, None, {"casting": "llama", "residual": False})


def test_round_trip_through_the_file(tmp_path):
    path = tmp_path / "autotune.json"
    cache = TuningCache(path, versions=VERSIONS)
    put_costs(cache, "sm90", BUCKET.key(), {"a": 3.0, "b": 1.5})
    put_costs(cache, "sm90", BUCKET.key(), {"a": 2.0}, scope="llama-1")
    put_costs(cache, "cpu", BUCKET.key(), {"c": 9.0})
    cache.put("cpu|rms_norm|('bucket',)", TuneEntry("a", {"a": 1.0}))  # the autotune dispatcher's kind of entry
    again = TuningCache(path, versions=VERSIONS)
    assert again.get(cost_key("sm90", BUCKET.key())).kernel_id == "b"  # the fastest is the entry's choice
    assert cost_entries(again, "sm90") == {BUCKET.key(): {"a": 3.0, "b": 1.5}}
    assert cost_entries(again, "sm90", "llama-1") == {BUCKET.key(): {"a": 2.0}}
    assert cost_entries(again, "cpu") == {BUCKET.key(): {"c": 9.0}}
    assert BUCKET.tokens == 128


def test_unparseable_bucket_key_is_skipped(tmp_path):
    cache = TuningCache(tmp_path / "autotune.json", versions=VERSIONS)
    cache.put("cost|sm90|*|{not json", TuneEntry("a", {"a": 1.0}), save=False)
    cache.put('cost|sm90|*|{"operation": "rms_norm"}', TuneEntry("a", {"a": 1.0}), save=False)
    put_costs(cache, "sm90", BUCKET.key(), {"a": 1.0}, save=False)
    keys = list(cost_entries(cache, "sm90"))
    assert [CostBucket.from_key(k) for k in keys if CostBucket.from_key(k) is not None] == [BUCKET]
    assert len(keys) == 3  # the cache keeps what it cannot parse; the cost table skips it


def test_nothing_measured_writes_nothing(tmp_path):
    cache = TuningCache(tmp_path / "autotune.json", versions=VERSIONS)
    put_costs(cache, "sm90", BUCKET.key(), {})
    assert len(cache) == 0 and not (tmp_path / "autotune.json").exists()
