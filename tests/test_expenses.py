"""Expenses (Lumos ``list_expenses``) are versioned like every other entity: current view, history, _at, changes."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from tests.engine import Org, people


def _expense(i: int, amount: str = "12.50", **kw) -> dict:
    return {"expense_id": f"e{i}", "account_id": f"u{i % 3}", "amount": amount, "currency": "EUR",
            "merchant": f"Shop {i}", "occurred_at": f"2026-11-{i + 1:02d}T10:00:00Z", "category": "card_transaction",
            "extra": {"report_id": f"r{i}"}, **kw}


@pytest.fixture
def org(tmp_path, database_url):
    o = Org(tmp_path, database_url, name="spend")
    o.connector["type"] = "file_spend"
    o.data["account"] = people(3)
    o.data["expense"] = [_expense(i) for i in range(4)]
    o.save()
    return o


def test_expenses_are_stored_versioned_and_reconstructed_per_snapshot(org):
    assert org.run().exit_code == 0
    first = org.last_snapshot()
    assert first["stats"]["expense"] == {"fetched": 4, "added": 4, "modified": 0, "removed": 0, "unchanged": 0,
                                         "invalid": 0}
    rows = org.query("SELECT * FROM ingest.expenses WHERE connector = 'spend' ORDER BY expense_id")
    assert [r["expense_id"] for r in rows] == ["e0", "e1", "e2", "e3"]
    assert rows[1]["amount"] == Decimal("12.50") and rows[1]["currency"] == "EUR"
    assert rows[1]["merchant"] == "Shop 1" and rows[1]["account_id"] == "u1"
    assert rows[1]["occurred_at"].isoformat() == "2026-11-02T10:00:00+00:00"
    assert rows[1]["extra"] == {"report_id": "r1"}

    # day two: one refunded to a new amount, one gone, one new
    org.data["expense"] = [_expense(0), _expense(1, amount="10.00"), _expense(2), _expense(9)]
    org.save()
    assert org.run().exit_code == 0
    second = org.last_snapshot()
    assert {k: second["stats"]["expense"][k] for k in ("added", "modified", "removed", "unchanged")} == {
        "added": 1, "modified": 1, "removed": 1, "unchanged": 2}
    changes = org.query("SELECT change, key, before->>'amount' AS was, after->>'amount' AS now FROM ingest.changes "
                        "WHERE snapshot_id = :s AND entity = 'expense' ORDER BY key", s=second["snapshot_id"])
    assert changes == [{"change": "modified", "key": "e1", "was": "12.50", "now": "10.00"},
                       {"change": "removed", "key": "e3", "was": "12.50", "now": None},
                       {"change": "added", "key": "e9", "was": None, "now": "12.50"}]
    at_first = org.query("SELECT expense_id, amount FROM ingest.expenses_at(:s) ORDER BY expense_id",
                         s=first["snapshot_id"])
    assert at_first == [{"expense_id": f"e{i}", "amount": Decimal("12.50")} for i in range(4)]
    assert len(org.query("SELECT * FROM ingest.expenses_history WHERE connector = 'spend'")) == 6  # 4 + 1 + 1

    # a re-run over the same data writes nothing
    assert org.run().exit_code == 0
    third = org.last_snapshot()
    assert third["stats"]["expense"]["unchanged"] == 4
    assert org.query("SELECT count(*) AS n FROM ingest.changes WHERE snapshot_id = :s", s=third["snapshot_id"]) == [
        {"n": 0}]
    res = org.cli("diff", "spend", "--from", str(first["snapshot_id"]), "--to", str(second["snapshot_id"]), "--json")
    assert res.exit_code == 0, res.output
    assert '"e9"' in res.output and '"e3"' in res.output


def test_expenses_at_a_snapshot_that_did_not_succeed_is_an_error(org):
    org.connector["settings"]["fail_in"] = "expense"
    org.save()
    assert org.run().exit_code == 1
    failed = org.last_snapshot()
    assert failed["status"] == "failed"
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="is failed, not succeeded"):
        with psycopg.connect(org.url.replace("+psycopg", "")) as conn:
            conn.execute("SELECT * FROM ingest.expenses_at(%s)", (failed["snapshot_id"],))
    with pytest.raises(psycopg.errors.NoDataFound, match="does not exist"):
        with psycopg.connect(org.url.replace("+psycopg", "")) as conn:
            conn.execute("SELECT * FROM ingest.expenses_at(999999)")


def test_a_bad_expense_is_counted_invalid_with_the_reason(org):
    org.data["expense"] = [_expense(0), _expense(1, amount="twelve"), {"amount": "1.00"}]
    org.save()
    assert org.run().exit_code == 0
    stats = org.last_snapshot()["stats"]
    assert stats["expense"]["added"] == 1 and stats["expense"]["invalid"] == 2
    reasons = [s["reason"] for s in stats["invalid_samples"]["expense"]]
    assert any(r.startswith("amount:") for r in reasons) and any(r.startswith("expense_id:") for r in reasons)
