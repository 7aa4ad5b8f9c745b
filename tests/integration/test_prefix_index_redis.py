"""PrefixIndex against a real redis-server started on a free port."""

import pytest

from services.block_hash import block_hashes, hash_root
from services.local_cluster import free_port
from services.prefix_index import PrefixIndex, connect
from services.redis_server import RedisServer


@pytest.fixture
def redis_url():
    server = RedisServer(free_port())
    server.start()
    yield server.url
    server.stop()


def hashes(tokens, salt=""):
    return block_hashes(tokens, 4, hash_root("m", salt))


async def test_lookup_finds_each_workers_longest_prefix(redis_url):
    index = PrefixIndex(connect(redis_url), "m")
    prompt = list(range(32))  # 8 blocks
    h = hashes(prompt)
    await index.publish("a", 1, h[:6], [])
    await index.publish("b", 5, h[:2] + h[3:], [])  # a hole at block 2
    assert await index.lookup(h, {"a": 1, "b": 5}) == {"a": 6, "b": 2}
    await index.publish("a", 1, [], h[4:6])
    assert await index.lookup(h, {"a": 1, "b": 5}) == {"a": 4, "b": 2}
    assert await index.lookup(hashes(prompt, salt="other"), {"a": 1, "b": 5}) == {}


async def test_restarted_worker_entries_do_not_count_and_are_swept(redis_url):
    index = PrefixIndex(connect(redis_url), "m")
    h = hashes(list(range(16)))
    await index.publish("a", 1, h, [])
    await index.heartbeat("a", 2, ttl_s=30)  # a came back with epoch 2 and holds nothing yet
    live = await index.live_workers()
    assert live == {"a": 2}
    assert await index.lookup(h, live) == {}
    assert await index.sweep(live) == len(h)
    assert await index.sweep(live) == 0


async def test_withdrawn_worker_is_not_live(redis_url):
    index = PrefixIndex(connect(redis_url), "m")
    await index.heartbeat("a", 1, ttl_s=30)
    await index.withdraw("a")
    assert await index.live_workers() == {}
