"""One request's state inside the engine.

Invariants:
- `token_ids` = prompt + resumed tokens + tokens generated here, in order; `output_token_ids` is
  its tail after the prompt (resumed + generated), the list penalties and max_tokens count;
- `num_computed_tokens` tokens have their K/V in the blocks of `block_table`, which always has
  room for them; a sequence that is not running holds no blocks;
- `block_hashes[i]` is the chained hash of full block i of `token_ids` (extended lazily), and
  `content_keys[i]` the prefix cache's identity for the content of block i of `block_table`
  (None when that content could not be cached; then none after it can be either).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.block_hash import BlockHash, block_hashes
from services.types import GenerateRequest
from worker.engine.block_pool import ParentKey
from worker.sampling import SamplingRow


@dataclass(eq=False)
class Sequence:
    request: GenerateRequest
    hash_root: BlockHash
    sampling_row: SamplingRow
    token_ids: list[int]
    output_token_ids: list[int]
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[BlockHash] = field(default_factory=list)
    content_keys: list[ParentKey | None] = field(default_factory=list)
    num_cached_tokens: int = 0  # prefix-cache hit at first admission, as reported in usage
    admitted: bool = False  # admitted at least once (later admissions are recomputes)

    @classmethod
    def from_request(cls, request: GenerateRequest, hash_root: BlockHash, generator) -> Sequence:
        output = list(request.resume_token_ids)
        row = SamplingRow(request.sampling, request.prompt_token_ids, output, generator)
        return cls(request, hash_root, row, request.prompt_token_ids + output, output)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.output_token_ids.append(token_id)

    def full_block_hashes(self, block_size: int) -> list[BlockHash]:
        """Hashes of every full block of `token_ids` (computing only the ones not known yet)."""
        known = len(self.block_hashes)
        if known < len(self.token_ids) // block_size:
            parent = self.block_hashes[-1] if known else self.hash_root
            self.block_hashes += block_hashes(self.token_ids[known * block_size:], block_size, parent)
        return self.block_hashes

    def release_blocks(self) -> list[int]:
        """Forget the computed state (for preemption or the end); returns the blocks to free."""
        blocks, self.block_table = self.block_table, []
        self.num_computed_tokens = 0
        self.content_keys = []
        return blocks
