"""The relay: the event store's notification log, in commit order, onto a Kafka topic."""

from adapters.relay.relay import Relay, relay_position, run_relay

__all__ = ["Relay", "relay_position", "run_relay"]
