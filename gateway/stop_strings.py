"""Stop-string matching over a stream of text deltas.

Invariants: text is released only once no stop string can start inside it; the held-back suffix is
the shortest one that still could (the longest suffix that is a proper prefix of some stop
string); on a match the output ends exactly before the earliest stop string and none of its text
is ever released.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    def __init__(self, stop_strings: Sequence[str]):
        self._stops = [s for s in stop_strings if s]
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Add a delta; return the text that is now safe to emit. After a match, `matched` is set
        and every later call returns ''."""
        if self.matched is not None:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        cut, stop = self._earliest_match(buffer)
        if stop is not None:
            self.matched = stop
            self._held = ""
            return buffer[:cut]
        keep = self._hold_length(buffer)
        self._held = buffer[len(buffer) - keep:]
        return buffer[:len(buffer) - keep]

    def flush(self) -> str:
        """The stream ended without a match: release what was held back."""
        held, self._held = self._held, ""
        return held

    def _earliest_match(self, buffer: str) -> tuple[int, str | None]:
        best, best_stop = len(buffer), None
        for stop in self._stops:
            at = buffer.find(stop, 0, best + len(stop) - 1)
            if at != -1 and at < best:
                best, best_stop = at, stop
        return best, best_stop

    def _hold_length(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            start = max(0, len(buffer) - len(stop) + 1)
            at = buffer.find(stop[0], start)
            while at != -1:
                if len(buffer) - at <= longest:
                    break
                if stop.startswith(buffer[at:]):
                    longest = len(buffer) - at
                    break
                at = buffer.find(stop[0], at + 1)
        return longest
