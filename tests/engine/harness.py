"""Drives an engine step by step and computes the transformers oracle for greedy decoding."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

import torch
from transformers import AutoModelForCausalLM

from services.types import GenerateRequest, PositionLogprobs, SamplingParams
from worker.engine_api import Engine


@dataclass
class Finished:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobs] = field(default_factory=list)
    finish_reason: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    steps_with_output: list[int] = field(default_factory=list)


def request(request_id: str, prompt: Sequence[int], max_tokens: int, **sampling) -> GenerateRequest:
    params = SamplingParams(max_tokens=max_tokens, **sampling)
    return GenerateRequest(request_id, "test-model", list(prompt), params)


def drive(
    engine: Engine, arrivals: Mapping[int, Sequence[GenerateRequest]], max_steps: int = 5000
) -> dict[str, Finished]:
    """Add `arrivals[k]` just before step k; step until nothing is left; collect every output."""
    results: dict[str, Finished] = {}
    last_arrival = max(arrivals, default=0)
    for step in range(max_steps):
        for req in arrivals.get(step, ()):
            engine.add_request(req)
            results[req.request_id] = Finished()
        if step >= last_arrival and not engine.has_unfinished():
            return results
        for output in engine.step():
            result = results[output.request_id]
            assert not result.finish_reason, f"{output.request_id} got output after finishing"
            result.token_ids += output.token_ids
            result.logprobs += output.logprobs
            result.finish_reason = output.finish_reason
            result.prompt_tokens = output.prompt_tokens
            result.cached_tokens = output.cached_tokens
            result.steps_with_output.append(step)
    raise AssertionError(f"engine still busy after {max_steps} steps")


@cache
def _reference_model(model_dir: str) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@cache
def _greedy(model_dir: str, prompt: tuple[int, ...], max_new_tokens: int, stop_at_eos: bool) -> tuple[int, ...]:
    model = _reference_model(model_dir)
    eos = {} if stop_at_eos else {"eos_token_id": None}
    with torch.inference_mode():
        generated = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new_tokens,
                                   attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **eos)
    return tuple(generated[0, len(prompt):].tolist())


def greedy_reference(model_dir, prompt: Sequence[int], max_new_tokens: int, stop_at_eos: bool = True) -> list[int]:
    """transformers' `generate(do_sample=False)` for `prompt` alone; with `stop_at_eos` it ends
    after the model's EOS like the engine does, without it it runs all `max_new_tokens`."""
    return list(_greedy(str(model_dir), tuple(prompt), max_new_tokens, stop_at_eos))


def other_threads_ran_during(call: Callable[[], object], repeat_for_s: float = 0.5) -> bool:
    """Whether the main thread got to run Python while `call` ran on another thread.

    With the switch interval far longer than any test, a thread holding the GIL is never made to
    give it up. The other thread repeats `call` until the main thread has run (or `repeat_for_s`
    has passed), holding the GIL between calls, so the main thread, waiting to be woken, can run
    before the repeating ends only inside a call that released the GIL (as torch's operations do).
    Repeating makes the answer independent of how soon the OS wakes the main thread: one short
    call (a tiny model's layer) may end before it is awake."""
    started, main_ran, finished = threading.Event(), threading.Event(), threading.Event()

    def run() -> None:
        started.set()
        deadline = time.monotonic() + repeat_for_s
        while not main_ran.is_set() and time.monotonic() < deadline:
            call()
        finished.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        started.wait()
        if not finished.is_set():
            main_ran.set()
        thread.join()
    finally:
        sys.setswitchinterval(interval)
    return main_ran.is_set()
