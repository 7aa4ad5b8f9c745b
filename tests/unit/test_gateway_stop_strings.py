"""Stop strings: the output ends exactly before the earliest stop string, whatever the chunking."""

from __future__ import annotations

import pytest

from gateway.stop_strings import StopStringMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[list[str], str | None]:
    """Feed pieces; return what was released after each (plus the flush if no match) and the match."""
    matcher = StopStringMatcher(stops)
    released = [matcher.feed(p) for p in pieces]
    if matcher.matched is None:
        released.append(matcher.flush())
    return released, matcher.matched


def test_stop_string_split_across_pieces_is_cut_exactly():
    released, matched = run(["END"], ["Hello E", "N", "D and more"])
    assert "".join(released) == "Hello "
    assert matched == "END"


def test_text_after_a_match_is_never_released():
    matcher = StopStringMatcher(["\n\n"])
    assert matcher.feed("one\n\ntwo") == "one"
    assert matcher.feed("three") == ""
    assert matcher.flush() == ""


def test_earliest_of_several_stops_wins():
    released, matched = run(["world", "lo w"], ["hello world"])
    assert "".join(released) == "hel"
    assert matched == "lo w"


def test_overlapping_prefixes_hold_back_only_what_could_still_match():
    matcher = StopStringMatcher(["abcd", "bce"])
    # "ab" could start "abcd": hold both characters.
    assert matcher.feed("xab") == "x"
    # "abc" still starts "abcd", and "bc" starts "bce": hold "abc".
    assert matcher.feed("c") == ""
    # "abcx" rules out both, so everything is released.
    assert matcher.feed("x") == "abcx"


def test_partial_match_that_fails_is_released_unchanged():
    released, matched = run(["STOP"], ["ST", "OR", "Y"])
    assert matched is None
    assert "".join(released) == "STORY"
    assert released[0] == "" and released[1] == "STOR"


def test_release_is_immediate_when_no_stop_can_begin():
    matcher = StopStringMatcher(["###"])
    assert matcher.feed("plain text") == "plain text"


def test_stop_found_inside_one_piece_with_repeated_first_character():
    released, matched = run(["aab"], ["a", "a", "a", "b", "c"])
    assert "".join(released) == "a"
    assert matched == "aab"


@pytest.mark.parametrize("split", range(1, 12))
def test_any_chunking_gives_the_same_result(split):
    text = "the cat sat<|end|> on the mat"
    pieces = [text[i:i + split] for i in range(0, len(text), split)]
    released, matched = run(["<|end|>", "mat"], pieces)
    assert "".join(released) == "the cat sat"
    assert matched == "<|end|>"


def test_no_stop_strings_pass_everything_through():
    released, matched = run([], ["a", "b"])
    assert released == ["a", "b", ""] and matched is None
