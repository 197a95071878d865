"""Base62 (0-9, A-Z, a-z): URL-, header- and double-click-safe secret text."""

from __future__ import annotations

import secrets

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHARSET = frozenset(ALPHABET)


def random_string(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def encode_fixed(value: int, width: int) -> str:
    """`value` in base62, left-padded with '0' to exactly `width` characters."""
    if value < 0 or value >= 62**width:
        raise ValueError("value does not fit the width")
    digits = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits))


def is_base62(text: str) -> bool:
    return all(ch in _CHARSET for ch in text)
