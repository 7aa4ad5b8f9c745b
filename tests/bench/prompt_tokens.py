"""Prompt tokens whose text encodes back to exactly the same ids.

Ferrum takes prompts as token ids; `transformers serve` only as text. A benchmark is fair only if
both see the same tokens, so prompts are built from whole-word tokens (" word": one space and
ASCII letters) that each encode to themselves: byte-level BPE pre-tokenizers split text at exactly
those word boundaries, so any concatenation of such tokens decodes to a text that encodes back to
the same id list, with no special tokens added.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenizers import Tokenizer

_WORD = re.compile(r" [A-Za-z]+")
MIN_POOL = 64


def load_tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def round_trip_pool(tokenizer: Tokenizer) -> list[int]:
    """The ids of single-word tokens that encode back to themselves, in id order."""
    ids = list(range(tokenizer.get_vocab_size()))
    texts = tokenizer.decode_batch([[i] for i in ids], skip_special_tokens=False)
    candidates = [(i, text) for i, text in zip(ids, texts) if _WORD.fullmatch(text)]
    encoded = tokenizer.encode_batch([text for _, text in candidates], add_special_tokens=False)
    pool = [i for (i, _), enc in zip(candidates, encoded) if enc.ids == [i]]
    if len(pool) < MIN_POOL:
        raise ValueError(f"only {len(pool)} whole-word tokens round-trip; this tokenizer cannot make "
                         "exact-length text prompts")
    return pool


def prompt_text(tokenizer: Tokenizer, ids: tuple[int, ...] | list[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False)
