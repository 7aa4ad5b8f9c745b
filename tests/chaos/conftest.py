"""Chaos tests start their own clusters (real processes, real Redis) and break them on purpose."""

from __future__ import annotations

import openai

from services.local_cluster import LocalCluster, WorkerSpec

MODEL = "tiny-llama"


def make_cluster(model_dir, workers: int = 2, env: dict[str, str] | None = None,
                 worker_env: dict[str, str] | None = None, redis: bool = True) -> LocalCluster:
    specs = [WorkerSpec(str(model_dir), model_name=MODEL,
                        env={"FERRUM_INFER_DTYPE": "float32", **(worker_env or {})}) for _ in range(workers)]
    return LocalCluster(specs, redis=redis, env=env)


def client_for(cluster: LocalCluster, timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.base_url, api_key="unused", max_retries=0, timeout=timeout)


def uninterrupted(client: openai.OpenAI, prompt: str, max_tokens: int) -> str:
    """The greedy text of an undisturbed run through the cluster (EOS ignored): what a disturbed
    run must reproduce exactly."""
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
