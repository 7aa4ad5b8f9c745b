"""The routing score, the imbalance guard, speculative entries and prefix matching (pure logic)."""

from dataclasses import dataclass

from scheduler.routing import RoutingWeights, cache_aware, round_robin
from scheduler.speculative import SpeculativeIndex
from services.prefix_index import longest_prefixes


@dataclass
class W:
    worker_id: str
    credit: int = 4
    load: float = 0.0
    kv_usage: float = 0.0


def test_prefix_hit_beats_idle_worker_at_moderate_load():
    d = cache_aware([W("a", load=0.25), W("b")], {"a": 8}, total_blocks=10)
    assert (d.worker.worker_id, d.reason, d.matched_blocks) == ("a", "prefix_hit", 8)


def test_load_wins_when_the_hit_is_small():
    d = cache_aware([W("a", load=0.5), W("b")], {"a": 1}, total_blocks=10)
    assert (d.worker.worker_id, d.reason) == ("b", "load")


def test_imbalance_guard_sends_to_least_loaded_despite_a_full_hit():
    d = cache_aware([W("a", load=0.75), W("b", load=0.125)], {"a": 10}, total_blocks=10)
    assert (d.worker.worker_id, d.reason) == ("b", "imbalance")
    # the same loads under a looser guard keep the affinity
    d = cache_aware([W("a", load=0.75), W("b", load=0.125)], {"a": 10}, 10, RoutingWeights(imbalance=0.9))
    assert d.worker.worker_id == "a"


def test_full_workers_are_never_chosen_and_kv_pressure_counts():
    assert cache_aware([W("a", credit=0)], {"a": 10}, 10) is None
    d = cache_aware([W("a", kv_usage=1.0), W("b")], {}, 10)
    assert d.worker.worker_id == "b"


def test_with_nothing_cached_load_decides_until_kv_runs_short():
    # usage figures differing well below full do not outweigh two more requests
    d = cache_aware([W("a", load=2 / 64, kv_usage=0.6), W("b", load=4 / 64, kv_usage=0.2)], {}, 10)
    assert (d.worker.worker_id, d.reason) == ("a", "load")
    # a nearly full cache does
    d = cache_aware([W("a", load=2 / 64, kv_usage=0.98), W("b", load=4 / 64, kv_usage=0.2)], {}, 10)
    assert d.worker.worker_id == "b"


def test_round_robin_cycles_over_ready_workers():
    workers = [W("b"), W("a"), W("c", credit=0)]
    assert [round_robin(workers, t).worker.worker_id for t in range(4)] == ["a", "b", "a", "b"]


def test_longest_prefix_is_consecutive_and_epoch_checked():
    holders = [{"a": 1, "b": 7}, {"a": 1, "b": 7}, {"b": 7}, {"a": 1, "b": 7}]
    assert longest_prefixes(holders, {"a": 1, "b": 7}) == {"a": 2, "b": 4}
    # b restarted (epoch 8): its old entries no longer count
    assert longest_prefixes(holders, {"a": 1, "b": 8}) == {"a": 2}
    assert longest_prefixes([{}, {"a": 1}], {"a": 1}) == {}


def test_speculative_entries_expire():
    now = [100.0]
    spec = SpeculativeIndex(ttl_s=5, clock=lambda: now[0])
    spec.note([b"h1", b"h2"], "a")
    assert spec.lookup([b"h1", b"h2", b"h3"], ["a", "b"]) == {"a": 2}
    now[0] += 6
    assert spec.lookup([b"h1", b"h2"], ["a"]) == {}
    spec.note([b"h9"], "b")  # prunes what expired
    assert len(spec) == 1
