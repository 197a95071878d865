"""Authentication adapters: bearer JWTs, API keys, service keys, scopes.

Everything here turns a presented credential into an `application.principal.Principal` or
raises `AuthenticationError` (401) / `InsufficientScope` (403); the HTTP layer maps those.
"""
