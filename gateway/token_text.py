"""A single token's own text and raw bytes, as OpenAI's logprobs report them.

A token may hold part of a UTF-8 character (byte-level BPE, SentencePiece byte fallback); its
`bytes` are then the exact partial bytes and its text shows them as `\\xNN` escapes, so distinct
partial tokens keep distinct strings.
"""

from __future__ import annotations

import re
from functools import lru_cache

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_METASPACE = "\u2581"


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable stand-in character -> byte."""
    byte_values = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                   + list(range(ord("®"), ord("ÿ") + 1)))
    chars = byte_values[:]
    extra = 0
    for b in range(256):
        if b not in byte_values:
            byte_values.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(byte_values, chars, strict=True)}


class TokenTexts:
    """Maps token ids to (text, bytes) for one tokenizer; results are memoised per id."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        self._added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        self._memo: dict[int, tuple[str, bytes]] = {}

    def of(self, token_id: int) -> tuple[str, bytes]:
        found = self._memo.get(token_id)
        if found is None:
            raw = self._bytes(token_id)
            found = (raw.decode("utf-8", errors="backslashreplace"), raw)
            self._memo[token_id] = found
        return found

    def _bytes(self, token_id: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if token_id in self._added:
            return piece.encode()
        if self._byte_level:
            table = _byte_level_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
            return piece.encode()
        fallback = _BYTE_FALLBACK.match(piece)
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        if _METASPACE in piece:
            return piece.replace(_METASPACE, " ").encode()
        return self._tokenizer.decode([token_id]).encode()
