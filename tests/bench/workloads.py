"""Workloads: pure, seeded functions from parameters to the requests a benchmark sends.

Prompts are token-id lists drawn from a pool of tokens that survive a decode/encode round trip
(see prompt_tokens.py), so a prompt has exactly the length asked for whether a server receives
the ids or their text. Invariants: the same arguments give the same workload on every machine
(only `random.Random(seed)` is used); requests inside a Session are sent one after another, the
next only after the previous one finished; Sessions are independent of each other.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

WORKLOAD_NAMES = ("random", "shared-prefix", "multi-turn")


@dataclass(frozen=True)
class LengthRange:
    """An inclusive range of token counts; `low == high` for a fixed length."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"length range needs 1 <= low <= high, got {self.low}-{self.high}")

    @classmethod
    def parse(cls, text: str) -> LengthRange:
        """"256" or "32-1024"."""
        low, _, high = text.partition("-")
        return cls(int(low), int(high or low))

    def draw(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True)
class BenchRequest:
    """One completion request; `reusable_prefix` is how many leading prompt tokens an ideal
    prefix cache would already hold when this request arrives (for the ideal cached share)."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    reusable_prefix: int = 0


@dataclass(frozen=True)
class Session:
    """Requests sent in order, each after the previous one finished (the turns of a conversation)."""

    requests: tuple[BenchRequest, ...]


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    sessions: tuple[Session, ...]

    @property
    def requests(self) -> list[BenchRequest]:
        return [request for session in self.sessions for request in session.requests]

    @property
    def ideal_cached_share(self) -> float:
        """The share of prompt tokens a perfect cluster-wide prefix cache would not recompute."""
        requests = self.requests
        total = sum(len(r.prompt_ids) for r in requests)
        return sum(r.reusable_prefix for r in requests) / total if total else 0.0


def _tokens(rng: random.Random, pool: Sequence[int], count: int) -> tuple[int, ...]:
    return tuple(rng.choice(pool) for _ in range(count))


def random_workload(*, num_requests: int, input_len: LengthRange, output_len: LengthRange,
                    pool: Sequence[int], seed: int) -> Workload:
    """Independent requests with lengths drawn uniformly from the ranges; nothing shared."""
    rng = random.Random(seed)
    sessions = []
    for _ in range(num_requests):
        prompt = _tokens(rng, pool, input_len.draw(rng))
        sessions.append(Session((BenchRequest(prompt, output_len.draw(rng)),)))
    return Workload("random", f"random in={input_len} out={output_len} n={num_requests}", tuple(sessions))


def shared_prefix_workload(*, num_requests: int, groups: int, prefix_len: int, suffix_len: int,
                           output_len: LengthRange, pool: Sequence[int], seed: int) -> Workload:
    """`groups` distinct prefixes of `prefix_len` tokens; request i belongs to group i % groups and
    is that prefix plus its own `suffix_len` random tokens; the order is shuffled. The first
    request of each group (in sending order) has nothing reusable, every later one its prefix."""
    if groups < 1:
        raise ValueError("shared-prefix needs at least one group")
    rng = random.Random(seed)
    prefixes = [_tokens(rng, pool, prefix_len) for _ in range(groups)]
    members = [(i % groups, _tokens(rng, pool, suffix_len), output_len.draw(rng)) for i in range(num_requests)]
    rng.shuffle(members)
    seen: set[int] = set()
    sessions = []
    for group, suffix, max_tokens in members:
        reusable = prefix_len if group in seen else 0
        seen.add(group)
        sessions.append(Session((BenchRequest(prefixes[group] + suffix, max_tokens, reusable),)))
    description = (f"shared-prefix groups={groups} prefix={prefix_len} suffix={suffix_len} "
                   f"out={output_len} n={num_requests}")
    return Workload("shared-prefix", description, tuple(sessions))


def multi_turn_workload(*, num_requests: int, turns: int, first_len: LengthRange, user_len: LengthRange,
                        reply_len: int, output_len: LengthRange, pool: Sequence[int],
                        seed: int) -> Workload:
    """Conversations of `turns` requests: turn 0 is `first_len` tokens; turn k's prompt is turn k-1's
    prompt, a scripted assistant reply of `reply_len` tokens and a new user message. The reply is
    part of the workload rather than the model's output, so every system sees the same prompts;
    what a cache can reuse at turn k is turn k-1's whole prompt. ceil(num_requests / turns)
    conversations; the last may be cut short so that exactly num_requests requests exist."""
    if turns < 1:
        raise ValueError("multi-turn needs at least one turn")
    rng = random.Random(seed)
    sessions = []
    remaining = num_requests
    for _ in range(math.ceil(num_requests / turns)):
        prompt: tuple[int, ...] = ()
        requests = []
        for turn in range(min(turns, remaining)):
            reusable = len(prompt)
            if turn == 0:
                prompt = _tokens(rng, pool, first_len.draw(rng))
            else:
                prompt = prompt + _tokens(rng, pool, reply_len) + _tokens(rng, pool, user_len.draw(rng))
            requests.append(BenchRequest(prompt, output_len.draw(rng), reusable))
        remaining -= len(requests)
        sessions.append(Session(tuple(requests)))
    description = (f"multi-turn turns={turns} first={first_len} user={user_len} reply={reply_len} "
                   f"out={output_len} n={num_requests}")
    return Workload("multi-turn", description, tuple(sessions))
