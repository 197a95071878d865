"""The shape every tenant and user id coming from a credential must have."""

from __future__ import annotations

import unicodedata
from typing import TypeGuard

MAX_IDENTIFIER_LENGTH = 200


def is_valid_identifier(value: object) -> TypeGuard[str]:
    """1-200 characters, no whitespace, no control/format/unassigned characters.

    Ids are opaque, but they end up in headers (`X-On-Behalf-Of: tenant/user`), logs and
    stream names, so anything that could split a line or hide itself is refused.
    """
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_IDENTIFIER_LENGTH:
        return False
    return not any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in value)
