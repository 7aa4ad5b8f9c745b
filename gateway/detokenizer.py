"""Incremental detokenization: token ids in, text deltas out (the vLLM/TGI window method).

Each step decodes a short window of already-emitted tokens plus the new ones and emits what the
longer decode adds; so tokenizers whose decode of a suffix differs from its share of the joined
text (leading spaces, merges) still produce the right text. Invariants: a delta never ends in an
incomplete UTF-8 character (U+FFFD) except the one `finish` returns; for tokenizers whose decode is
concatenative (byte-level BPE), the deltas joined equal decode(all output ids).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# Prompt tokens decoded ahead of the output, so the first output token is decoded in context.
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[list[int]], str], prompt_token_ids: Sequence[int] = ()):
        context = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self._decode = decode
        self._ids = context
        self._prefix_offset = 0  # start of the window decoded for context
        self._read_offset = len(context)  # tokens before this have been emitted as text

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def finish(self) -> str:
        """No more tokens: return any text still held back, even if it is incomplete."""
        if self._read_offset == len(self._ids):
            return ""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset:])
        if len(full_text) <= len(prefix_text):
            return ""
        if full_text.endswith(REPLACEMENT_CHAR) and not final:
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return full_text[len(prefix_text):]
