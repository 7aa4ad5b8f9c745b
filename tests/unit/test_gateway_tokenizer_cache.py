"""TokenizerCache: one fetch per model, re-validated against ListModels, reloaded only on change."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.errors import OpenAIError
from gateway.scheduler_client import SchedulerError
from gateway.tokenizer_cache import TokenizerCache
from services.types import ModelInfo
from tests.unit.test_gateway_support import MODEL, FakeScheduler, bundle  # noqa: F401  (fixture)


@pytest.fixture
def executor():
    with ThreadPoolExecutor(2) as pool:
        yield pool


async def test_concurrent_first_requests_share_one_fetch(bundle, executor):
    fake = FakeScheduler(bundle)
    cache = TokenizerCache(fake, executor)
    loaded = await asyncio.gather(*(cache.get(MODEL) for _ in range(5)))
    assert fake.tokenizer_fetches == 1
    assert all(t is loaded[0] for t in loaded)
    assert loaded[0].max_model_len == bundle.max_model_len and loaded[0].revision == bundle.revision


async def test_unchanged_listing_keeps_the_tokenizer_without_refetching(bundle, executor):
    fake = FakeScheduler(bundle)
    cache = TokenizerCache(fake, executor, recheck_s=0)
    first = await cache.get(MODEL)
    assert await cache.get(MODEL) is first
    assert fake.tokenizer_fetches == 1


async def test_changed_model_is_refetched_and_reloaded_only_if_its_revision_changed(bundle, executor):
    fake = FakeScheduler(bundle)
    cache = TokenizerCache(fake, executor, recheck_s=0)
    first = await cache.get(MODEL)
    fake.models = [ModelInfo(MODEL, bundle.max_model_len, 1, created=1800000000)]  # re-registered, same files
    assert await cache.get(MODEL) is first
    assert fake.tokenizer_fetches == 2
    fake.bundles[MODEL] = dataclasses.replace(bundle, revision="new-weights", max_model_len=64)
    fake.models = [ModelInfo(MODEL, 64, 1, created=1900000000)]
    reloaded = await cache.get(MODEL)
    assert reloaded is not first and reloaded.max_model_len == 64


async def test_unknown_model_is_404(bundle, executor):
    cache = TokenizerCache(FakeScheduler(bundle), executor)
    with pytest.raises(OpenAIError) as caught:
        await cache.get("nope")
    assert caught.value.status == 404 and caught.value.code == "model_not_found"


async def test_cached_tokenizer_survives_a_scheduler_outage(bundle, executor):
    fake = FakeScheduler(bundle)
    cache = TokenizerCache(fake, executor, recheck_s=0)
    first = await cache.get(MODEL)

    async def down():
        raise SchedulerError("UNAVAILABLE", "connection refused")

    fake.list_models = down
    assert await cache.get(MODEL) is first


async def test_bundle_with_path_traversal_is_refused(bundle, executor):
    fake = FakeScheduler(dataclasses.replace(bundle, files={**bundle.files, "../evil.json": b"{}"}))
    cache = TokenizerCache(fake, executor)
    with pytest.raises(OpenAIError) as caught:
        await cache.get(MODEL)
    assert caught.value.status == 503 and "unsafe file names" in caught.value.message
