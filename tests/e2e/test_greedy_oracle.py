"""Greedy output through the whole cluster equals transformers' own generate, token for token."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL = "tiny-llama"
PROMPTS = [
    "The",
    "In the beginning",
    "Permission is hereby granted, free of charge, to any person obtaining a copy",
    "def main():\n    return",
    "The quick brown fox jumps over the lazy dog and then",
    "Copyright",
    "This program is free software; you can redistribute it and/or modify it under the terms of the",
    "Hello, world! This is a longer prompt that keeps going for a while so that its length differs",
]


@pytest.fixture(scope="module")
def reference(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()

    def generate(prompt: str, max_new_tokens: int) -> str:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens,
                                 attention_mask=torch.ones_like(ids))
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    return generate


def test_one_request_equals_generate(client, reference):
    r = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=32, temperature=0)
    assert r.choices[0].text == reference(PROMPTS[2], 32)


async def test_eight_concurrent_requests_of_different_lengths_equal_generate(async_client, reference):
    lengths = [8, 40, 16, 64, 24, 32, 48, 12]

    async def one(prompt, n):
        r = await async_client.completions.create(model=MODEL, prompt=prompt, max_tokens=n, temperature=0)
        return r.choices[0].text

    texts = await asyncio.gather(*[one(p, n) for p, n in zip(PROMPTS, lengths)])
    expected = [reference(p, n) for p, n in zip(PROMPTS, lengths)]
    assert texts == expected
