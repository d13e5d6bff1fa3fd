"""transprune.bench.soak_requests: an answer is judged against its reference, a streamed one by its
text (the whole run is tested through the script, in tests/scripts/test_soak.py)."""

from __future__ import annotations

from transprune.bench.soak_requests import Answer, mismatch


def test_mismatch():
    want = Answer([1, 2, 3], "a b c")
    assert mismatch(Answer([1, 2, 3], "a b c"), want) is None
    assert mismatch(Answer([1, 2, 4], "a b c"), want).startswith("tokens")
    assert mismatch(Answer(None, "a b c"), want) is None  # streamed: the text is all there is
    assert mismatch(Answer(None, "a b"), want).startswith("text")
