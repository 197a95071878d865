"""A small secret kept in the state directory, created once even under concurrent starts."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def read_or_create_secret(path: Path, make: Callable[[], bytes]) -> bytes:
    """Return the contents of `path`, creating it from `make()` if it does not exist.

    The new file is written completely to a private temporary file (0600) in the same
    directory and then hard-linked into place. `os.link` fails when the target exists, so
    when several processes race exactly one wins and every loser reads the winner's file.
    `os.replace` would not do: a late loser would overwrite a secret the winner is already
    using (two dev signing keys, two peppers). Linking also means the final name never
    points at a half-written file.
    """
    existing = _read(path)
    if existing is not None:
        return existing
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600 regardless of umask.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(make())
            tmp.flush()
            os.fsync(tmp.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            pass  # another process won the race; its file is the one everybody uses
    finally:
        os.unlink(tmp_name)
    created = _read(path)
    if created is None:  # pragma: no cover - only if someone deletes it in between
        raise RuntimeError(f"secret file {path.name} vanished right after creation")
    return created


def _read(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if not data.strip():
        # Never silently replace it: a truncated secret is an operator problem, and
        # regenerating would invalidate every hash or token made with the old one.
        raise RuntimeError(f"secret file {path.name} in the state directory is empty")
    return data
