"""Example consumers of the Kafka stream (each file runs on its own; see README.md)."""
