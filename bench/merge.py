"""The merge alone, statement by statement: staging generated in SQL, then the writer's commit.

    python bench/merge.py [--users 1000000] [--memberships 5] [--explain]

Day 1 stages ``users`` accounts and ``users * memberships`` assignments and commits (a
first load); day 2 changes 1 % of the accounts and replaces 0.5 % of the assignments and
commits again (a re-run). Prints the seconds of every statement of each commit and, with
``--explain``, its ``EXPLAIN (ANALYZE, BUFFERS)`` (run in a savepoint that is rolled back,
so timings then include it twice). A fresh embedded PostgreSQL on default settings.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest.db import _embedded_postgres, get_engine, migrate  # noqa: E402
from ingest.staging import Stager  # noqa: E402
from ingest.writer import ENTITIES, SnapshotWriter, _EntityStats  # noqa: E402

# ``extra`` as wide as a SCIM user's (the raw resource, ~1 KB of jsonb)
USER_EXTRA = """jsonb_build_object(
    'schemas', jsonb_build_array('urn:ietf:params:scim:schemas:core:2.0:User',
                                 'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User'),
    'id', 'u' || i, 'userName', 'user' || i || '@example.org', 'displayName', 'User ' || i, 'active', true,
    'name', jsonb_build_object('givenName', 'Given' || i, 'familyName', 'Family' || i, 'formatted', 'Given Family ' || i),
    'emails', jsonb_build_array(jsonb_build_object('value', 'user' || i || '@example.org', 'type', 'work', 'primary', true),
                                jsonb_build_object('value', 'u' || i || '@home.example', 'type', 'home')),
    'phoneNumbers', jsonb_build_array(jsonb_build_object('value', '+1 555 ' || lpad((i % 10000000)::text, 7, '0'), 'type', 'work')),
    'addresses', jsonb_build_array(jsonb_build_object('streetAddress', i || ' Main Street', 'locality', 'Springfield',
                                   'region', 'IL', 'postalCode', '62701', 'country', 'US', 'type', 'work')),
    'title', 'Engineer ' || (i % 50), 'locale', 'en-US', 'timezone', 'America/Chicago', 'userType', 'Employee',
    'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User', jsonb_build_object(
        'employeeNumber', i::text, 'costCenter', 'CC' || (i % 400), 'organization', 'Example Corp',
        'division', 'Division ' || (i % 12), 'department', 'Department ' || (i % 90),
        'manager', jsonb_build_object('value', 'u' || (i / 10), 'displayName', 'User ' || (i / 10))),
    'meta', jsonb_build_object('resourceType', 'User', 'created', '2024-01-01T00:00:00Z'))"""


def stage(w: SnapshotWriter, users: int, per_user: int, day: int) -> None:
    changed = f"CASE WHEN {day} = 2 AND i % 100 = 0 THEN 'changed' ELSE '' END"
    group = f"(j + k * 37 + CASE WHEN {day} = 2 AND (j * {per_user} + k) % 200 = 0 THEN 1000000 ELSE 0 END)"
    key = f"md5('bench' || chr(31) || 'u' || j || chr(31) || 'g' || {group} || chr(31) || chr(31))::uuid"
    with psycopg.connect(w._dsn(), autocommit=True) as c:
        for ent in ("account", "assignment"):
            Stager.create(c, ENTITIES[ent], w.stage_table(ent))
            w.staged[ent] = _EntityStats()
        w.staged["account"].fetched, w.staged["assignment"].fetched = users, users * per_user
        c.execute(f"""INSERT INTO {w.stage_table('account')} (account_id, email, username, display_name, status,
                      account_type, custom_attributes, extra, key_hash, row_hash)
            SELECT 'u' || i, 'u' || i || '@example.org', 'user' || i, 'User ' || i, 'ACTIVE', 'user', '{{}}',
                   {USER_EXTRA}, md5('bench' || chr(31) || 'u' || i)::uuid, md5('v' || i || {changed})::uuid
            FROM generate_series(1, {users}) i""")
        c.execute(f"""INSERT INTO {w.stage_table('assignment')} (account_id, entitlement_id, resource_type, resource_id,
                      key_hash, row_hash)
            SELECT 'u' || j, 'g' || {group}, '', '', {key}, {key}
            FROM generate_series(1, {users}) j, generate_series(0, {per_user} - 1) k""")
        for ent in ("account", "assignment"):  # as the workers' COPY (FREEZE) leaves them: no hint bits to set
            c.execute(f"VACUUM (FREEZE, ANALYZE) {w.stage_table(ent)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--memberships", type=int, default=5)
    ap.add_argument("--explain", action="store_true")
    args = ap.parse_args()
    explain = {"on": False}
    real_execute = sa.engine.Connection.execute

    def execute(self, stmt, *a, **kw):
        text = str(stmt)
        if explain["on"] and text.split()[0] in ("UPDATE", "INSERT", "SELECT", "DELETE", "CREATE"):
            savepoint = self.begin_nested()
            plan = real_execute(self, sa.text("EXPLAIN (ANALYZE, BUFFERS) " + text), *a, **kw).scalars().all()
            savepoint.rollback()
            print("  " + text[:160] + "\n      " + "\n      ".join(plan))
        return real_execute(self, stmt, *a, **kw)

    sa.engine.Connection.execute = execute
    with tempfile.TemporaryDirectory(prefix="ingest-merge-") as tmp:
        if os.geteuid() == 0:
            os.chmod(tmp, 0o711)
        server = _embedded_postgres().get_server(Path(tmp) / "pg", cleanup_mode="delete")
        try:
            base, _, query = server.get_uri().partition("?")
            with psycopg.connect(server.get_uri(), autocommit=True) as c:
                c.execute('CREATE DATABASE "bench"')
            engine = get_engine(base.rsplit("/", 1)[0] + "/bench" + ("?" + query if query else ""))
            migrate(engine)
            for day in (1, 2):
                with engine.begin() as c:
                    sid = c.execute(sa.text(
                        "INSERT INTO ingest.snapshots (connector, connector_type, trigger, status) "
                        "VALUES ('bench', 'demo', 'manual', 'running') RETURNING snapshot_id")).scalar_one()
                w = SnapshotWriter(engine, "bench", sid)
                t = time.perf_counter()
                stage(w, args.users, args.memberships, day)
                print(f"day {day}: staged in SQL in {time.perf_counter() - t:.1f} s")
                explain["on"] = args.explain

                def finish(c, stats, sid=sid):
                    c.execute(sa.text("UPDATE ingest.snapshots SET status = 'succeeded', stats = CAST(:s AS jsonb) "
                                      "WHERE snapshot_id = :sid"), {"s": __import__("json").dumps(stats), "sid": sid})

                t = time.perf_counter()
                stats = w.commit(allow_mass_delete=True, finish=finish)
                explain["on"] = False
                print(f"day {day}: commit {time.perf_counter() - t:.1f} s; "
                      + ", ".join(f"{k} {v:.2f}" for k, v in stats.get("merge_timings", {}).items()))
                for ent in ("account", "assignment"):
                    print(f"  {ent}: " + ", ".join(f"{k} {stats[ent][k]:,}" for k in
                                                   ("added", "modified", "removed", "unchanged")))
            engine.dispose()
        finally:
            server.cleanup()


if __name__ == "__main__":
    main()
