"""How to ask one OpenAI-compatible server for a completion of exactly `max_tokens` tokens.

Servers differ in how they take a prompt and how they are told to ignore end-of-sequence:
- Ferrum (vLLM extras): the prompt as token ids, `ignore_eos` and `min_tokens = max_tokens`.
- `transformers serve`: the prompt as text only; its `generation_config` field (a JSON string,
  replacing the model's generation config for that request) carries `eos_token_id = -1`, an id no
  model can emit, which its continuous-batching manager takes as "no end-of-sequence".
Both are asked for `stream_options.include_usage` (transformers serve sends usage regardless).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from tokenizers import Tokenizer

from tests.bench.prompt_tokens import prompt_text
from tests.bench.workloads import BenchRequest

Dialect = Literal["ferrum", "transformers-serve"]


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # ends in /v1
    model: str
    dialect: Dialect
    tokenizer: Tokenizer

    @property
    def completions_url(self) -> str:
        return self.base_url.rstrip("/") + "/completions"

    def body(self, request: BenchRequest) -> dict:
        n = request.max_tokens
        common = {"model": self.model, "max_tokens": n, "temperature": 0.0, "stream": True,
                  "stream_options": {"include_usage": True}}
        if self.dialect == "ferrum":
            return {**common, "prompt": list(request.prompt_ids), "ignore_eos": True, "min_tokens": n}
        generation_config = {"max_new_tokens": n, "do_sample": False, "eos_token_id": -1}
        return {**common, "prompt": prompt_text(self.tokenizer, request.prompt_ids),
                "generation_config": json.dumps(generation_config)}
