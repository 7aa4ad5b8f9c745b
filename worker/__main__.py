"""`python -m worker`: load a model, then serve it to the scheduler over a worker session.

Configured by FERRUM_INFER_* variables (services.config.WorkerSettings) or the flags below. Several
workers on one machine need nothing but distinct FERRUM_INFER_METRICS_PORT values.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
import uuid

import torch

from services import event_loop
from services.config import WorkerSettings
from services.logging_setup import configure_logging
from services.ops_http import start_ops_server
from services.prefix_index import PrefixIndex, connect
from services.tracing import setup_tracing
from services.types import WorkerRegister
from worker.engine import create_engine
from worker.engine_api import UnsupportedModel
from worker.engine_config import EngineConfig
from worker.engine_loop import EngineLoop, load_engine
from worker.index_publisher import IndexPublisher
from worker.model_source import (check_tokenizer_loads, eos_token_ids, model_context_length, resolve_model_dir,
                                 tokenizer_bundle)
from worker.session import WorkerSession

log = logging.getLogger("worker")


def parse_settings(argv: list[str] | None = None) -> WorkerSettings:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--model-path", help="model directory or hub id (FERRUM_INFER_MODEL_PATH)")
    parser.add_argument("--model-name", help="served model name (default: the directory's name)")
    parser.add_argument("--scheduler-addr", help="scheduler host:port to dial")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: the checkpoint's, widened to float32 on a CPU without matmul "
                             "instructions for it (FERRUM_INFER_DTYPE)")
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--cache-size-mb", type=int)
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    return WorkerSettings(**{k: v for k, v in vars(args).items() if v is not None})


def engine_config(settings: WorkerSettings, max_model_len: int) -> EngineConfig:
    return EngineConfig(
        device=settings.device, dtype=settings.dtype, max_model_len=max_model_len,
        max_num_seqs=settings.max_num_seqs, max_num_batched_tokens=settings.max_num_batched_tokens,
        cache_enabled=settings.cache_enabled, cache_size_mb=settings.cache_size_mb,
        block_size=settings.block_size, eviction_policy=settings.eviction_policy,
        cpu_kernels=settings.cpu_kernels, packed_weights=settings.packed_weights,
        model_id=settings.served_model_name(),
    )


async def serve(settings: WorkerSettings) -> None:
    name = settings.served_model_name()
    worker_id = settings.worker_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    state = {"session": None}
    ops = await start_ops_server(
        "0.0.0.0", settings.metrics_port,
        ready=lambda: state["session"] is not None and state["session"].registered.is_set(),
        health=lambda: {"worker_id": worker_id, "model": name, "loaded": state["session"] is not None})

    model_dir = resolve_model_dir(settings.model_path)
    max_len = model_context_length(model_dir)
    if settings.max_sequence_length:
        max_len = min(max_len, settings.max_sequence_length)
    check_tokenizer_loads(tokenizer_bundle(model_dir, name, max_len))  # before minutes of loading
    started = time.monotonic()
    config = engine_config(settings, max_len)
    try:
        engine = await load_engine(lambda: create_engine(str(model_dir), config, eos_token_ids(model_dir)))
    except UnsupportedModel as error:
        raise SystemExit(f"cannot serve {settings.model_path}: {error}") from None
    log.info("model loaded", extra={"model": name, "seconds": round(time.monotonic() - started, 2),
                                    "capacity": vars(engine.capacity)})
    cap = engine.capacity
    epoch = time.time_ns()  # a new epoch per start: index entries of an earlier life never count
    register = WorkerRegister(
        worker_id=worker_id, model=name, epoch=epoch, max_running=cap.max_running,
        num_blocks=cap.num_blocks, block_size=cap.block_size, max_model_len=cap.max_model_len,
        tokenizer=tokenizer_bundle(model_dir, name, cap.max_model_len))
    session = WorkerSession(settings.scheduler_addr, register)
    publisher = None
    if settings.redis_url:
        index = PrefixIndex(connect(settings.redis_url), name)
        publisher = IndexPublisher(index, worker_id, epoch, engine.cached_block_hashes)
    session.engine_loop = EngineLoop(engine, session.post_outputs, session.post_stats,
                                     publisher.post if publisher else None)
    session.engine_loop.start()
    state["session"] = session

    tasks = [asyncio.create_task(session.run_forever())]
    if publisher:
        tasks.append(asyncio.create_task(publisher.run_forever()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(session.engine_loop, settings.drain_grace_s)
    for task in tasks:
        task.cancel()
    if publisher:
        await publisher.withdraw()
    session.engine_loop.stop()
    await ops.cleanup()


async def drain(engine_loop: EngineLoop, grace_s: float) -> None:
    """Take nothing new, let running requests finish for up to `grace_s`; whatever still runs is
    handed back when the session closes (the scheduler re-queues it with the tokens so far)."""
    log.info("worker draining", extra={"grace_s": grace_s})
    engine_loop.start_draining()
    deadline = time.monotonic() + grace_s
    while not engine_loop.idle and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    log.info("worker stopping", extra={"handed_back": not engine_loop.idle})


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    configure_logging(settings.log_level, "worker")
    setup_tracing("worker")
    torch.set_grad_enabled(False)
    event_loop.run(serve(settings))


if __name__ == "__main__":
    main()
