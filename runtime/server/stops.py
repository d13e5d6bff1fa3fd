"""A sample's answer text as it streams, cut at the request's stop strings.

Text is released as soon as it cannot be the start of a stop string: a piece ending in "###" is
held back while a stop "####" may still complete, so a streamed answer never shows text the
non-streamed one (cut at the stop) would not hold.
"""

from __future__ import annotations


class StopText:
    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self.stops = tuple(stops)
        self.text = ""  # everything generated so far (never past a stop)
        self.sent = 0  # characters of ``text`` released
        self.stopped = False  # a stop string was found; ``text`` ends before it

    def push(self, piece: str) -> str:
        """Adds ``piece``; returns the text now safe to release (possibly empty)."""
        if self.stopped or not piece:
            return ""
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0) + 1)
        self.text += piece
        cut = min((at for at in (self.text.find(stop, start) for stop in self.stops) if at >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held())

    def finish(self, piece: str = "") -> str:
        """The generation ended (EOS, token limit): releases what was held back, with ``piece``."""
        out = self.push(piece)
        return out + self._release(len(self.text))

    def _held(self) -> int:
        """Length of the longest end of ``text`` that begins a stop string (and may yet complete it)."""
        for length in range(min(len(self.text), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            tail = self.text[-length:]
            if any(stop.startswith(tail) for stop in self.stops):
                return length
        return 0

    def _release(self, upto: int) -> str:
        upto = max(upto, self.sent)
        out, self.sent = self.text[self.sent:upto], upto
        return out
