"""Turns a validated request and its tokenized prompts into upstream GenerateRequests.

Each prompt x n becomes one GenerateRequest with id f"{request_id}-{index}", where
index = prompt_index * n + i is also the choice index the client sees. With a seed, choice i of a
prompt samples with seed + i, so the n choices differ yet the whole response is reproducible.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from gateway.choice_decoder import ChoiceDecoder
from gateway.errors import invalid_request
from gateway.model_tokenizer import ModelTokenizer
from gateway.protocol import DEFAULT_TEMPERATURE, INT64_MIN, SamplingFields
from services.types import GenerateRequest, SamplingParams

_UINT64 = 2**64


@dataclass
class GenerationPlan:
    request_id: str
    model: str
    created: int
    n: int
    prompt_lengths: list[int]
    requests: list[GenerateRequest]
    decoders: list[ChoiceDecoder]


def effective_max_tokens(requested: int | None, prompt_len: int, max_model_len: int,
                         prompt_param: str, max_tokens_param: str) -> int:
    """max_tokens after the context check: the request's own, or all the room the prompt leaves."""
    if requested is None:
        if prompt_len >= max_model_len:
            raise invalid_request(
                f"This model's maximum context length is {max_model_len} tokens, but the {prompt_param} "
                f"has {prompt_len} tokens, which leaves no room for the completion.",
                param=prompt_param, code="context_length_exceeded")
        return max_model_len - prompt_len
    if prompt_len + requested > max_model_len:
        raise invalid_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the {prompt_param}, {requested} in the "
            f"completion). Please reduce the length of the {prompt_param} or {max_tokens_param}.",
            param=max_tokens_param, code="context_length_exceeded")
    return requested


def _choice_seed(seed: int | None, offset: int) -> int | None:
    if seed is None:
        return None
    return (seed + offset - INT64_MIN) % _UINT64 + INT64_MIN


def sampling_params(req: SamplingFields, max_tokens: int, seed_offset: int,
                    max_tokens_param: str) -> SamplingParams:
    min_tokens = req.min_tokens or 0
    if min_tokens > max_tokens:
        raise invalid_request(f"min_tokens ({min_tokens}) must not exceed {max_tokens_param} ({max_tokens})",
                              param="min_tokens")
    return SamplingParams(
        temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=max(0, req.top_k or 0),
        min_p=req.min_p or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        seed=_choice_seed(req.seed, seed_offset),
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        stop_token_ids=list(req.stop_token_ids or []),
        ignore_eos=bool(req.ignore_eos),
        logprobs=req.logprobs_k(),
        logit_bias=req.logit_bias_by_id,
    )


def plan_generation(req: SamplingFields, prompts: list[list[int]], tokenizer: ModelTokenizer,
                    id_prefix: str, prompt_param: str, max_tokens_param: str) -> GenerationPlan:
    for param, token_ids in (("stop_token_ids", req.stop_token_ids or []), ("logit_bias", req.logit_bias_by_id)):
        outside = [t for t in token_ids if t >= tokenizer.vocab_size]
        if outside:
            raise invalid_request(f"{param}: {outside[0]} is outside the vocabulary "
                                  f"(size {tokenizer.vocab_size})", param=param)
    n = req.n or 1
    request_id = f"{id_prefix}-{uuid.uuid4().hex}"
    requests: list[GenerateRequest] = []
    decoders: list[ChoiceDecoder] = []
    for prompt_index, prompt in enumerate(prompts):
        max_tokens = effective_max_tokens(req.requested_max_tokens(), len(prompt),
                                          tokenizer.max_model_len, prompt_param, max_tokens_param)
        for i in range(n):
            index = prompt_index * n + i
            requests.append(GenerateRequest(
                request_id=f"{request_id}-{index}", model=req.model, prompt_token_ids=prompt,
                sampling=sampling_params(req, max_tokens, i, max_tokens_param),
                priority=req.priority or 0, cache_salt=req.cache_salt or ""))
            decoders.append(ChoiceDecoder(index, tokenizer, prompt, req.stop_strings,
                                          with_logprobs=req.logprobs_k() >= 0))
    return GenerationPlan(request_id, req.model, int(time.time()), n, [len(p) for p in prompts],
                          requests, decoders)
