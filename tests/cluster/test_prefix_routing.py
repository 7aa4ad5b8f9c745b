"""Cache-aware routing across real workers with a real Redis index."""

from __future__ import annotations

import asyncio

import openai
import pytest
import redis

from services.local_cluster import LocalCluster, WorkerSpec
from tests.conftest import WORKER_ENV
from tests.e2e.conftest import scrape, wait_until

pytestmark = pytest.mark.cluster

MODEL = "tiny-llama"
BLOCK = 16
GROUPS = [
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
    "associated documentation files, to deal in the Software without restriction. ",
    "This program is free software; you can redistribute it and/or modify it under the terms of the GNU "
    "General Public License as published by the Free Software Foundation. ",
    "Licensed under the Apache License, Version 2.0; you may not use this file except in compliance with "
    "the License. You may obtain a copy of the License at the address below. ",
]


def cluster_of(model_dir, workers: int, worker_env=None, env=None) -> LocalCluster:
    specs = [WorkerSpec(str(model_dir), MODEL, {**WORKER_ENV, **(worker_env or {})})
             for _ in range(workers)]
    return LocalCluster(specs, redis=True, env=env)


def served_per_worker(cluster) -> list[float]:
    return [sum(v for k, v in scrape(cluster.metrics_url(w)).items()
                if k.startswith("ferrum_infer_worker_requests_total"))
            for w in cluster.workers]


def index_entries(cluster) -> dict[str, set[str]]:
    """worker id -> epochs found in the index."""
    client = redis.Redis.from_url(cluster.redis.url)
    found: dict[str, set[str]] = {}
    for key in client.scan_iter("ferrum:*:blk:*"):
        for worker, epoch in client.hgetall(key).items():
            found.setdefault(worker.decode(), set()).add(epoch.decode())
    return found


def test_prefix_groups_stick_to_the_worker_holding_them(tiny_llama_dir):
    with cluster_of(tiny_llama_dir, workers=3) as cluster:
        client = openai.OpenAI(base_url=cluster.base_url, api_key="x", max_retries=0)
        for group in GROUPS:  # warm: each prefix computed once somewhere
            client.completions.create(model=MODEL, prompt=group + "warm", max_tokens=2)
        wait_until(lambda: sum(len(v) for v in index_entries(cluster).values()) > 0, what="index entries")
        for round_ in range(3):
            for group in GROUPS:
                r = client.completions.create(model=MODEL, prompt=group + f"question {round_}", max_tokens=2)
                prefix_tokens = r.usage.prompt_tokens - 6
                assert r.usage.prompt_tokens_details.cached_tokens >= (prefix_tokens // BLOCK - 1) * BLOCK, group
        reasons = scrape(cluster.metrics_url(cluster.scheduler))
        assert reasons.get("ferrum_infer_routing_decisions_total{policy=cache_aware,reason=prefix_hit}", 0) >= 9


async def test_single_prefix_burst_spreads_when_a_worker_saturates(tiny_llama_dir):
    with cluster_of(tiny_llama_dir, workers=2, worker_env={"FERRUM_INFER_MAX_NUM_SEQS": "2"}) as cluster:
        client = openai.AsyncOpenAI(base_url=cluster.base_url, api_key="x", max_retries=0, timeout=120)
        await client.completions.create(model=MODEL, prompt=GROUPS[0], max_tokens=2)
        await asyncio.gather(*[
            client.completions.create(model=MODEL, prompt=GROUPS[0] + str(i), max_tokens=40,
                                      extra_body={"ignore_eos": True}) for i in range(12)])
        per_worker = served_per_worker(cluster)
        assert sum(per_worker) == 13 and min(per_worker) >= 3, per_worker


def test_restarted_worker_stale_entries_never_route_and_are_swept(tiny_llama_dir):
    env = {"FERRUM_INFER_INDEX_SWEEP_INTERVAL_S": "0.5"}
    with cluster_of(tiny_llama_dir, workers=1, env=env) as cluster:
        client = openai.OpenAI(base_url=cluster.base_url, api_key="x", max_retries=0)
        client.completions.create(model=MODEL, prompt=GROUPS[1] + "warm", max_tokens=2)
        wait_until(lambda: "worker-0" in index_entries(cluster), what="the worker's entries")
        old_epochs = index_entries(cluster)["worker-0"]
        cluster.kill_worker(0)
        cluster.restart_worker(0)
        cluster.wait_for_workers(1)
        hits_key = "ferrum_infer_routing_decisions_total{policy=cache_aware,reason=prefix_hit}"
        hits_before = scrape(cluster.metrics_url(cluster.scheduler)).get(hits_key, 0)
        r = client.completions.create(model=MODEL, prompt=GROUPS[1] + "again", max_tokens=2)
        assert r.usage.prompt_tokens_details.cached_tokens == 0  # a fresh worker: nothing came from stale entries
        assert scrape(cluster.metrics_url(cluster.scheduler)).get(hits_key, 0) == hits_before
        wait_until(lambda: not (index_entries(cluster).get("worker-0", set()) & old_epochs),
                   what="the sweep to remove the old epoch's entries")
        # the new epoch's blocks are indexed
        wait_until(lambda: index_entries(cluster).get("worker-0"), what=f"new entries; index: {index_entries(cluster)}")
