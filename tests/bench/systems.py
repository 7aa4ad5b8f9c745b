"""The systems under test and how to start the serving ones, each in processes of its own.

- ferrum: the whole cluster (redis, scheduler, N workers, gateway) through LocalCluster.
- peer: `transformers serve --continuous-batching`, the version pinned in pyproject.
- static: plain `model.generate` on static batches (static_baseline.py); it is no server.
- external: a server already running at a given base URL (`--url`), spoken to with vLLM's extras
  (token-id prompts, ignore_eos, min_tokens) like Ferrum; it must use the bench model's tokenizer.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from tokenizers import Tokenizer

from tests.bench.endpoint import Endpoint

SystemKind = Literal["ferrum", "peer", "static", "external"]
SYSTEM_KINDS: tuple[SystemKind, ...] = ("ferrum", "peer", "static")  # the ones `make bench` starts
DTYPE_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PEER_PAGE_SIZE = 256  # transformers' ContinuousBatchingConfig.page_size default
STARTUP_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class SystemVariant:
    """One configured system; `workers`, `routing` and `prefix_cache` only apply to ferrum, the KV
    cache budget (per worker) to both servers."""

    kind: SystemKind
    dtype: str
    workers: int = 1
    routing: str = "cache_aware"
    prefix_cache: bool = True
    kv_cache_mb: int = 1024
    url: str = ""  # external only: base URL ending in /v1
    served_model: str = ""  # external only: the model name to ask for

    @property
    def label(self) -> str:
        dtype = DTYPE_SHORT.get(self.dtype, self.dtype)
        if self.kind == "peer":
            return f"tf-serve-cb {dtype}"
        if self.kind == "static":
            return f"static-generate {dtype}"
        if self.kind == "external":
            return f"external {self.url}"
        cache = "" if self.prefix_cache else " no-prefix-cache"
        return f"ferrum {dtype} w{self.workers} {self.routing}{cache}"

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "._" else "-" for c in self.label)


@contextmanager
def ferrum(variant: SystemVariant, model_dir: Path, tokenizer: Tokenizer, log_dir: Path) -> Iterator[Endpoint]:
    from services.local_cluster import LocalCluster, WorkerSpec

    # LocalCluster gives each worker its share of the cores (OMP_NUM_THREADS).
    worker_env = {"FERRUM_INFER_DTYPE": variant.dtype,
                  "FERRUM_INFER_CACHE_SIZE_MB": str(variant.kv_cache_mb),
                  "FERRUM_INFER_CACHE_ENABLED": "true" if variant.prefix_cache else "false"}
    workers = [WorkerSpec(model_path=str(model_dir), env=dict(worker_env)) for _ in range(variant.workers)]
    cluster = LocalCluster(workers, redis=True, env={"FERRUM_INFER_ROUTING_POLICY": variant.routing},
                           log_dir=log_dir / variant.slug, startup_timeout_s=STARTUP_TIMEOUT_S)
    with cluster:
        yield Endpoint(cluster.base_url, cluster.model_names[0], "ferrum", tokenizer)


def peer_num_blocks(model_config: dict, dtype: str, kv_cache_mb: int, kv_tokens_needed: int) -> int:
    """`--cb-num-blocks` for transformers serve: room for the workload's peak KV need (plus a quarter),
    never more than the KV budget a Ferrum worker gets. A block holds PEER_PAGE_SIZE tokens of K and V
    for every layer. Sizing matters: by default serve takes 60% of free RAM and zero-fills it, and
    its per-step attention mask grows with the cache (it refuses to start when that exceeds RAM)."""
    heads = model_config["num_attention_heads"]
    head_dim = model_config.get("head_dim") or model_config["hidden_size"] // heads
    kv_heads = model_config.get("num_key_value_heads") or heads
    per_token = 2 * model_config["num_hidden_layers"] * kv_heads * head_dim * DTYPE_BYTES[dtype]
    budget_blocks = kv_cache_mb * 2**20 // (per_token * PEER_PAGE_SIZE)
    needed_blocks = math.ceil(kv_tokens_needed * 1.25 / PEER_PAGE_SIZE) + 1
    return max(1, min(budget_blocks, needed_blocks))


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def transformers_serve(variant: SystemVariant, model_dir: Path, tokenizer: Tokenizer, log_dir: Path,
                       kv_tokens_needed: int) -> Iterator[Endpoint]:
    """Serves `model_dir` pinned as the only model; its name is the directory path."""
    from services.local_cluster import free_port

    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{variant.slug}.log"
    model_config = json.loads((model_dir / "config.json").read_text())
    num_blocks = peer_num_blocks(model_config, variant.dtype, variant.kv_cache_mb, kv_tokens_needed)
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir),
               "--continuous-batching", "--cb-num-blocks", str(num_blocks),
               "--device", "cpu", "--dtype", variant.dtype,
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(f"http://127.0.0.1:{port}/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"transformers serve did not come up (log {log_path}):\n{tail}")
            time.sleep(0.2)
        yield Endpoint(f"http://127.0.0.1:{port}/v1", str(model_dir), "transformers-serve", tokenizer)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serve(variant: SystemVariant, model_dir: Path, tokenizer: Tokenizer, log_dir: Path, kv_tokens_needed: int):
    """A context manager yielding the Endpoint of a serving system (ferrum or peer).
    `kv_tokens_needed`: the most KV tokens the runs can hold at once (the peer is sized by it)."""
    if variant.kind == "ferrum":
        return ferrum(variant, model_dir, tokenizer, log_dir)
    if variant.kind == "peer":
        return transformers_serve(variant, model_dir, tokenizer, log_dir, kv_tokens_needed)
    if variant.kind == "external":
        return nullcontext(Endpoint(variant.url, variant.served_model, "ferrum", tokenizer))
    raise ValueError(f"{variant.kind} is not a server")
