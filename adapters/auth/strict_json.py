"""JSON parsing that refuses duplicate object keys.

Two parsers reading `{"alg":"EdDSA","alg":"none"}` may each pick a different value; a
token (or key set) whose meaning depends on the parser is refused outright.
"""

from __future__ import annotations

import json
from typing import Any


class DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def loads_object(data: bytes | str) -> dict[str, Any]:
    """Parse a JSON object; ValueError on bad JSON, duplicates or a non-object."""
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates)
    except RecursionError as exc:  # absurdly nested input
        raise ValueError("JSON nested too deeply") from exc
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value
