"""The two ways authentication can fail; the HTTP layer maps them to 401 and 403."""

from __future__ import annotations


class AuthenticationError(Exception):
    """No usable credential (answer 401 with `WWW-Authenticate`).

    `detail` is safe to show to the caller: it is deliberately generic ("invalid token",
    "token expired") so an attacker probing the verifier learns nothing about which check
    failed. The precise reason, when useful, goes to logs via the exception's cause.
    """

    def __init__(self, detail: str = "invalid credentials") -> None:
        super().__init__(detail)
        self.detail = detail


class MissingCredentials(AuthenticationError):
    """No credential at all. RFC 6750 section 3.1: the challenge then names no error."""

    def __init__(self) -> None:
        super().__init__("credentials are required")


class KeysUnavailable(AuthenticationError):
    """The verification keys could not be fetched (JWKS URL down and nothing cached).

    A subclass of `AuthenticationError` so it fails closed (401) by default; the HTTP layer
    may map it to 503 instead so clients do not throw away good tokens during an outage.
    """

    def __init__(self) -> None:
        super().__init__("token keys unavailable")


class InsufficientScope(Exception):
    """A valid credential without the needed scope (answer 403 `insufficient_scope`)."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"missing scope {scope}")
        self.scope = scope
        self.detail = f"this credential lacks the '{scope}' scope"


class CredentialNotAccepted(Exception):
    """A valid credential of a kind this endpoint does not take (e.g. an API key where
    only bearer tokens are allowed)."""

    def __init__(self, credential: str) -> None:
        super().__init__(credential)
        self.credential = credential
