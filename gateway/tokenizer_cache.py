"""Keeps one loaded tokenizer per served model, fetched from the scheduler on demand.

Invariants: at most one fetch-and-load runs per model at a time (concurrent requests share it);
an entry older than `recheck_s` is re-validated against ListModels, and re-fetched only when the
model's listing (created, max_model_len) changed; a fetched bundle whose revision equals the
cached one reuses the loaded tokenizer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass

from gateway.errors import OpenAIError, model_not_found, unavailable
from gateway.model_tokenizer import ModelTokenizer, warm_up_backend
from gateway.scheduler_client import SchedulerApi, SchedulerError

log = logging.getLogger(__name__)
RECHECK_S = 30.0


@dataclass
class _Entry:
    tokenizer: ModelTokenizer
    listing: tuple[int, int] | None  # (created, max_model_len) from ListModels when fetched
    checked_at: float


def scheduler_failure(error: SchedulerError, model: str) -> OpenAIError:
    if error.code == "NOT_FOUND":
        return model_not_found(model)
    return unavailable(f"cannot get the tokenizer of model `{model}`: {error.message}")


class TokenizerCache:
    def __init__(self, client: SchedulerApi, executor: Executor, recheck_s: float = RECHECK_S):
        self._client = client
        self._executor = executor
        self._recheck_s = recheck_s
        self._entries: dict[str, _Entry] = {}
        self._loading: dict[str, asyncio.Task[ModelTokenizer]] = {}

    async def get(self, model: str) -> ModelTokenizer:
        """The model's tokenizer; raises OpenAIError 404 for an unknown model, 503 when the
        scheduler cannot be asked."""
        entry = self._entries.get(model)
        if entry and time.monotonic() - entry.checked_at < self._recheck_s:
            return entry.tokenizer
        task = self._loading.get(model)
        if task is None:
            task = asyncio.create_task(self._refresh(model, entry))
            self._loading[model] = task
            task.add_done_callback(lambda done: self._forget(model, done))
        return await asyncio.shield(task)

    async def preload(self) -> None:
        """Warm the tokenizer library up and load the tokenizers of every model served now, so first
        requests skip that wait. A failed warm-up only costs the first request its time."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, warm_up_backend)
        except Exception:
            log.warning("tokenizer warm-up failed; the first request will load the library", exc_info=True)
        try:
            models = await self._client.list_models()
        except SchedulerError as e:
            log.info("no tokenizers preloaded: %s", e.message)
            return
        for model in models:
            try:
                await self.get(model.name)
            except OpenAIError as e:
                log.info("tokenizer of %s not preloaded: %s", model.name, e.message)

    def _forget(self, model: str, task: asyncio.Task[ModelTokenizer]) -> None:
        self._loading.pop(model, None)
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have been cancelled meanwhile

    async def _listing(self, model: str) -> tuple[int, int] | None:
        models = await self._client.list_models()
        return next(((m.created, m.max_model_len) for m in models if m.name == model), None)

    async def _refresh(self, model: str, entry: _Entry | None) -> ModelTokenizer:
        if entry is not None:
            try:
                listing = await self._listing(model)
            except SchedulerError:
                return entry.tokenizer  # keep serving; the request itself will report what is wrong
            if listing is not None and listing == entry.listing:
                entry.checked_at = time.monotonic()
                return entry.tokenizer
        try:
            bundle, listing = await asyncio.gather(self._client.get_tokenizer(model), self._listing(model))
        except SchedulerError as e:
            if e.code == "NOT_FOUND":
                self._entries.pop(model, None)
            raise scheduler_failure(e, model) from None
        if entry is not None and entry.tokenizer.revision == bundle.revision and bundle.revision:
            tokenizer = entry.tokenizer
        else:
            try:
                tokenizer = await asyncio.get_running_loop().run_in_executor(
                    self._executor, ModelTokenizer, bundle)
            except Exception as e:  # a bundle we cannot load is the serving side's fault
                log.exception("loading the tokenizer of %s failed", model)
                raise unavailable(f"the tokenizer of model `{model}` could not be loaded: {e}") from None
        self._entries[model] = _Entry(tokenizer, listing, time.monotonic())
        return tokenizer
