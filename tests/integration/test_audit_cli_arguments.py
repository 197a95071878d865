"""The auditor's commands given hostile arguments: a clear message on stderr, a non-zero
exit, nothing on stdout and never a traceback; and the result as the last line of stdout
when they succeed or find a difference."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from application.principal import Principal
from application.settings import Settings
from tests.support.audit import APP_ROLE, CLI, as_app_role, cli, last_json, one_session, principal
from tests.support.clock import Clock
from tests.support.services import scratch_database

# Enough history that one export outgrows a pipe's buffer (64 KiB).
SESSIONS = 40


@pytest.fixture(scope="module")
def history(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, Principal]]:
    """A database of its own with a little history of one known user (and others)."""
    state = tmp_path_factory.mktemp("state")
    with scratch_database(database_url) as url:
        settings = Settings(database_url=as_app_role(url), state_dir=str(state))
        migrate(settings)
        app = build_application(settings)
        known = principal()
        try:
            one_session(app, known, Clock(), 10)
            for _ in range(SESSIONS):
                one_session(app, principal(), Clock(), 3)
        finally:
            app.close()
        yield url, state, known


def refused(history: tuple[str, Path, Principal], *args: str, says: str) -> str:
    url, state, _ = history
    done = cli(url, state, *args)
    assert done.returncode != 0, done.stdout
    assert done.stdout.strip() == ""
    assert "Traceback" not in done.stderr, done.stderr
    assert says in done.stderr, done.stderr
    return done.stderr


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"garbage\n", "is not a chain digest"),
        (bytes(range(256)) * 64, "is not a chain digest: over"),
        (b"[]", "is not a chain digest"),
        (b'{"position": 1}', "is not a chain digest"),
        (
            b'{"position": -1, "head": "' + b"00" * 32
            + b'", "time": "2026-11-24T12:00:00Z", "key_id": "k"}',
            "position",
        ),
        (
            b'{"position": 1, "head": "not hex", "time": "2026-11-24T12:00:00Z", '
            b'"key_id": "k"}',
            "head",
        ),
        (
            b'{"position": 1, "head": "' + b"00" * 32
            + b'", "time": "yesterday", "key_id": "k"}',
            "time",
        ),
        (
            b'{"position": 1, "head": "' + b"00" * 32
            + b'", "time": "2026-11-24T12:00:00Z", "key_id": "k"}',
            "signed by key k, not",
        ),
    ],
)
def test_verify_refuses_a_digest_file_that_is_not_one(
    history: tuple[str, Path, Principal], tmp_path: Path, content: bytes, says: str
) -> None:
    garbage = tmp_path / "digest.json"
    garbage.write_bytes(content)
    refused(history, "audit", "verify", "--digest", str(garbage), says=says)


def test_verify_refuses_digest_paths_that_are_no_file(
    history: tuple[str, Path, Principal], tmp_path: Path
) -> None:
    refused(history, "audit", "verify", "--digest", str(tmp_path / "missing.json"),
            says="No such file")
    refused(history, "audit", "verify", "--digest", str(tmp_path), says="Is a directory")
    # An endless stream is not read to its end.
    refused(history, "audit", "verify", "--digest", "/dev/zero", says="over 4096 bytes")


@pytest.mark.parametrize("signature", ["", "\u00e9!", "!!!!", "A" * 86])
def test_verify_refuses_a_digest_of_our_key_with_a_bad_signature(
    history: tuple[str, Path, Principal], tmp_path: Path, signature: str
) -> None:
    url, state, _ = history
    digest = last_json(cli(url, state, "audit", "digest"))
    bad = tmp_path / "digest.json"
    bad.write_bytes(msgspec.json.encode({**digest, "signature": signature}))
    refused(history, "audit", "verify", "--digest", str(bad), says="does not verify")


@pytest.mark.parametrize(
    "when", ["garbage", "2026-13-45T00:00:00Z", "2026-11-24T12:00:00+25:00", "", "12:00"]
)
def test_replay_and_export_refuse_what_is_no_instant(
    history: tuple[str, Path, Principal], when: str
) -> None:
    _, _, known = history
    owner = ("--tenant", known.tenant_id, "--user", known.user_id)
    refused(history, "audit", "replay", *owner, "--until", when, says="RFC 3339")
    refused(history, "audit", "export", "--since", when, says="RFC 3339")
    refused(history, "audit", "export", "--until", when, says="RFC 3339")


def test_instants_in_any_rfc3339_spelling(history: tuple[str, Path, Principal]) -> None:
    url, state, known = history
    owner = ("--tenant", known.tenant_id, "--user", known.user_id)
    answers = [
        last_json(cli(url, state, "audit", "replay", *owner, "--until", when))
        for when in ("2100-01-01T00:00:00Z", "2100-01-01t00:00:00z", "2100-01-01T05:30:00+05:30")
    ]
    assert all(a["billed_seconds"] == 11 for a in answers)
    assert len({a["position"] for a in answers}) == 1


def test_unknown_tenants_and_users_are_errors_not_empty_answers(
    history: tuple[str, Path, Principal],
) -> None:
    url, state, known = history
    later = ("--until", "2100-01-01T00:00:00Z")
    refused(history, "audit", "replay", "--tenant", "no-such-tenant", "--user", known.user_id,
            *later, says=f"no event of user '{known.user_id}' of tenant 'no-such-tenant'")
    refused(history, "audit", "replay", "--tenant", known.tenant_id, "--user", "nobody",
            *later, says="no event of user 'nobody'")
    refused(history, "audit", "export", "--tenant", "no-such-tenant",
            says="no event of tenant 'no-such-tenant'")
    refused(history, "audit", "export", "--tenant", known.tenant_id, "--user", "nobody",
            says="no event of user 'nobody'")
    # A known user with nothing yet at that instant is an answer, not an error ...
    early = last_json(cli(url, state, "audit", "replay", "--tenant", known.tenant_id,
                          "--user", known.user_id, "--until", "2000-01-01T00:00:00Z"))
    assert (early["billed_seconds"], early["sessions"], early["position"]) == (0, [], 0)
    # ... and so is nothing new after a position (an incremental export).
    done = cli(url, state, "audit", "export", "--tenant", "no-such-tenant", "--after", "10")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "exported 0 events" in done.stderr


def test_export_refuses_bounds_no_event_could_be_within(
    history: tuple[str, Path, Principal],
) -> None:
    refused(history, "audit", "export", "--since", "2026-11-25T00:00:00Z",
            "--until", "2026-11-24T00:00:00Z", says="--since is later than --until")
    for after in ("-1", "1.5", "x"):
        refused(history, "audit", "export", "--after", after, says="not a position")


def test_output_files_that_cannot_be_written(
    history: tuple[str, Path, Principal], tmp_path: Path
) -> None:
    nowhere = str(tmp_path / "missing" / "out")
    refused(history, "audit", "export", "--output", nowhere, says="No such file or directory")
    refused(history, "audit", "digest", "--output", nowhere, says="No such file or directory")


def test_export_to_a_file_says_so_on_the_last_line_of_stdout(
    history: tuple[str, Path, Principal], tmp_path: Path
) -> None:
    url, state, known = history
    top = last_json(cli(url, state, "audit", "digest"))["position"]
    out = tmp_path / "events.jsonl"
    done = cli(url, state, "audit", "export", "--tenant", known.tenant_id, "--output", str(out))
    assert done.returncode == 0, done.stderr
    lines = out.read_bytes().splitlines()
    assert lines and all(msgspec.json.decode(x)["tenantid"] == known.tenant_id for x in lines)
    assert done.stdout.splitlines()[-1] == (
        f"exported {len(lines)} events (scanned up to position {top}) to {out}"
    )


def test_export_into_a_closed_pipe_ends_quietly(history: tuple[str, Path, Principal]) -> None:
    """`xentree-live audit export | head -1`: the reader leaves early."""
    url, state, _ = history
    env = {
        **os.environ,
        "XENTREE_DATABASE_URL": url,
        "XENTREE_DATABASE_ROLE": APP_ROLE,
        "XENTREE_STATE_DIR": str(state),
    }
    proc = subprocess.Popen(
        [CLI, "audit", "export"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert msgspec.json.decode(first)["position"] >= 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
