"""The relay's decisions: what of a delta to send, and how the recorded result ends the stream."""

from __future__ import annotations

from gateway.relay import Relay


def test_deltas_are_sent_in_order_and_the_end_is_the_recorded_rest() -> None:
    relay = Relay()
    assert [relay.take(0, "HEL"), relay.take(3, "LO")] == ["HEL", "LO"]
    assert relay.rest("HELLO WORLD") == " WORLD"


def test_a_rerun_repeating_the_same_text_sends_only_what_is_new() -> None:
    relay = Relay()
    relay.take(0, "abc")
    assert relay.take(0, "ab") == ""  # the job ran again from the start: already sent
    assert relay.take(2, "cde") == "de"
    assert relay.sent == "abcde" and not relay.holding


def test_a_gap_stops_the_relay_and_the_recorded_result_completes_it() -> None:
    relay = Relay()
    relay.take(0, "ab")
    assert relay.take(5, "fg") == ""  # entries in between were trimmed or dropped
    assert relay.holding and relay.take(2, "cde") == ""
    assert relay.rest("abcdefg") == "cdefg"


def test_a_rerun_that_says_something_else_cannot_be_completed() -> None:
    relay = Relay()
    relay.take(0, "abc")
    assert relay.take(0, "xy") == "" and relay.holding
    assert relay.rest("xyz") is None  # what was sent is not the recorded text's beginning: an error event
