"""Settings from the environment: the topic's partition count, the API's threads."""

from __future__ import annotations

import pytest

from application.settings import load_settings


def test_a_new_topic_has_one_partition_unless_told_otherwise() -> None:
    assert load_settings({}).kafka_partitions == 1
    assert load_settings({"XENTREE_KAFKA_PARTITIONS": "6"}).kafka_partitions == 6
    assert load_settings({"XENTREE_KAFKA_PARTITIONS": "  "}).kafka_partitions == 1


@pytest.mark.parametrize("raw", ["0", "-4"])
def test_a_partition_count_below_one_is_refused_with_the_variable_named(raw: str) -> None:
    with pytest.raises(ValueError, match=r"XENTREE_KAFKA_PARTITIONS must be at least 1"):
        load_settings({"XENTREE_KAFKA_PARTITIONS": raw})


def test_a_partition_count_that_is_no_integer_is_refused() -> None:
    with pytest.raises(ValueError, match=r"XENTREE_KAFKA_PARTITIONS must be an integer"):
        load_settings({"XENTREE_KAFKA_PARTITIONS": "four"})


def test_the_api_threads_are_settable_and_at_least_one() -> None:
    assert load_settings({}).api_threads == 40
    assert load_settings({"XENTREE_API_THREADS": "8"}).api_threads == 8
    with pytest.raises(ValueError, match=r"XENTREE_API_THREADS must be at least 1"):
        load_settings({"XENTREE_API_THREADS": "0"})


def test_the_command_threads_are_settable_and_at_least_one() -> None:
    assert load_settings({}).command_threads == 8
    assert load_settings({"XENTREE_API_COMMAND_THREADS": "3"}).command_threads == 3
    with pytest.raises(ValueError, match=r"XENTREE_API_COMMAND_THREADS must be at least 1"):
        load_settings({"XENTREE_API_COMMAND_THREADS": "0"})
