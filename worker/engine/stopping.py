"""When a sequence is done, checked after each token it gets."""

from __future__ import annotations

from collections.abc import Set

from services.types import FINISH_LENGTH, FINISH_STOP
from worker.engine.sequence import Sequence


def finish_reason(seq: Sequence, eos_token_ids: Set[int], max_model_len: int) -> str:
    """"stop" or "length" if `seq`'s last token ends it, else "".

    The stopping token itself is part of the output. EOS (unless ignore_eos) and stop_token_ids
    end a sequence only after min_tokens other outputs; resumed tokens count as outputs.
    """
    params = seq.request.sampling
    num_outputs = len(seq.output_token_ids)
    last = seq.token_ids[-1]
    if num_outputs > params.min_tokens:
        if last in params.stop_token_ids or (not params.ignore_eos and last in eos_token_ids):
            return FINISH_STOP
    if num_outputs >= params.max_tokens or len(seq.token_ids) >= max_model_len:
        return FINISH_LENGTH
    return ""
