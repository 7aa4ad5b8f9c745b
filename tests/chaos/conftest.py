"""Chaos tests start their own clusters (real processes, real Redis) and break them on purpose."""

from __future__ import annotations

import openai
import pytest

from services.local_cluster import LocalCluster, WorkerSpec

MODEL = "tiny-llama"


def make_cluster(model_dir, workers: int = 2, env: dict[str, str] | None = None,
                 worker_env: dict[str, str] | None = None, redis: bool = True) -> LocalCluster:
    specs = [WorkerSpec(str(model_dir), model_name=MODEL,
                        env={"FERRUM_INFER_DTYPE": "float32", **(worker_env or {})}) for _ in range(workers)]
    return LocalCluster(specs, redis=redis, env=env)


def client_for(cluster: LocalCluster, timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.base_url, api_key="unused", max_retries=0, timeout=timeout)


@pytest.fixture
def greedy_reference(tiny_llama_dir):
    """Token-exact greedy text of transformers for (prompt, max_new_tokens), EOS ignored."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()

    def generate(prompt: str, max_new_tokens: int) -> str:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    return generate
