"""Deltas that come within the window of each other travel as one event, and none waits past the window.

These tests are about the window itself, so they set their own: a long one where joining is the subject
(nothing can flush it early), a short one where the flusher is."""

import threading

import pytest

from sessions.runs.delta_window import DeltaWindow


class Recorder:
    def __init__(self, fail_after: int | None = None):
        self.sent: list[str] = []
        self.fail_after = fail_after
        self.arrived = threading.Event()

    def __call__(self, text: str) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("Redis went away")
        self.sent.append(text)
        self.arrived.set()


def test_the_first_delta_goes_at_once_and_the_next_ones_together():
    sent = Recorder()
    window = DeltaWindow(sent, window=3600)
    for text in ("Hel", "lo", ", ", "world"):
        window.add(text)
    assert sent.sent == ["Hel"], "the first delta is not held back"
    window.close()
    assert sent.sent == ["Hel", "lo, world"]
    window.close()
    assert sent.sent == ["Hel", "lo, world"], "nothing is sent twice"


def test_a_waiting_delta_goes_out_without_another_delta_or_close():
    sent = Recorder()
    window = DeltaWindow(sent, window=0.05)
    window.add("first")
    sent.arrived.clear()
    window.add(" second")
    assert sent.arrived.wait(10), "the flusher sent the waiting delta"
    assert sent.sent == ["first", " second"]


def test_a_window_due_after_another_s_is_flushed_without_waking_the_flusher_for_it():
    # The flusher is woken only for the window due first; one due later waits for that wake-up, and must go
    # out all the same, after the earlier one.
    early_sent, late_sent = Recorder(), Recorder()
    early, late = DeltaWindow(early_sent, window=0.05), DeltaWindow(late_sent, window=0.1)
    early.add("early")
    late.add("late")
    early.add(" again")
    late.add(" again")
    assert early_sent.arrived.wait(10) and late_sent.arrived.wait(10)
    early_sent.arrived.clear()
    late_sent.arrived.clear()
    assert late_sent.arrived.wait(10) and early_sent.arrived.wait(10), "both waiting deltas went out"
    assert (early_sent.sent, late_sent.sent) == (["early", " again"], ["late", " again"])


def test_a_failed_send_from_the_flusher_is_raised_in_the_step():
    sent = Recorder(fail_after=1)
    window = DeltaWindow(sent, window=3600)
    window.add("one")
    window.add("two")
    window.flush()  # as the flusher thread would: it keeps the error for the step
    with pytest.raises(ConnectionError):
        window.close()
    assert sent.sent == ["one"]


class Reader(Recorder):
    """A send that answers whether a reader follows the stream, as events.publish_delta does."""

    def __init__(self):
        super().__init__()
        self.following = False

    def __call__(self, text: str) -> bool:
        super().__call__(text)
        return self.following


def test_a_quiet_window_holds_the_first_delta_too_and_sends_all_at_close():
    sent = Reader()
    window = DeltaWindow(sent, window=0, quiet_window=3600)
    for text in ("Hel", "lo", ", ", "world"):
        window.add(text)
    assert sent.sent == [], "nobody reads a quiet run's first delta as it comes"
    window.close()
    assert sent.sent == ["Hello, world"]


def test_a_quiet_window_goes_by_whether_a_reader_follows():
    sent = Reader()
    window = DeltaWindow(sent, window=0, quiet_window=3600)  # (a short window of 0: nothing waits)
    window.add("a")
    sent.following = True  # a reader arrives (the dashboard, say)
    window.flush()  # the window's end, as the flusher would
    window.add("b")
    window.add("c")
    assert sent.sent == ["a", "b", "c"], "while a reader follows, deltas go as they come"
    sent.following = False
    window.add("d")
    window.add("e")
    assert sent.sent == ["a", "b", "c", "d"], "once none does, they wait again"
    window.close()
    assert sent.sent == ["a", "b", "c", "d", "e"]
