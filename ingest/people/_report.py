"""``ingest report``: the access review as one self-contained HTML file plus one CSV per finding kind.

The page carries its CSS, its script and its charts (inline SVG drawn here, no charting library, no
web fonts): it opens offline and can be attached to an audit ticket. A Content-Security-Policy
forbids every network request, so nothing is fetched at view time even by mistake.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ingest.people._findings import FINDING_KINDS
from ingest.people._queries import finding_rows, report_data

__all__ = ["write_report", "ReportFiles", "KIND_TITLES"]

KIND_TITLES = {
    "orphan_account": "Orphan accounts",
    "leaver_with_access": "Leavers with access",
    "dormant_account": "Dormant accounts",
    "privileged_access": "Privileged access",
    "new_privileged_grant": "New privileged grants",
    "shared_service_account": "Shared service accounts",
}
CSV_COLUMNS = ("kind", "connector", "account_id", "username", "account_email", "account_status", "identity_id",
               "person", "person_email", "entitlement_id", "entitlement_label", "since", "since_at", "detail")


@dataclass
class ReportFiles:
    html: Path
    csv: dict[str, Path]


def _line_chart(points: list[tuple[str, int]], width: int = 300, height: int = 110) -> dict[str, Any]:
    """SVG geometry of a small line chart: a polyline, a dot per point, min/max labels."""
    pad_l, pad_r, pad_t, pad_b = 6, 6, 10, 18
    values = [v for _, v in points]
    lo, hi = (min(values), max(values)) if values else (0, 0)
    if hi == lo:
        lo, hi = (0, hi or 1)
    n = len(points)
    xs = [pad_l + (width - pad_l - pad_r) * (i / (n - 1) if n > 1 else 0.5) for i in range(n)]
    ys = [pad_t + (height - pad_t - pad_b) * (1 - (v - lo) / (hi - lo)) for v in values]
    dots = [{"x": round(x, 1), "y": round(y, 1), "label": f"{d}: {v:,}"} for x, y, (d, v) in zip(xs, ys, points)]
    return {"width": width, "height": height, "polyline": " ".join(f"{d['x']},{d['y']}" for d in dots),
            "dots": dots, "first": points[0][0] if points else "", "last": points[-1][0] if points else "",
            "latest": values[-1] if values else 0, "base_y": height - pad_b}


def _bars(values: dict[str, int], width: int = 420, bar: int = 18, gap: int = 6, label_w: int = 170) -> dict[str, Any]:
    top = max(values.values() or [0]) or 1
    rows = []
    for i, (kind, v) in enumerate(values.items()):
        rows.append({"kind": kind, "title": KIND_TITLES[kind], "value": v, "y": i * (bar + gap),
                     "w": round((width - label_w - 50) * v / top, 1)})
    return {"width": width, "height": len(rows) * (bar + gap), "bar": bar, "label_w": label_w, "rows": rows}


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str, ensure_ascii=False, sort_keys=True)
    return "" if v is None else v


def write_report(engine: sa.Engine, out_dir: Path, *, now: datetime | None = None) -> ReportFiles:
    """Write ``access-review.html`` and ``findings-<kind>.csv`` (one per kind, header only when empty)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    out_dir.mkdir(parents=True, exist_ok=True)
    with engine.connect() as conn:
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        data = report_data(conn)
        csv_files: dict[str, Path] = {}
        for kind in FINDING_KINDS:
            path = out_dir / f"findings-{kind}.csv"
            with path.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(CSV_COLUMNS)
                for row in finding_rows(conn, kind):
                    w.writerow([_jsonable(row[c]) for c in CSV_COLUMNS])
            csv_files[kind] = path
    trends = data["trends"]
    charts = {key: _line_chart([(str(t["day"]), int(t[key])) for t in trends]) for key in ("accounts", "grants", "findings")}
    env = Environment(loader=PackageLoader("ingest.people", "templates"), autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = lambda v: _jsonable(v) if isinstance(v, datetime) else ("" if v is None else v)
    html = env.get_template("report.html.j2").render(
        data=data, kinds=FINDING_KINDS, titles=KIND_TITLES, charts=charts,
        bars=_bars(data["findings_by_kind"]), csv_files={k: p.name for k, p in csv_files.items()},
        generated_at=(now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC"))
    html_path = out_dir / "access-review.html"
    html_path.write_text(html, encoding="utf-8")
    return ReportFiles(html_path, csv_files)
