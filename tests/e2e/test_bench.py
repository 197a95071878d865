"""`./ops/bench` itself: a smoke run (every scenario for about a second, on a stack of its
own) writes a table with every row, each anchored figure with its ratio. The figures of
such a run mean nothing; the real ones come from `./ops/bench` and `--quick`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ANCHORS = (
    "eventsourcing create-and-save loop",
    "eventsourcing get-and-save loop",
    "autocommit INSERT loop",
    "kafka-python produce loop",
    "bare Litestar JSON endpoint",
    "bare Litestar Ed25519 verify endpoint",
)
RATIOS = {  # scenario -> the anchor its throughput is a ratio of
    "heartbeat through HTTP": "eventsourcing get-and-save loop",
    "start + end pairs": "eventsourcing create-and-save loop",
    "GET /api/live/quota": "bare Litestar JSON endpoint",
    "POST /api/integration/verify": "bare Litestar Ed25519 verify endpoint",
}
SCENARIOS = (
    "heartbeat p99 at half load",
    "command-to-projection lag at 500 commands/s",
    "realtime: 10 sockets on one bridge",
    "projection rebuild from the event store",
)


def test_a_smoke_run_writes_every_row_and_ratio(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(ROOT / "ops" / "bench"), "--smoke", "--pg-waits", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [table] = tmp_path.glob("bench-*-smoke.json")
    rows = json.loads(table.read_text())["rows"]
    by_name = {r["name"]: r for r in rows}
    assert not [r for r in rows if r["status"] != "ok"], [
        (r["name"], r["status"], r["note"]) for r in rows if r["status"] != "ok"
    ]
    for anchor in ANCHORS:
        assert by_name[anchor]["group"] == "anchor" and by_name[anchor]["rate"] > 0, anchor
    for scenario, anchor in RATIOS.items():
        row = by_name[scenario]
        assert row["anchor"] == anchor and row["rate"] > 0, scenario
        assert row["ratio"] == pytest.approx(row["rate"] / by_name[anchor]["rate"], rel=1e-6)
        assert row["result"] in ("pass", "**miss**"), scenario
    for prefix in SCENARIOS:
        [row] = [r for r in rows if r["name"].startswith(prefix)]
        assert row["result"] in ("pass", "**miss**") and row["rate"] is not None, prefix
    # The lag of a pipeline that is not saturated, beside the target's fixed rate.
    [half] = [r for r in rows if r["name"].startswith("command-to-projection lag at half")]
    assert half["group"] == "info" and half["rate"] > 0 and half["p99_ms"] is not None
    growth = [r for r in rows if r["group"] == "growth"]
    assert {r["name"].split(" p99")[0] for r in growth} == {"heartbeat", "quota read"}
    assert [r for r in growth if r["ratio"] is not None]  # the later level against the first
    # --pg-waits: where PostgreSQL's backends spent a run of its own of each load.
    waits = [r for r in rows if r["name"].startswith("PostgreSQL during")]
    assert [w["name"].split(" (")[0] for w in waits] == [
        "PostgreSQL during heartbeat through HTTP, wrk", "PostgreSQL during start + end pairs"]
    # Each follows the measured row of its load and that run's CPU row (the sampled run is
    # a run of its own).
    names = [r["name"] for r in rows]
    assert names.index(waits[0]["name"]) == names.index("heartbeat through HTTP") + 2
    assert names.index(waits[1]["name"]) == names.index("start + end pairs") + 2
    for w in waits:
        assert w["group"] == "info" and w["rate"] > 0, w
        assert "backends in the append on average" in w["note"] and " 0 samples" not in w["note"]
    # Two of the create-and-save anchor's saves behind the bare endpoint, as the pairs'
    # load runs them: a figure beside the pairs' target, with the ratio to the same anchor.
    saves = "two create-and-save anchor saves behind the bare Litestar endpoint, as a pair"
    row = by_name[saves]
    assert row["group"] == "info" and row["unit"] == "pairs/s" and row["rate"] > 0
    assert row["failed"] == 0 and row["anchor"] == "eventsourcing create-and-save loop"
    assert row["ratio"] == pytest.approx(
        row["rate"] / by_name["eventsourcing create-and-save loop"]["rate"], rel=1e-6)
    assert row["result"] == "—"
    # The pairs again with the pipeline stopped: the API and PostgreSQL alone.
    paused = "start + end pairs with the pipeline paused"
    row = by_name[paused]
    assert row["group"] == "info" and row["unit"] == "pairs/s" and row["rate"] > 0
    assert row["failed"] == 0 and row["anchor"] == "eventsourcing create-and-save loop"
    assert row["result"] == "—" and "SIGSTOP" in row["note"]
    # Where the CPU of the measured runs went, process by process, right after each.
    for measured, unit, busiest in (
        ("eventsourcing create-and-save loop", "iteration", ("load client", "postgres")),
        (saves, "pair", ("bare", "postgres")),
        (paused, "pair", ("api", "postgres")),
        ("heartbeat through HTTP", "heartbeat", ("api", "postgres")),
        ("start + end pairs", "pair", ("api", "postgres")),
    ):
        cpu = rows[names.index(measured) + 1]
        assert cpu["name"] == f"CPU during {measured} (from /proc, the measured run itself)"
        assert cpu["group"] == "info" and cpu["unit"] == f"ms CPU/{unit}"
        spent = cpu["extra"]["cpu_ms_per_unit"]
        assert all(spent[name] > 0 for name in busiest), (measured, spent)
        assert cpu["rate"] == pytest.approx(sum(spent.values()))
        assert 0 < cpu["extra"]["cores_busy"] <= (os.cpu_count() or 1) + 0.01
        assert f"CPU ms per {unit}: " in cpu["note"]
    # Stopped processes spend nothing (the broker only answers them, so it idles too).
    spent = rows[names.index(paused) + 1]["extra"]["cpu_ms_per_unit"]
    stopped = sum(spent.get(name, 0) for name in ("relay", "projector", "reaper", "realtime"))
    assert stopped < 0.02 * sum(spent.values()), spent
    assert names.index(paused) > names.index("start + end pairs")
    # The markdown table has the same rows.
    [markdown] = tmp_path.glob("bench-*-smoke.md")
    text = markdown.read_text()
    for row in rows:
        assert row["name"] in text
