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
        _label(conn, connector, to_id, changes)
    return {"from": from_id, "to": to_id, "changes": changes}


def _latest(conn, table: str, connector: str, upto: int, key: str, ids: set[str], cols: str) -> dict[str, dict]:
    """The newest version (up to snapshot ``upto``) of each ``ids`` row: removed ones keep their last version."""
    if not ids:
        return {}
    rows = conn.execute(sa.text(f"""
        SELECT DISTINCT ON ({key}) {key} AS id, {cols} FROM ingest.{table}_history
        WHERE connector = :c AND {key} = ANY(:ids) AND valid_from <= :b ORDER BY {key}, valid_from DESC"""),
        {"c": connector, "ids": sorted(ids), "b": upto})
    return {r.id: dict(r._mapping) for r in rows}


def _label(conn, connector: str, upto: int, changes: dict[str, list[dict[str, Any]]]) -> None:
    """Give each change a ``label`` a reviewer reads: who (email, username) and what (entitlement label)."""
    def doc(c):
        return c["after"] or c["before"]

    account_ids = {doc(c)["account_id"] for e in ("account", "assignment") for c in changes.get(e, [])}
    ent_ids = {doc(c)[k] for c in changes.get("nested_entitlement", []) for k in ("entitlement_id", "member_entitlement_id")}
    ent_ids |= {doc(c)["entitlement_id"] for e in ("entitlement", "assignment") for c in changes.get(e, [])}
    accounts = _latest(conn, "accounts", connector, upto, "account_id", account_ids, "email, username")
    ents = _latest(conn, "entitlements", connector, upto, "entitlement_id", ent_ids, "label")

    def who(account_id: str, parens: bool) -> str:
        a = accounts.get(account_id) or {}
        name = a.get("email") or a.get("username") or ""
        if parens:
            name = a.get("username") or a.get("email") or ""
            return f"{account_id} ({name})" if name else account_id
        return name

    def what(entitlement_id: str) -> str:
        return (ents.get(entitlement_id) or {}).get("label") or entitlement_id

    for c in changes.get("account", []):
        c["label"] = who(doc(c)["account_id"], parens=False)
    for c in changes.get("resource", []) + changes.get("entitlement", []):
        c["label"] = doc(c).get("label") or ""
    for c in changes.get("assignment", []):
        d = doc(c)
        c["label"] = f"{who(d['account_id'], parens=True)} -> {what(d['entitlement_id'])}"
    for c in changes.get("nested_entitlement", []):
        d = doc(c)
        c["label"] = f"{what(d['member_entitlement_id'])} -> {what(d['entitlement_id'])}"
