"""Differences between two snapshots of one connector, from the history tables."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ingest.writer import ENTITIES

__all__ = ["DiffError", "diff_snapshots"]


class DiffError(Exception):
    pass


def _key(entity: str, doc: dict[str, Any]) -> str:
    ent_key = doc.get("entitlement_id", "")
    if doc.get("resource_id"):
        ent_key = f"{doc.get('resource_type')}:{doc.get('resource_id')}:{doc.get('entitlement_id')}"
    return {
        "account": lambda: doc["account_id"],
        "resource": lambda: f"{doc['resource_type']}:{doc['resource_id']}",
        "entitlement": lambda: ent_key,
        "assignment": lambda: f"{doc['account_id']} -> {ent_key}",
        "nested_entitlement": lambda: f"{doc['member_entitlement_id']} -> {doc['entitlement_id']}",
        "expense": lambda: doc["expense_id"],
    }[entity]()


def diff_snapshots(engine: sa.Engine, connector: str, from_id: int | None, to_id: int | None) -> dict[str, Any]:
    """``{"from": id, "to": id, "changes": {entity: [{change, key, before, after}]}}``."""
    with engine.connect() as conn:
        ok = [r[0] for r in conn.execute(sa.text(
            "SELECT snapshot_id FROM ingest.snapshots WHERE connector = :c AND status = 'succeeded' "
            "ORDER BY snapshot_id DESC"), {"c": connector})]
        if to_id is None:
            if not ok:
                raise DiffError(f"{connector!r} has no successful snapshot yet; run `ingest run {connector}`")
            to_id = ok[0]
        if from_id is None:
            older = [s for s in ok if s < to_id]
            from_id = older[0] if older else 0
        for sid in (from_id, to_id):
            if sid and sid not in ok:
                raise DiffError(f"snapshot {sid} is not a successful snapshot of {connector!r} "
                                f"(see `ingest snapshots {connector}`)")
        changes: dict[str, list[dict[str, Any]]] = {}
        for name, ent in ENTITIES.items():
            if ent.table is None:
                continue
            strip = "- ARRAY['key_hash', 'row_hash', 'valid_from', 'valid_to']"
            rows = conn.execute(sa.text(f"""
                WITH a AS (SELECT * FROM ingest.{ent.table}_history WHERE connector = :c AND valid_from <= :a
                           AND (valid_to IS NULL OR valid_to > :a)),
                     b AS (SELECT * FROM ingest.{ent.table}_history WHERE connector = :c AND valid_from <= :b
                           AND (valid_to IS NULL OR valid_to > :b))
                SELECT CASE WHEN a.key_hash IS NULL THEN 'added' WHEN b.key_hash IS NULL THEN 'removed'
                            ELSE 'modified' END AS change,
                       to_jsonb(a) {strip} AS before, to_jsonb(b) {strip} AS after
                FROM a FULL JOIN b ON a.key_hash = b.key_hash
                WHERE a.key_hash IS NULL OR b.key_hash IS NULL OR a.valid_from <> b.valid_from
                ORDER BY 1"""), {"c": connector, "a": from_id, "b": to_id})
            changes[name] = [{"change": ch, "key": _key(name, after or before), "before": before, "after": after}
                             for ch, before, after in rows]
    return {"from": from_id, "to": to_id, "changes": changes}
