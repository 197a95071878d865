"""The bench's table: rows with their anchors, ratios and targets, written as markdown and
JSON under ops/results/, and (with --readme) into the README's performance section between
its markers."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

README_BEGIN = "<!-- bench:results:begin -->"
README_END = "<!-- bench:results:end -->"


@dataclass
class Row:
    group: str  # anchor | scenario | growth | info
    name: str
    unit: str = "req/s"
    rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    count: int | None = None
    failed: int | None = None
    anchor: str | None = None
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    status: str = "ok"  # ok | not available | error
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def result(self) -> str:
        if self.status != "ok":
            return self.status
        if self.passed is None:
            return "—"
        return "pass" if self.passed else "**miss**"


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    lines = [
        f"Run {meta['started']} · `{meta['command']}` · {meta['cpus']} CPUs · load average "
        f"{meta['load_before']} before, {meta['load_after']} after · API workers "
        f"{meta['api_workers']} · PostgreSQL fsync {meta['fsync']} · commit "
        f"{meta['commit']}{' (dirty tree)' if meta.get('dirty') else ''} · "
        f"{meta['elapsed_s']:.0f} s",
        "",
        "| | figure | throughput | p50 ms | p99 ms | anchor | ratio | target | result |",
        "|---|---|---:|---:|---:|---|---:|---|---|",
    ]
    for r in rows:
        rate = f"{_num(r.rate)} {r.unit}" if r.rate is not None else "—"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "—"
        name = r.name + (f" ({r.note})" if r.note else "")
        lines.append(
            f"| {r.group} | {name} | {rate} | {_num(r.p50_ms, 2)} | {_num(r.p99_ms, 2)} | "
            f"{r.anchor or '—'} | {ratio} | {r.target or '—'} | {r.result()} |"
        )
    if meta.get("notes"):
        lines += ["", *[f"- {n}" for n in meta["notes"]]]
    return "\n".join(lines) + "\n"


def write(rows: list[Row], meta: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, meta)
    data = {"meta": meta, "rows": [asdict(r) | {"result": r.result()} for r in rows]}
    md_path, json_path = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md_path.write_text(md)
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    if stem.endswith(("-partial", "-smoke")):
        return md_path, json_path
    latest = "latest-quick" if meta.get("quick") else "latest"
    (out_dir / f"{latest}.md").write_text(md)
    (out_dir / f"{latest}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    return md_path, json_path


def update_readme(readme: Path, md: str) -> bool:
    """Replace the table between the markers of the README's performance section."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        return False
    readme.write_text(pattern.sub(lambda _m: f"{README_BEGIN}\n{md}{README_END}", text))
    return True
