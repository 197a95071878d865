"""Projection workers: Kafka consumer groups that keep the read models in PostgreSQL."""

from adapters.projector.runner import Projector, projection_watermark, run_projectors

__all__ = ["Projector", "projection_watermark", "run_projectors"]
