import pytest

from scheduler.request_queue import QueueFull, RequestQueue
from scheduler.routing import least_loaded
from services.types import GenerateRequest


def req(rid: str, model: str = "m", priority: int = 0) -> GenerateRequest:
    return GenerateRequest(rid, model, [1, 2, 3], priority=priority)


def test_pops_by_priority_then_arrival():
    q = RequestQueue(10)
    q.push(req("late-urgent", priority=-1), arrival=5)
    q.push(req("first"), arrival=1)
    q.push(req("second"), arrival=2)
    assert [q.pop("m").request_id for _ in range(3)] == ["late-urgent", "first", "second"]
    assert q.pop("m") is None


def test_requeued_request_keeps_its_place():
    q = RequestQueue(10)
    q.push(req("b"), arrival=2)
    q.push(req("a"), arrival=1)  # handed back by a lost worker with its original arrival number
    assert q.pop("m").request_id == "a"


def test_bound_refuses_new_but_not_forced_requeues():
    q = RequestQueue(2)
    q.push(req("a"), 1)
    q.push(req("b"), 2)
    with pytest.raises(QueueFull, match="2 requests"):
        q.push(req("c"), 3)
    q.push(req("requeued"), 0, force=True)
    assert len(q) == 3


def test_remove_is_lazy_and_models_are_separate():
    q = RequestQueue(10)
    q.push(req("a"), 1)
    q.push(req("b"), 2)
    q.push(req("x", model="other"), 3)
    assert q.remove("a").request_id == "a"
    assert len(q) == 2 and q.depth("m") == 1
    assert q.peek("m").request_id == "b"
    assert q.pop("other").request_id == "x"
    assert q.pop("m").request_id == "b"


class W:
    def __init__(self, worker_id, credit, load):
        self.worker_id, self.credit, self.load = worker_id, credit, load


def test_least_loaded_skips_full_workers_and_breaks_ties_by_id():
    assert least_loaded([W("a", 0, 0.0), W("b", 3, 0.5), W("c", 1, 0.2)]).worker_id == "c"
    assert least_loaded([W("b", 1, 0.5), W("a", 1, 0.5)]).worker_id == "a"
    assert least_loaded([W("a", 0, 0.0)]) is None


def test_per_model_bound_leaves_other_models_room():
    q = RequestQueue(10, max_per_model=1)
    q.push(req("a"), 1)
    with pytest.raises(QueueFull, match="model `m`"):
        q.push(req("b"), 2)
    q.push(req("x", model="other"), 3)
    q.pop("m")
    q.push(req("b"), 4)
    assert q.depth("m") == 1 and q.depth("other") == 1
