"""The quickstart path: two demo runs through the CLI make two snapshots whose diff is the day's churn."""

from __future__ import annotations

import sqlalchemy as sa
from typer.testing import CliRunner

from connectors.demo.org import Org, OrgSpec
from ingest.cli import app


def test_two_demo_days_via_the_cli_show_joiners_leavers_and_changes(tmp_path, database_url):
    cfg = tmp_path / "schedules.yaml"
    state = tmp_path / "state"
    cfg.write_text(
        "connectors:\n"
        "  demo:\n"
        "    type: demo\n"
        f"    settings: {{users: 400, churn: 0.05, page_size: 100, state_dir: '{state}'}}\n"
    )
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(app, ["--config", str(cfg), "--database-url", database_url, "run", "demo"])
        assert result.exit_code == 0, result.output
    assert (state / "demo-demo.day").read_text().strip() == "1"

    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            snaps = conn.execute(sa.text(
                "SELECT snapshot_id, status FROM ingest.snapshots WHERE connector = 'demo' ORDER BY snapshot_id"
            )).all()
            assert [s.status for s in snaps] == ["succeeded", "succeeded"]
            second = snaps[1].snapshot_id
            changes = {(e, c): n for e, c, n in conn.execute(sa.text(
                "SELECT entity, change, count(*) FROM ingest.changes WHERE snapshot_id = :s GROUP BY 1, 2"
            ), {"s": second})}
            accounts = conn.execute(sa.text("SELECT count(*) FROM ingest.accounts WHERE connector = 'demo'")
                                    ).scalar()
            grants = conn.execute(sa.text("SELECT count(*) FROM ingest.assignments WHERE connector = 'demo'")
                                  ).scalar()
            dangling = conn.execute(sa.text(
                "SELECT count(*) FROM ingest.assignments a LEFT JOIN ingest.accounts c "
                "ON c.connector = a.connector AND c.account_id = a.account_id WHERE c.account_id IS NULL"
            )).scalar()
    finally:
        engine.dispose()

    org = Org(OrgSpec(users=400, churn=0.05, day=1))
    assert accounts == org.count_users()
    assert grants == sum(len(org.memberships(i)) for i in range(org.index_bound()))
    assert dangling == 0
    for change in ("added", "removed", "modified"):
        assert changes.get(("account", change), 0) > 0, changes
    for change in ("added", "removed"):
        assert changes.get(("assignment", change), 0) > 0, changes
    changed_accounts = sum(n for (entity, _), n in changes.items() if entity == "account")
    assert changed_accounts < 0.25 * accounts
