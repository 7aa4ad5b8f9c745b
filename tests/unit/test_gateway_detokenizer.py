"""Incremental detokenization with the demo model's byte-level BPE and with a decoder whose text
for a suffix differs from its share of the whole (SentencePiece-style leading-space handling)."""

from __future__ import annotations

import pytest

from gateway.detokenizer import IncrementalDetokenizer
from tests.unit.test_gateway_support import bundle, tokenizer  # noqa: F401  (fixtures)

TEXTS = [
    "plain ascii text, with punctuation!",
    "héllo wörld: naïve café",
    "emoji 😀🎉👍🏽 and family 👨‍👩‍👧",
    "日本語のテキストと中文",
    "mixed: ∑ x² ≤ ∞ — done",
]


def stream(detokenizer: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    deltas = [detokenizer.push(t) for t in ids]
    deltas.append(detokenizer.finish())
    return deltas


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_join_to_the_full_decode_and_never_split_a_character(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    prompt = tokenizer.encode("A prompt before the output:", add_special_tokens=False)
    deltas = stream(IncrementalDetokenizer(tokenizer.decode, prompt), ids)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)


def test_multibyte_character_split_over_tokens_is_held_until_complete(tokenizer):
    ids = tokenizer.encode("😀", add_special_tokens=False)
    assert len(ids) > 1, "the test needs an emoji that the tokenizer splits into byte tokens"
    deltas = stream(IncrementalDetokenizer(tokenizer.decode), ids)
    assert deltas[:-2] == [""] * (len(ids) - 1) and deltas[len(ids) - 1] == "😀"


def test_special_tokens_produce_no_text(tokenizer):
    eos = tokenizer.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = tokenizer.encode("done", add_special_tokens=False) + [eos]
    assert "".join(stream(IncrementalDetokenizer(tokenizer.decode), ids)) == "done"


def test_incomplete_character_at_the_end_is_flushed_by_finish(tokenizer):
    ids = tokenizer.encode("é", add_special_tokens=False)
    assert len(ids) == 2
    detokenizer = IncrementalDetokenizer(tokenizer.decode)
    assert detokenizer.push(ids[0]) == ""
    assert detokenizer.finish() == "\ufffd"


# A SentencePiece-like vocabulary: "▁" marks a word start, and decoding strips the leading space of
# whatever it is given, so decoding tokens one by one would lose every space between words.
VOCAB = {0: "▁Hello", 1: "▁world", 2: "s", 3: "▁again"}


def sentencepiece_decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids).replace("▁", " ").removeprefix(" ")


def test_window_decoding_keeps_spaces_a_per_token_decode_would_strip():
    deltas = stream(IncrementalDetokenizer(sentencepiece_decode, [0]), [1, 2, 3])
    assert "".join(deltas) == " worlds again"
    assert [sentencepiece_decode([t]) for t in [1, 2, 3]] == ["world", "s", "again"]
