"""The PostgreSQL event store: eventsourcing's recorder, plus what commits with events."""
