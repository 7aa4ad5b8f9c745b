"""SchedulerCore without gRPC: admission, dispatch by credit, relay, worker loss, cancellation."""

import asyncio

import pytest

from scheduler.core import AdmissionError, SchedulerCore
from scheduler.registry import END_SESSION, WorkerHandle
from services import codec
from services.types import (GenerateRequest, RequestOutput, SamplingParams, TokenizerBundle,
                            WorkerRegister)


def handle(worker_id: str, model: str = "m", max_running: int = 2, max_model_len: int = 64) -> WorkerHandle:
    bundle = TokenizerBundle(model, {"tokenizer.json": b"{}"}, max_model_len, [0], "rev1")
    info = WorkerRegister(worker_id, model, 1, max_running, num_blocks=8, block_size=4,
                          max_model_len=max_model_len, tokenizer=bundle)
    return WorkerHandle(info=info, outbox=asyncio.Queue())


def req(rid: str, prompt_len: int = 3, max_tokens: int = 4, model: str = "m") -> GenerateRequest:
    return GenerateRequest(rid, model, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens))


def sent(worker: WorkerHandle) -> list[tuple[str, object]]:
    out = []
    while not worker.outbox.empty():
        out.append(codec.decode_scheduler_msg(worker.outbox.get_nowait()))
    return out


async def test_unknown_model_and_oversized_requests_are_refused():
    core = SchedulerCore(max_queue=10, worker_wait_s=1)
    with pytest.raises(AdmissionError) as err:
        core.submit(req("a"))
    assert err.value.kind == "not_found"
    core.worker_joined(handle("w1"))
    with pytest.raises(AdmissionError, match="maximum context length is 64 tokens.*70 tokens") as err:
        core.submit(req("b", prompt_len=60, max_tokens=10))
    assert err.value.kind == "invalid"
    with pytest.raises(AdmissionError, match=r"more than a worker's whole cache holds \(8 blocks\)"):
        core.submit(req("c", prompt_len=30, max_tokens=10))


async def test_dispatch_respects_credit_and_spreads_load():
    core = SchedulerCore(max_queue=10, worker_wait_s=1)
    w1, w2 = handle("w1"), handle("w2")
    core.worker_joined(w1)
    core.worker_joined(w2)
    for i in range(5):
        core.submit(req(f"r{i}"))
    core.dispatch()
    assert len(w1.inflight) == 2 and len(w2.inflight) == 2
    assert len(core.queue) == 1
    core.worker_outputs("w1", [RequestOutput(next(iter(w1.inflight)), [7], finish_reason="length")])
    core.dispatch()
    assert len(core.queue) == 0 and len(w1.inflight) == 2


async def test_outputs_are_relayed_and_lost_worker_requeues_with_emitted_tokens():
    core = SchedulerCore(max_queue=10, worker_wait_s=1)
    w1 = handle("w1")
    core.worker_joined(w1)
    pending = core.submit(req("r"))
    core.dispatch()
    assert sent(w1) and pending.worker_id == "w1"
    core.worker_outputs("w1", [RequestOutput("r", [5, 6])])
    assert (await pending.outputs.get()).token_ids == [5, 6]

    core.worker_left("w1")
    w2 = handle("w2")
    core.worker_joined(w2)
    core.dispatch()
    (kind, requests), = sent(w2)
    assert kind == "assign" and requests[0].resume_token_ids == [5, 6]
    core.worker_outputs("w1", [RequestOutput("r", [99])])  # a stale output of the dead worker
    core.worker_outputs("w2", [RequestOutput("r", [8], finish_reason="length")])
    assert (await pending.outputs.get()).token_ids == [8]
    assert not core.is_pending("r")


async def test_cancel_aborts_on_the_worker_and_frees_credit():
    core = SchedulerCore(max_queue=10, worker_wait_s=1)
    w1 = handle("w1", max_running=1)
    core.worker_joined(w1)
    core.submit(req("a"))
    core.submit(req("b"))
    core.dispatch()
    sent(w1)
    core.cancel("a")
    assert sent(w1) == [("abort", "a")]
    core.dispatch()
    (kind, requests), = sent(w1)
    assert requests[0].request_id == "b"


async def test_request_for_a_model_without_workers_fails_after_the_wait():
    core = SchedulerCore(max_queue=10, worker_wait_s=0)
    core.worker_joined(handle("w1"))
    core.worker_left("w1")
    pending = core.submit(req("r"))
    core.expire_unserved()
    error = await pending.outputs.get()
    assert isinstance(error, AdmissionError) and error.kind == "unavailable"
    assert len(core.queue) == 0


async def test_young_scheduler_waits_for_a_model_to_register():
    core = SchedulerCore(max_queue=10, worker_wait_s=30)
    waiter = asyncio.create_task(core.wait_for_model("m"))
    await asyncio.sleep(0)
    assert not waiter.done()
    core.worker_joined(handle("w1"))
    await asyncio.wait_for(waiter, 1)
    assert core.submit(req("r")).request.request_id == "r"


async def test_old_scheduler_refuses_unknown_models_at_once():
    core = SchedulerCore(max_queue=10, worker_wait_s=0)
    await asyncio.wait_for(core.wait_for_model("m"), 1)
    with pytest.raises(AdmissionError):
        core.submit(req("r"))


async def test_draining_refuses_new_requests_and_closing_fails_the_rest_and_ends_sessions():
    core = SchedulerCore(max_queue=10, worker_wait_s=1)
    w1 = handle("w1", max_running=1)
    core.worker_joined(w1)
    running, queued = core.submit(req("running")), core.submit(req("queued"))
    core.dispatch()
    sent(w1)
    core.draining = True
    with pytest.raises(AdmissionError, match="shutting down") as err:
        core.submit(req("new"))
    assert err.value.kind == "unavailable"
    core.worker_outputs("w1", [RequestOutput("running", [5])])  # admitted work still flows
    assert (await running.outputs.get()).token_ids == [5]

    core.close()
    for pending in (running, queued):
        error = await pending.outputs.get()
        assert isinstance(error, AdmissionError) and error.kind == "unavailable"
    assert core.in_flight == 0 and len(core.queue) == 0 and not w1.inflight
    assert w1.outbox.get_nowait() is END_SESSION
