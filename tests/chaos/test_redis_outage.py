"""Redis stopped mid-run: every request still succeeds (load-only routing); Redis back: hits return."""

from __future__ import annotations

import pytest
import redis

from tests.chaos.conftest import MODEL, client_for
from tests.e2e.conftest import scrape, wait_until

pytestmark = pytest.mark.cluster

PREFIX = "Permission is hereby granted, free of charge, to any person obtaining a copy of this software " * 3


def index_keys(cluster) -> int:
    return len(redis.Redis.from_url(cluster.redis.url).keys("ferrum:*:blk:*"))


def test_serving_survives_redis_and_recovers(two_worker_cluster):
    cluster = two_worker_cluster
    client = client_for(cluster)
    client.completions.create(model=MODEL, prompt=PREFIX + "first", max_tokens=4)
    wait_until(lambda: index_keys(cluster) > 0, what="block events to reach Redis")

    errors_key = "ferrum_infer_redis_errors_total{process=scheduler}"
    errors_before = scrape(cluster.metrics_url(cluster.scheduler)).get(errors_key, 0)
    cluster.redis.stop()
    for i in range(6):
        r = client.completions.create(model=MODEL, prompt=PREFIX + f"during {i}", max_tokens=4,
                                      extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 4
    assert scrape(cluster.metrics_url(cluster.scheduler)).get(errors_key, 0) > errors_before

    cluster.redis.start()  # same port, empty: workers must republish everything they hold
    wait_until(lambda: index_keys(cluster) > 0, what="workers to republish their blocks")
    r = client.completions.create(model=MODEL, prompt=PREFIX + "after", max_tokens=4)
    assert r.usage.prompt_tokens_details.cached_tokens > 0
