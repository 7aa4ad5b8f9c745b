"""What a benchmark observes about one request, whichever system served it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    """Times are seconds on one monotonic clock (time.perf_counter) of the observing process.

    `token_times` are the arrival times of the stream chunks that carried output (one chunk may
    carry several tokens); the first of them is the first token. `cached_tokens` is None when the
    server does not report it. A request with `error` set counts as failed and adds no tokens; one
    `cut` was still running when its run hit the hard time limit and counts as neither.
    """

    start: float
    end: float = 0.0
    token_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int | None = None
    error: str = ""
    cut: bool = False

    @property
    def ok(self) -> bool:
        return not self.error and not self.cut

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.start if self.token_times else None

    @property
    def inter_token_gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]
