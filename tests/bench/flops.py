"""Floating-point work of a decoder-only transformer (Llama/Qwen2 layout), counted from its config.

Counted: every linear layer (2 FLOPs per multiply-add) and attention's two matmuls (scores and
weighted values: 4 x context x heads x head_dim per token per layer). Not counted: norms,
activations, rotary embeddings, softmax, sampling (small and not matmul-bound). The lm_head runs
only for positions whose logits are used: the last prompt position and each decoded one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from tests.bench.workloads import BenchRequest


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        heads = config["num_attention_heads"]
        hidden = config["hidden_size"]
        return cls(
            hidden=hidden,
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
        )

    def layer_linears(self) -> list[tuple[int, int]]:
        """(in_features, out_features) of q, k, v, o, gate, up, down."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [(self.hidden, q), (self.hidden, kv), (self.hidden, kv), (q, self.hidden),
                (self.hidden, self.intermediate), (self.hidden, self.intermediate),
                (self.intermediate, self.hidden)]

    def shared_layer_linears(self) -> list[tuple[int, int]]:
        """The same products with q|k|v and gate|up each as one wider matmul, as our engine runs
        them (worker/engine/fused_projections.py): the same FLOPs, a different layout."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [(self.hidden, q + 2 * kv), (q, self.hidden), (self.hidden, 2 * self.intermediate),
                (self.intermediate, self.hidden)]

    @property
    def linear_flops_per_token(self) -> int:
        """All layers' linears for one token, lm_head excluded."""
        return 2 * self.layers * sum(i * o for i, o in self.layer_linears())

    @property
    def lm_head_flops(self) -> int:
        return 2 * self.hidden * self.vocab

    def attention_flops(self, context: int) -> int:
        """One token attending to `context` positions (itself included), all layers."""
        return 4 * context * self.heads * self.head_dim * self.layers

    @property
    def parameters(self) -> int:
        """Linear weights of all layers plus lm_head (what each decode step streams from memory)."""
        return self.linear_flops_per_token // 2 + self.hidden * self.vocab


@dataclass(frozen=True)
class WorkloadFlops:
    prefill: int  # prompt positions not served from an ideal prefix cache
    decode: int  # every output token after the first
    output_tokens: int


def _positions_flops(shape: ModelShape, first: int, last: int) -> int:
    """Linear + attention FLOPs of positions first..last-1 (position p attends to p + 1 tokens)."""
    count = last - first
    if count <= 0:
        return 0
    attended = (first + 1 + last) * count // 2  # sum of p + 1 over the positions
    return count * shape.linear_flops_per_token + 4 * attended * shape.heads * shape.head_dim * shape.layers


def workload_flops(shape: ModelShape, requests: Iterable[BenchRequest]) -> WorkloadFlops:
    """What an ideal engine computes: each prompt from its reusable prefix on (that part is
    already cached), its first output token from the prompt's last position, and then one
    position per further output token."""
    prefill = decode = outputs = 0
    for request in requests:
        prompt = len(request.prompt_ids)
        cached = min(request.reusable_prefix, prompt - 1)
        prefill += _positions_flops(shape, cached, prompt) + shape.lm_head_flops
        later = request.max_tokens - 1
        decode += _positions_flops(shape, prompt, prompt + later) + later * shape.lm_head_flops
        outputs += request.max_tokens
    return WorkloadFlops(prefill, decode, outputs)
