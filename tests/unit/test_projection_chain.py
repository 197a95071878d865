"""How far a partition has been read without a hole, from the links the relay puts on
each message (the position of the message before it on its partition)."""

from __future__ import annotations

from adapters.projector.runner import Tracked, extend_chain


def test_messages_that_name_their_predecessor_extend_the_chain() -> None:
    assert extend_chain(0, [(0, 3), (3, 7), (7, 12)]) == 12
    assert extend_chain(7, [(7, 12)]) == 12


def test_a_message_whose_predecessor_was_not_read_extends_nothing() -> None:
    # 12 names 9, which was never read: what lies between 7 and 12 is unknown.
    assert extend_chain(7, [(9, 12), (12, 15)]) == 7


def test_a_batch_sent_to_a_recreated_topic_ahead_of_the_republishing_claims_nothing() -> None:
    # A topic recreated under a producer: its last batch (events 40 and 41, linked to the
    # old topic's 38) lands first, then the relay publishes everything again from 1.
    stale = [(38, 40), (40, 41)]
    republished = [(0, 1), (1, 5), (5, 38), (38, 40), (40, 41), (41, 44)]
    assert extend_chain(0, stale) == 0
    assert extend_chain(0, stale + republished[:2]) == 5
    assert extend_chain(0, stale + republished) == 44


def test_duplicates_and_republished_tails_change_nothing() -> None:
    # A relay that crashed before recording 12 publishes 7 -> 12 again.
    assert extend_chain(0, [(0, 7), (7, 12), (7, 12), (12, 20)]) == 20
    assert extend_chain(20, [(0, 7), (7, 12)]) == 20


def test_messages_without_links_count_as_before() -> None:
    """Published before the relay named predecessors: taken in order, as they always were."""
    assert extend_chain(4, [(None, 9), (None, 6)]) == 9


def test_an_undecodable_message_passes_its_link_on() -> None:
    # Its own position is unknown; the next one names it, and is taken if it was linked.
    assert extend_chain(3, [(3, None), (8, 11)]) == 11
    assert extend_chain(3, [(5, None), (8, 11)]) == 3


def test_the_position_rises_only_to_the_chain() -> None:
    before = Tracked(position=30, offset=9, chain=0)  # 30 applied from a previous topic
    after = before.after([(0, 12), (12, 25)], offset=11)
    assert after == Tracked(position=30, offset=11, chain=25)
    assert after.after([(25, 31), (31, 40)], offset=13) == Tracked(40, 13, 40)
    assert after.after([(33, 40)], offset=12) == Tracked(30, 12, 25)
