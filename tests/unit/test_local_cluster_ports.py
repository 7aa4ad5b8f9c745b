"""LocalCluster's ports: never the same one twice, even when the kernel offers it twice."""

from __future__ import annotations

from services.local_cluster import port_not_handed_out


def test_a_port_offered_again_is_skipped():
    offers = iter([40001, 40001, 40001, 40002])
    handed_out: set[int] = set()
    first = port_not_handed_out(lambda: next(offers), handed_out)
    second = port_not_handed_out(lambda: next(offers), handed_out)
    assert (first, second, handed_out) == (40001, 40002, {40001, 40002})
