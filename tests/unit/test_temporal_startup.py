"""Start-up against Temporal: a port that accepts connections and keeps refusing is
configuration once the grace has passed; one that does not answer is waited out."""

from __future__ import annotations

from bridge.temporal.client import ANSWERING_GRACE_S, Answering


def test_a_port_that_does_not_answer_is_waited_out() -> None:
    answering = Answering()
    assert not answering.refusing(False, 0.0)
    assert not answering.refusing(False, 100 * ANSWERING_GRACE_S)


def test_a_port_that_answers_and_refuses_past_the_grace_is_configuration() -> None:
    answering = Answering()
    assert not answering.refusing(True, 100.0)
    assert not answering.refusing(True, 100.0 + ANSWERING_GRACE_S)
    assert answering.refusing(True, 100.0 + ANSWERING_GRACE_S + 0.1)


def test_a_port_that_stops_answering_starts_the_grace_over() -> None:
    answering = Answering()
    assert not answering.refusing(True, 0.0)
    assert not answering.refusing(False, ANSWERING_GRACE_S)
    assert not answering.refusing(True, ANSWERING_GRACE_S + 1.0)
    assert answering.refusing(True, 2 * ANSWERING_GRACE_S + 1.1)
