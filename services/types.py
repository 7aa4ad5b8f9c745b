"""Internal request/response types shared by all processes.

These dataclasses are what the code works with; `services.codec` is the only place that converts
them to and from protobuf messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"
FINISH_ERROR = "error"


@dataclass
class SamplingParams:
    """Per-request sampling. Defaults are greedy decoding with no penalties."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    min_tokens: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int = -1  # -1: none; k >= 0: chosen token's logprob plus k alternatives
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1


@dataclass
class GenerateRequest:
    request_id: str
    model: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0
    cache_salt: str = ""
    resume_token_ids: list[int] = field(default_factory=list)
    trace_context: dict[str, str] = field(default_factory=dict)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float


@dataclass
class PositionLogprobs:
    chosen: TokenLogprob
    top: list[TokenLogprob] = field(default_factory=list)


@dataclass
class RequestOutput:
    """One increment of a request's output; `finish_reason` is set only on the last one."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobs] = field(default_factory=list)
    finish_reason: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str = ""

    @property
    def finished(self) -> bool:
        return bool(self.finish_reason)


@dataclass
class RequestFailure:
    """A request the scheduler refused or dropped; `code` is a gRPC status name, e.g. "NOT_FOUND"."""

    request_id: str
    code: str
    message: str
    retry_after_s: int | None = None


@dataclass
class TokenizerBundle:
    model: str
    files: dict[str, bytes]
    max_model_len: int
    eos_token_ids: list[int] = field(default_factory=list)
    revision: str = ""


@dataclass
class ModelInfo:
    name: str
    max_model_len: int
    workers: int
    created: int


@dataclass
class WorkerStats:
    running: int = 0
    waiting: int = 0
    free_blocks: int = 0
    total_blocks: int = 0
    cached_blocks: int = 0
    kv_usage: float = 0.0
    prefix_hit_tokens: int = 0
    prompt_tokens: int = 0
    tokens_per_second: float = 0.0
    preemptions: int = 0
    draining: bool = False


@dataclass
class WorkerRegister:
    worker_id: str
    model: str
    epoch: int
    max_running: int
    num_blocks: int
    block_size: int
    max_model_len: int
    tokenizer: TokenizerBundle


@dataclass
class WorkerInfo:
    worker_id: str
    model: str
    epoch: int
    stats: WorkerStats


@dataclass
class ClusterStatus:
    workers: list[WorkerInfo]
    queued: int
    total_requests: int
    draining: bool = False  # the scheduler is shutting down: gateways report not ready
