"""`make bench` row for the people stage: identities, effective access and findings after a 1 % churn.

Shape (default, --scale 1): 200,000 people in an HR source, 1,000,000 accounts over 5 connectors (the HR
source and 4 apps of 200,000 accounts each: 90 % match a person by e-mail in another case, 5 % by
employee number only, 3 % orphans, 2 % service accounts), 10,000 groups per connector nested in chains
four deep (0.1 % of them "Admins" at the top of a chain), 5,000,000 direct grants (5 per account).

The snapshots are written straight into the history tables (the writer has its own benchmark), then:

1. a first refresh (everything is new);
2. a 1 % churn snapshot of every connector: 1 % of accounts changed (0.5 % of people terminated in HR),
   1 % of grants replaced, 10 new nesting edges per connector; each snapshot is followed by the refresh
   the runner would make, and each is timed;
3. a refresh with nothing changed;
4. the size of ingest.effective_access (rows, after removing grants reached two ways).

Everything on a fresh embedded PostgreSQL with its default settings.

    python bench/people.py [--scale 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.config import IdentityConfig  # noqa: E402
from ingest.db import EmbeddedDatabase, get_engine, migrate  # noqa: E402
from ingest.people import refresh  # noqa: E402

APPS = ["app1", "app2", "app3", "app4"]
GROUPS = 10_000


def _snapshot(conn, connector: str) -> int:
    return conn.execute(
        "INSERT INTO ingest.snapshots (connector, connector_type, trigger, status, finished_at) "
        "VALUES (%s, 'bench', 'manual', 'succeeded', clock_timestamp()) RETURNING snapshot_id", (connector,)
    ).fetchone()[0]


def load(conn, people: int) -> dict[str, int]:
    sids = {}
    for ci, c in enumerate(["hr", *APPS]):
        sid = sids[c] = _snapshot(conn, c)
        if c == "hr":
            conn.execute("""
                INSERT INTO ingest.accounts_history (connector, account_id, email, username, display_name, status,
                    account_type, custom_attributes, last_activity_at, key_hash, row_hash, valid_from)
                SELECT 'hr', 'hr-' || i, 'Person.' || i || '@Corp.Example', 'p' || i, 'Person ' || i,
                       CASE WHEN i %% 50 = 0 THEN 'SUSPENDED' ELSE 'ACTIVE' END, 'user',
                       jsonb_build_object('employeeNumber', 'E' || i), now() - (i %% 30) * interval '1 day',
                       md5('hr:' || i)::uuid, md5('hr:' || i || ':v1')::uuid, %s
                FROM generate_series(1, %s) i""", (sid, people))
        else:
            conn.execute("""
                INSERT INTO ingest.accounts_history (connector, account_id, email, username, display_name, status,
                    account_type, custom_attributes, last_activity_at, key_hash, row_hash, valid_from)
                SELECT %(c)s, %(c)s || '-' || i,
                       CASE WHEN i %% 100 < 90 THEN ' person.' || i || '@corp.example'
                            WHEN i %% 100 < 95 THEN 'x' || i || '@old.example'
                            WHEN i %% 100 < 98 THEN 'contractor' || i || '@ext.example' END,
                       CASE WHEN i %% 100 >= 98 THEN 'svc-' || (i %% 500) ELSE 'u' || i END, 'Account ' || i, 'ACTIVE',
                       CASE WHEN i %% 100 >= 98 THEN 'service' ELSE 'user' END,
                       CASE WHEN i %% 100 BETWEEN 90 AND 94 THEN jsonb_build_object('employeeNumber', 'E' || i)
                            ELSE '{}'::jsonb END,
                       now() - (i %% 100) * interval '1 day',
                       md5(%(c)s || ':' || i)::uuid, md5(%(c)s || ':' || i || ':v1')::uuid, %(sid)s
                FROM generate_series(1, %(n)s) i""", {"c": c, "sid": sid, "n": people})
        conn.execute("""
            INSERT INTO ingest.entitlements_history (connector, entitlement_type, entitlement_id, label,
                key_hash, row_hash, valid_from)
            SELECT %(c)s, 'group', 'g' || j, CASE WHEN j %% 1000 = 999 THEN 'Admins ' ELSE 'Group ' END || j,
                   md5(%(c)s || ':g' || j)::uuid, md5(%(c)s || ':g' || j || ':v1')::uuid, %(sid)s
            FROM generate_series(0, %(g)s - 1) j""", {"c": c, "sid": sid, "g": GROUPS})
        conn.execute("""
            INSERT INTO ingest.nested_entitlements_history (connector, entitlement_id, member_entitlement_id,
                key_hash, row_hash, valid_from)
            SELECT %(c)s, 'g' || (j + 1), 'g' || j, md5(%(c)s || ':n' || j)::uuid, md5('n')::uuid, %(sid)s
            FROM generate_series(0, %(g)s - 1) j WHERE j %% 5 < 4""", {"c": c, "sid": sid, "g": GROUPS})
        prefix = "hr-" if c == "hr" else c + "-"
        conn.execute("""
            INSERT INTO ingest.assignments_history (connector, account_id, entitlement_id, key_hash, row_hash,
                valid_from)
            SELECT %(c)s, %(p)s || i, 'g' || ((i * 31 + k * 2003 + %(ci)s * 7) %% %(g)s),
                   md5(%(c)s || ':a' || i || ':' || k)::uuid, md5('a')::uuid, %(sid)s
            FROM generate_series(1, %(n)s) i, generate_series(0, 4) k""",
                     {"c": c, "p": prefix, "sid": sid, "n": people, "g": GROUPS, "ci": ci})
    # last activity lives beside the versions (ingest.last_activity), as the writer keeps it
    conn.execute("""
        INSERT INTO ingest.last_activity (connector, account_id, last_activity_at, snapshot_id)
        SELECT h.connector, h.account_id, h.last_activity_at, h.valid_from FROM ingest.accounts_history h
        WHERE h.valid_to IS NULL AND h.last_activity_at IS NOT NULL
        ON CONFLICT DO NOTHING""")
    conn.execute("ANALYZE")
    return sids


def churn(conn, connector: str, people: int) -> int:
    """One snapshot of ``connector`` with 1 %% of its accounts and grants changed and 10 new nesting edges."""
    sid = _snapshot(conn, connector)
    p = {"c": connector, "sid": sid}
    # 1 %% of accounts: a new version (HR: every other one terminated)
    conn.execute("""
        WITH closed AS (
            UPDATE ingest.accounts_history SET valid_to = %(sid)s
            WHERE connector = %(c)s AND valid_to IS NULL AND hashtext(account_id || %(sid)s::text) %% 100 = 0
            RETURNING *)
        INSERT INTO ingest.accounts_history (connector, account_id, email, username, display_name, status, account_type,
            custom_attributes, last_activity_at, key_hash, row_hash, valid_from)
        SELECT connector, account_id, email, username, display_name,
               CASE WHEN connector = 'hr' AND hashtext(account_id) %% 2 = 0 THEN 'SUSPENDED' ELSE status END,
               account_type, custom_attributes, now(), key_hash, md5(row_hash::text)::uuid, %(sid)s
        FROM closed""", p)
    # 1 %% of grants: removed, as many added
    n = conn.execute("""
        UPDATE ingest.assignments_history SET valid_to = %(sid)s
        WHERE connector = %(c)s AND valid_to IS NULL AND hashtext(key_hash::text || %(sid)s::text) %% 100 = 0""",
                     p).rowcount
    prefix = "hr-" if connector == "hr" else connector + "-"
    conn.execute("""
        INSERT INTO ingest.assignments_history (connector, account_id, entitlement_id, key_hash, row_hash, valid_from)
        SELECT %(c)s, %(p)s || (1 + (i * 7919) %% %(n)s), 'g' || ((i * 104729) %% %(g)s),
               md5(%(c)s || ':new' || %(sid)s || ':' || i)::uuid, md5('a')::uuid, %(sid)s
        FROM generate_series(1, %(k)s) i""", {**p, "p": prefix, "n": people, "g": GROUPS, "k": n})
    conn.execute("""
        INSERT INTO ingest.nested_entitlements_history (connector, entitlement_id, member_entitlement_id,
            key_hash, row_hash, valid_from)
        SELECT %(c)s, 'g' || (1000 * i + 999), 'g' || (7 + 50 * i), md5(%(c)s || ':nn' || %(sid)s || i)::uuid,
               md5('n')::uuid, %(sid)s
        FROM generate_series(0, 9) i""", p)
    return sid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 200,000 people, 1M accounts, 5M grants")
    args = ap.parse_args()
    people = int(200_000 * args.scale)
    cfg = IdentityConfig(sources=["hr"], match=["email", "employee_id"])
    with tempfile.TemporaryDirectory(prefix="ingest-bench-people-") as tmp:
        db = EmbeddedDatabase(Path(tmp))
        url = db.start()
        try:
            import psycopg

            engine = get_engine(url)
            migrate(engine)
            libpq = url.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(libpq, autocommit=True) as conn:
                t = time.perf_counter()
                sids = load(conn, people)
                counts = conn.execute("SELECT (SELECT count(*) FROM ingest.accounts), "
                                      "(SELECT count(*) FROM ingest.assignments), "
                                      "(SELECT count(*) FROM ingest.nested_entitlements)").fetchone()
                print(f"ingest bench, people: {people:,} people, {counts[0]:,} accounts over 5 connectors, "
                      f"{counts[1]:,} direct grants, {counts[2]:,} nesting edges (chains 4 deep); "
                      f"loaded in {time.perf_counter() - t:.0f} s; embedded PostgreSQL, default settings")
                first = refresh(engine, cfg, sids["app4"])
                print(f"{'first refresh':<34} {first['total_s']:6.1f} s  (paths {first['paths_s']:.1f}, resolve "
                      f"{first['resolve_s']:.1f}, identities {first['identities_s']:.1f}, findings "
                      f"{first['findings_s']:.1f})")
                times = []
                for c in ["hr", *APPS]:
                    sid = churn(conn, c, people)
                    r = refresh(engine, cfg, sid, c)
                    times.append(r["total_s"])
                    print(f"{'refresh after 1 % churn of ' + c:<34} {r['total_s']:6.1f} s  (paths {r['paths_s']:.1f}, "
                          f"resolve {r['resolve_s']:.1f}, identities {r['identities_s']:.1f}, findings "
                          f"{r['findings_s']:.1f}; findings +{r['findings']['opened']:,} -{r['findings']['resolved']:,})")
                print(f"{'refresh after a 1 % churn snapshot':<34} {statistics.median(times):6.1f} s median of 5, "
                      f"{sum(times):.1f} s for all five")
                idle = refresh(engine, cfg, sid, "app4")
                print(f"{'refresh, nothing changed':<34} {idle['total_s']:6.1f} s")
                t = time.perf_counter()
                size = conn.execute("SELECT count(*) FROM ingest.effective_access").fetchone()[0]
                took = time.perf_counter() - t
                paths = conn.execute("SELECT count(*) FROM ingest.entitlement_paths").fetchone()[0]
                found = dict(conn.execute("SELECT kind, count(*) FROM ingest.findings GROUP BY 1").fetchall())
                print(f"{'effective_access':<34} {size:,} rows ({took:.0f} s to count through the view); "
                      f"entitlement_paths {paths:,} rows")
                print(f"{'open findings':<34} " + ", ".join(f"{k} {v:,}" for k, v in sorted(found.items())))
        finally:
            from ingest.db import dispose_engines

            dispose_engines()
            db.stop()


if __name__ == "__main__":
    main()
