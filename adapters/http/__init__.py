"""The Litestar HTTP API: thin controllers over the application's use cases and read models."""
