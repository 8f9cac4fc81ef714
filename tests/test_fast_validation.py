"""Staging's fast validation (ingest.staging._Fast) accepts exactly what the models accept and stages
the same rows as pydantic would; anything it does not accept goes through pydantic."""

from __future__ import annotations

import enum
import hashlib
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from pydantic import ValidationError

from ingest.records import AccountStatus, AccountType
from ingest.staging import _VALIDATE, ENTITIES, Stager, _EntityStats

STAGER = Stager("conn", 1, log_invalid=False)

# values a field may be given: right, wrong and convertible types
VALUES = [
    "x", "", "a" * 1025, "Zoë Ødegård", None, 0, 1, 2.5, True, False, "true", b"bytes",
    {}, {"k": "v", "n": {"deep": [1, 2]}}, {1: "int key"}, [], ["a"],
    AccountStatus.SUSPENDED, "SUSPENDED", "suspended", AccountType.SERVICE, "service",
    datetime(2026, 1, 2, tzinfo=UTC), "2026-01-02T00:00:00Z", Decimal("1.5"),
]


def _records(entity: str, n: int, seed: int) -> list:
    rng = random.Random(seed)
    fields = list(ENTITIES[entity].model.model_fields)
    out = []
    for _ in range(n):
        rec = {}
        for f in fields:
            r = rng.random()
            if r < 0.15:
                continue  # absent
            rec[f] = rng.choice(VALUES) if r < 0.45 else _good(entity, f, rng)
        if rng.random() < 0.05:
            rec["unknown_field"] = "x"
        out.append(rec)
    return out


def _good(entity: str, field: str, rng: random.Random):
    model_field = ENTITIES[entity].model.model_fields[field]
    ann = str(model_field.annotation)
    if "AccountStatus" in ann:
        return rng.choice(list(AccountStatus))
    if "AccountType" in ann:
        return rng.choice(["user", "service"])
    if "dict" in ann:
        return {"a": rng.randint(0, 9), "b": {"c": "Zoë"}}
    if "bool" in ann:
        return rng.random() < 0.5
    if "datetime" in ann or "Decimal" in ann:
        return None
    return f"{field}-{rng.randint(0, 99)}"


@pytest.mark.parametrize("entity", sorted(ENTITIES))
def test_fast_validation_accepts_only_what_the_model_accepts_and_stages_the_same_row(entity):
    ent, fast = ENTITIES[entity], _VALIDATE[entity].check
    accepted = refused_by_both = fell_back = 0
    for rec in _records(entity, 3000, seed=len(entity)):
        try:
            model = ent.model.model_validate(rec)
        except ValidationError:
            model = None
        d = fast(rec)
        if d is not None:
            assert model is not None, f"fast validation accepted what the model refuses: {rec!r}"
            assert STAGER.row(ent, d) == STAGER.row(ent, model.__dict__), rec
            assert not any(isinstance(v, enum.Enum) for v in d.values())  # enums staged by value
            accepted += 1
        elif model is None:
            refused_by_both += 1
        else:
            fell_back += 1  # valid, but not in the exact types: pydantic stages it (converting)
        # the stager's own entry point: the same fields whichever way a record goes
        stats = _EntityStats()
        got = STAGER.validate(ent, rec, stats)
        assert (got is None) == (model is None) and stats.invalid == (model is None)
        if got is not None:
            assert STAGER.row(ent, got) == STAGER.row(ent, model.__dict__)
            _assert_hash_is_the_stored_definition(ent, got)
    assert refused_by_both and fell_back, (accepted, refused_by_both, fell_back)
    assert accepted or entity == "last_activity"  # its timestamp is required: pydantic parses it, always


def _assert_hash_is_the_stored_definition(ent, fields: dict) -> None:
    """row_hash is what every stored version was hashed with: md5 of orjson's sorted-keys JSON of the values
    list (a different serialisation would mark every row of every history modified once)."""
    row = STAGER.row(ent, fields)
    if not ent.values:
        return
    values = [fields[c] for c in ent.values]
    blob = orjson.dumps(values, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    assert row[-1] == hashlib.md5(blob).hexdigest()
    cells = row[len(ent.key):len(ent.key) + len(ent.values)]
    for v, cell in zip(values, cells, strict=True):
        if isinstance(v, (dict, list)):
            assert orjson.loads(cell) == v
        elif isinstance(v, enum.Enum):
            assert cell == v.value
        else:
            assert cell is v


def test_a_typical_scim_account_takes_the_fast_path():
    rec = {"account_id": "u1", "email": "a@example.org", "username": "a", "display_name": "Zoë",
           "given_name": None, "family_name": "Ø", "status": "SUSPENDED", "account_type": "user",
           "custom_attributes": {"department": "Légal"}, "extra": {"schemas": ["x"], "meta": {"created": "2026"}}}
    d = _VALIDATE["account"].check(rec)
    assert d is not None and d["status"] == "SUSPENDED" and d["last_activity_at"] is None
    assert _VALIDATE["account"].check({**rec, "status": AccountStatus.ACTIVE})["status"] == "ACTIVE"
    # missing fields take the model's defaults
    assert _VALIDATE["account"].check({"account_id": "u2"}) == {
        "account_id": "u2", "email": None, "username": None, "display_name": None, "given_name": None,
        "family_name": None, "status": "ACTIVE", "account_type": "user", "custom_attributes": {}, "extra": {},
        "last_activity_at": None}
    for bad in ({**rec, "status": "active"}, {**rec, "extra": {1: "x"}}, {**rec, "email": 5},
                {**rec, "account_id": ""}, {**rec, "surprise": 1}, {k: v for k, v in rec.items() if k != "account_id"}):
        assert _VALIDATE["account"].check(bad) is None


def test_every_entity_has_a_fast_path():
    assert set(_VALIDATE) == set(ENTITIES)
    assert {name for name, f in _VALIDATE.items() if f.key_only} == {"assignment", "nested_entitlement"}


@pytest.mark.parametrize("where", ["display_name", "custom_attributes", "extra"])
def test_text_with_a_nul_anywhere_is_refused_and_backslashes_are_not(where):
    """PostgreSQL cannot store NUL in text or JSON: a record with one is invalid wherever it hides (a plain
    column, a JSON column, deep inside one); backslashes and quotes, which JSON escapes too, are fine."""
    ent = ENTITIES["account"]
    ok = {"account_id": "u1", "display_name": 'C:\\Users\\"x"', "custom_attributes": {"path": "a\\b"},
          "extra": {"meta": {"note": ['say "\\u0000" literally']}}}
    row = STAGER.row(ent, _VALIDATE["account"].check(ok))
    assert row[ent.columns.index("display_name")] == 'C:\\Users\\"x"'
    assert orjson.loads(row[ent.columns.index("extra")]) == ok["extra"]
    nul = {"display_name": "a\x00b", "custom_attributes": {"k": "a\x00b"}, "extra": {"deep": [{"x": "\x00"}]}}[where]
    with pytest.raises(ValueError, match="NUL"):
        STAGER.row(ent, _VALIDATE["account"].check({**ok, where: nul}))


def test_key_only_rows_written_as_copy_text_are_the_rows_copied_one_by_one(database_url):
    """Assignments go to COPY as one block of text a batch: every value PostgreSQL gets back is the
    one the per-row path (psycopg's own escaping) stores, with the characters COPY escapes, a literal
    ``\\N``, non-ASCII, a record pydantic must convert, an invalid one and a NUL in the same batch."""
    import psycopg

    from ingest.db import get_engine, migrate

    migrate(get_engine(database_url))
    tricky = ["tab\there", "new\nline", "cr\rhere", "back\\slash", "\\N", "\\.", "Zoë Ødegård", "end\\"]
    batch = [{"account_id": f"u{i}", "entitlement_id": f"g{i % 7}"} for i in range(300)]
    batch += [{"account_id": t, "entitlement_id": f"g-{t}", "resource_type": t, "resource_id": "r"} for t in tricky]
    batch += [{"account_id": "u-bytes", "entitlement_id": b"g-bytes"},     # not the exact type: pydantic's path
              {"account_id": "", "entitlement_id": "g"},                    # invalid: empty id
              {"account_id": "u\x00", "entitlement_id": "g"}]              # invalid: NUL
    ent = ENTITIES["assignment"]
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    clean = batch[:300]  # no character COPY escapes: the batch's one block of text
    with psycopg.connect(url, autocommit=True) as conn:
        rows, stats = {}, {}
        for table, plain, part in (("ingest_stage.t_clean", True, clean), ("ingest_stage.t_clean_rows", False, clean),
                                   ("ingest_stage.t_text", True, batch), ("ingest_stage.t_rows", False, batch)):
            stats[table] = _EntityStats()
            Stager.create(conn, ent, table)
            with conn.transaction(), conn.cursor() as cur, cur.copy(
                    f"COPY {table} ({', '.join(ent.columns)}, key_hash, row_hash, page_seq) FROM STDIN") as copy:
                STAGER._copy_plain(ent, part, stats[table], copy.write_row, 5, copy.write if plain else None)
            rows[table] = conn.execute(f"SELECT {', '.join(ent.columns)}, key_hash::text, page_seq "
                                       f"FROM {table} ORDER BY 1, 2, 3, 4").fetchall()
            conn.execute(f"DROP TABLE {table}")
    assert rows["ingest_stage.t_text"] == rows["ingest_stage.t_rows"]
    assert rows["ingest_stage.t_clean"] == rows["ingest_stage.t_clean_rows"]
    assert len(rows["ingest_stage.t_clean"]) == 300 and stats["ingest_stage.t_clean"].invalid == 0
    assert len(rows["ingest_stage.t_text"]) == 300 + len(tricky) + 1
    assert {r[0] for r in rows["ingest_stage.t_text"]} >= set(tricky) | {"u-bytes"}
    assert {r[-1] for r in rows["ingest_stage.t_text"]} == {5}
    assert stats["ingest_stage.t_text"].invalid == stats["ingest_stage.t_rows"].invalid == 2
    first = next(r for r in rows["ingest_stage.t_text"] if r[0] == "u0")
    assert first[4] == str(uuid.UUID(hashlib.md5(b"conn\x1fu0\x1fg0\x1f\x1f").hexdigest()))
