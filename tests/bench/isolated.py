"""Run a torch-heavy measurement in a fresh process, so the load generator's process stays light and
every in-process reference (static generate, the bare engine, the matmul roofline) starts from the
same clean state and gives all its memory back when done.

Inside that process the function runs on a thread of its own, as the servers run their engines
(Ferrum's engine loop, transformers serve's generation thread), and it loads and computes on that
one thread: a second thread that had run parallel work would leave libgomp managing more threads
than there are CPUs, and it then stops spinning between parallel regions (Ferrum's decode steps
took a third longer that way; see worker/engine_loop.load_engine).
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable


def _on_a_thread(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    outcome: Future = Future()

    def run() -> None:
        try:
            outcome.set_result(fn(*args, **kwargs))
        except BaseException as error:  # handed to the caller, which re-raises it
            outcome.set_exception(error)

    thread = threading.Thread(target=run, name=f"bench-{fn.__name__}")
    thread.start()
    thread.join()
    return outcome.result()


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a spawned child; `fn` and its arguments must be picklable."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_on_a_thread, fn, args, kwargs).result()
