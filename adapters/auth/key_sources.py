"""Where the bearer verifier gets its trusted keys: fixed keys, a JWKS file, a JWKS URL."""

from __future__ import annotations

import logging
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from adapters.auth.errors import KeysUnavailable
from adapters.auth.jwk import VerificationKey, key_from_jwk
from adapters.auth.strict_json import loads_object

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1024 * 1024


class KeySource(Protocol):
    def trusted_keys(self) -> Sequence[VerificationKey]:
        """The keys trusted right now."""
        ...

    def refresh(self) -> bool:
        """Try to learn new keys (after an unknown kid); True if the key set may differ."""
        ...


def parse_jwks(document: Mapping[str, Any]) -> tuple[VerificationKey, ...]:
    """The usable keys of a JWK Set. Unusable entries are skipped and logged, not fatal:
    identity providers publish keys of types we do not accept (e.g. encryption keys)."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("a JWK Set needs a 'keys' list")
    keys = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            log.warning("JWKS entry %d is not an object; skipped", index)
            continue
        try:
            keys.append(key_from_jwk(entry))
        except ValueError as exc:
            log.warning("JWKS entry %d (kid %r) skipped: %s", index, entry.get("kid"), exc)
    return tuple(keys)


class StaticKeys:
    """Keys known at start (the dev issuer's key, a JWKS file); nothing to refresh."""

    def __init__(self, keys: Sequence[VerificationKey]) -> None:
        self._keys = tuple(keys)

    def trusted_keys(self) -> Sequence[VerificationKey]:
        return self._keys

    def refresh(self) -> bool:
        return False


def load_jwks_file(path: str | Path) -> StaticKeys:
    """Read a JWKS file once at start; a broken file is a startup error, not a 401 later."""
    raw = Path(path).read_bytes()
    if len(raw) > MAX_JWKS_BYTES:
        raise ValueError("JWKS file is too large")
    keys = parse_jwks(loads_object(raw))
    if not keys:
        raise ValueError("JWKS file holds no usable signature key")
    return StaticKeys(keys)


def fetch_url(url: str, timeout: float = 5.0) -> bytes:
    """GET `url` (http/https only) and return at most MAX_JWKS_BYTES of body."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("JWKS URL must be http(s)")
    # An opener without file:/ftp:/data: handlers, so a redirect cannot leave HTTP(S).
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.HTTPHandler(),
        # Explicit verifying context: certificate and host name checks are not optional.
        urllib.request.HTTPSHandler(context=ssl.create_default_context()),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.HTTPDefaultErrorHandler(),
    ):
        opener.add_handler(handler)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - scheme checked above
    with opener.open(request, timeout=timeout) as response:
        body: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("JWKS document is too large")
    return body


class JwksUrlKeys:
    """A remote JWK Set, cached for `ttl_seconds`.

    An unknown kid triggers a refetch (the provider may have rotated), but at most once per
    `min_refetch_seconds`, so a flood of tokens with random kids cannot turn us into a
    request amplifier against the provider. A failed fetch keeps the last good keys:
    failing every token during a provider blip would log out every user.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: float = 300.0,
        min_refetch_seconds: float = 30.0,
        fetch: Callable[[str], bytes] = fetch_url,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._ttl = ttl_seconds
        self._min_refetch = min_refetch_seconds
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: tuple[VerificationKey, ...] | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")

    def trusted_keys(self) -> Sequence[VerificationKey]:
        now = self._clock()
        if self._keys is None or now - self._fetched_at >= self._ttl:
            self._try_fetch(now)
        if self._keys is None:
            raise KeysUnavailable()
        return self._keys

    def refresh(self) -> bool:
        return self._try_fetch(self._clock())

    def _try_fetch(self, now: float) -> bool:
        with self._lock:
            if now - self._attempted_at < self._min_refetch:
                return False
            self._attempted_at = now
            try:
                keys = parse_jwks(loads_object(self._fetch(self._url)))
            except Exception:  # any network/parse failure: keep the last good keys
                log.warning("fetching the JWKS from the configured URL failed", exc_info=True)
                return False
            self._keys = keys
            self._fetched_at = now
            return True
