"""``StopText``: streamed text is cut at the first stop string, and what streams out always joins
to exactly the text the whole answer has (nothing past a stop is ever released)."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="the server needs the serve extra: pip install -e '.[serve]'")

from transprune.runtime.server.stops import StopText  # noqa: E402


def stream(pieces, stops):
    text = StopText(tuple(stops))
    out = [text.push(piece) for piece in pieces]
    if not text.stopped:
        out.append(text.finish())
    return out, text


@pytest.mark.parametrize("pieces, stops, whole, stopped", [
    (["Hello", " wor", "ld"], [], "Hello world", False),
    (["Hello", " wor", "ld"], ["wor"], "Hello ", True),
    (["a#", "#", "#b"], ["###"], "a", True),  # a stop split over three pieces
    (["a#", "#", "b"], ["###"], "a##b", False),  # held back, then released when it cannot complete
    (["The end.", " More"], ["\n", "."], "The end", True),  # the first stop in the text wins
    (["xxSTOPyySTOP"], ["STOP", "yy"], "xx", True),
    (["abc"], ["abcd"], "abc", False),  # a stop still incomplete at the end is plain text
])
def test_streamed_text_equals_the_whole_answer_cut_at_the_first_stop(pieces, stops, whole, stopped):
    out, text = stream(pieces, stops)
    assert "".join(out) == whole == text.text
    assert text.stopped is stopped


def test_text_that_may_begin_a_stop_is_held_back_until_it_cannot():
    text = StopText(("</s>",))
    assert text.push("Hi <") == "Hi "
    assert text.push("/") == ""
    assert text.push("p") == "</p"
    assert text.push("></s> tail") == ">"
    assert text.stopped and text.text == "Hi </p>"
    assert text.push("more") == "" and text.finish("more") == ""
