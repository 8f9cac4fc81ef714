"""Identity resolution, compiled from the ``identity:`` configuration into one set-based SQL query.

The same query text runs over two inputs: the current views (the refresh after a snapshot) or the
state as of a timestamp built on the ``*_at`` functions (``ingest.identities_at(ts)`` and
``ingest.identity_accounts_at(ts)``, which the stage (re)creates whenever the configuration changes).

How people are found:

* With ``sources``: every user account of the first source is a person (its *anchor*); each account of
  the next sources, in priority order, joins the person it matches, or becomes a new person when it
  matches none. Source accounts that are gone stay in the resolution (read from the history), so a
  person whose HR record was deleted is still known, and ``terminated``.
* Without sources (or without an ``identity:`` section): every e-mail address of a user account is a
  person.
* Every other account is matched against the people by the ``match`` keys, in order: the first key
  that finds anyone decides. One person: linked (``matched_by`` = the key). Several: the account is
  linked to neither and reported (an ``orphan_account`` finding that names the candidates).
* E-mail is compared lower-cased and trimmed, other keys trimmed; empty values never match.
* Service accounts never make a person, but are matched like any account.
* A person is ``terminated`` when none of their source accounts is present and ACTIVE (people found
  without sources are always ``active``: nothing is authoritative about them).
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.config import IdentityConfig

__all__ = ["Resolution", "compile_resolution", "ACCOUNT_COLUMNS"]

ACCOUNT_COLUMNS = ("connector, account_id, email, username, display_name, given_name, family_name, status, "
                   "account_type, custom_attributes, extra, last_activity_at")


_RESOLVE_COLUMNS = ("connector, account_id, email, username, display_name, given_name, family_name, status, "
                    "account_type, custom_attributes, extra")


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _path_expr(path: str, alias: str) -> str:
    head, *rest = path.split(".")
    if not rest:
        return f"{alias}.{head}"
    return f"({alias}.{head} #>> ARRAY[{', '.join(lit(p) for p in rest)}])"


def _key_expr(cfg: IdentityConfig, key: str, alias: str, connectors: list[str]) -> str:
    spec = cfg.attributes.get(key)
    if isinstance(spec, dict) and any(c != "*" for c in spec):
        whens = " ".join(f"WHEN {lit(c)} THEN {_path_expr(cfg.path(key, c), alias)}"
                         for c in sorted(spec) if c != "*")
        raw = f"CASE {alias}.connector {whens} ELSE {_path_expr(cfg.path(key, '*'), alias)} END"
    else:
        raw = _path_expr(cfg.path(key, connectors[0] if connectors else "*"), alias)
    if key == "email":
        return f"nullif(lower(btrim({raw})), '')"
    return f"nullif(btrim({raw}), '')"


@dataclass
class Resolution:
    """The compiled query: ``ctes`` (a WITH list without the keyword) defines

    * ``links`` (connector, account_id, identity_id, matched_by, candidates uuid[]) for every account
      present: identity_id NULL when nobody (candidates NULL) or several people (candidates) match;
    * ``people`` (identity_id, display_name, email, employee_id, status, source_connector).
    """

    ctes: str

    def query(self, select: str) -> str:
        return f"WITH {self.ctes}\n{select}"


KEYS = ("email", "employee_id", "username")


def compile_resolution(cfg: IdentityConfig | None, *, at: str | None = None,
                       connector: str | None = None) -> Resolution:
    """The resolution query for ``cfg`` (None: no ``identity:`` section).

    ``at``: a SQL expression of type timestamptz (e.g. ``p_at``) to resolve the state as of then;
    None resolves the current state. ``connector``: link only that connector's accounts (people still
    come from every source); valid only when it is not a source and sources are configured.
    """
    cfg = cfg or IdentityConfig()
    sources = list(cfg.sources)
    match = list(cfg.match)
    keyed_cols = ", ".join(f"{_key_expr(cfg, k, 'a', sources)} AS k_{k}" for k in KEYS)
    ctes: list[str] = []
    if at is None:
        # the current versions straight from the history: resolution needs no last activity
        where = "" if connector is None else f" AND connector = {lit(connector)}"
        ctes.append(f"acc AS (SELECT {_RESOLVE_COLUMNS} FROM ingest.accounts_history WHERE valid_to IS NULL{where})")
    else:
        ctes.append(f"asof AS MATERIALIZED (SELECT * FROM ingest.snapshots_as_of({at}))")
        ctes.append("acc AS MATERIALIZED (SELECT a.* FROM asof s, LATERAL ingest.accounts_at(s.snapshot_id) a)")
    ctes.append("keyed AS MATERIALIZED (SELECT a.connector, a.account_id, a.status, a.account_type, a.display_name, "
                f"a.given_name, a.family_name, a.username, a.email, {keyed_cols} FROM acc a)")

    def matching(name: str, accounts: str, anchors: str) -> None:
        """``name``: (connector, account_id, key, identity_id, candidates, n) for the accounts of
        ``accounts`` that the first key in ``match`` order with any hit links to ``anchors``.

        The people are grouped by key value first, so each account costs one hash probe per key
        (no sort or grouping over the accounts)."""
        for k in match:
            ctes.append(f"""{name}_by_{k} AS MATERIALIZED (
        SELECT k_{k} AS v, array_agg(DISTINCT identity_id ORDER BY identity_id) AS ids
        FROM {anchors} WHERE k_{k} IS NOT NULL GROUP BY k_{k})""")
        joins = " ".join(f"LEFT JOIN {name}_by_{k} j{i} ON j{i}.v = x.k_{k}" for i, k in enumerate(match))
        key = "CASE " + " ".join(f"WHEN j{i}.ids IS NOT NULL THEN {lit(k)}" for i, k in enumerate(match)) + " END"
        ids = "coalesce(" + ", ".join(f"j{i}.ids" for i in range(len(match))) + ")"
        ctes.append(f"""{name} AS MATERIALIZED (
        SELECT connector, account_id, key, ids[1] AS identity_id, ids AS candidates, cardinality(ids) AS n
        FROM (SELECT x.connector, x.account_id, {key} AS key, {ids} AS ids FROM {accounts} x {joins}) z
        WHERE ids IS NOT NULL)""")

    anchor_cols = "connector, account_id, " + ", ".join(f"k_{k}" for k in KEYS)
    if sources:
        src_list = "ARRAY[" + ", ".join(lit(s) for s in sources) + "]::text[]"
        src_cols = ("h.connector, h.account_id, h.email, h.username, h.display_name, h.given_name, h.family_name, "
                    "h.status, h.account_type, " + ", ".join(f"{_key_expr(cfg, k, 'h', sources)} AS k_{k}" for k in KEYS))
        if at is None:
            latest = f"""SELECT DISTINCT ON (h.connector, h.account_id) {src_cols}, h.valid_to IS NULL AS present
            FROM ingest.accounts_history h WHERE h.connector = ANY ({src_list})
            ORDER BY h.connector, h.account_id, h.valid_from DESC"""
        else:
            latest = f"""SELECT DISTINCT ON (h.connector, h.account_id) {src_cols},
                   (h.valid_to IS NULL OR h.valid_to > s.snapshot_id) AS present
            FROM ingest.accounts_history h JOIN asof s ON s.connector = h.connector
            WHERE h.connector = ANY ({src_list}) AND h.valid_from <= s.snapshot_id
            ORDER BY h.connector, h.account_id, h.valid_from DESC"""
        ctes.append(f"""src AS MATERIALIZED (
        SELECT a.*, array_position({src_list}, a.connector) AS rank
        FROM ({latest}) a
        WHERE a.account_type <> 'service')""")
        ctes.append(f"anchors_1 AS (SELECT {anchor_cols}, md5(connector || ':' || account_id)::uuid AS identity_id, "
                    "'rule'::text AS matched_by FROM src WHERE rank = 1)")
        src_links = ["SELECT connector, account_id, identity_id, matched_by, NULL::uuid[] AS candidates FROM anchors_1"]
        for r in range(2, len(sources) + 1):
            ctes.append(f"src_{r} AS (SELECT * FROM src WHERE rank = {r})")
            matching(f"m_{r}", f"src_{r}", f"anchors_{r - 1}")
            ctes.append(f"""anchors_{r} AS (
        SELECT * FROM anchors_{r - 1}
        UNION ALL
        SELECT {anchor_cols}, md5(connector || ':' || account_id)::uuid, 'rule' FROM src_{r} x
        WHERE NOT EXISTS (SELECT 1 FROM m_{r} m WHERE m.connector = x.connector AND m.account_id = x.account_id))""")
            src_links.append(f"SELECT connector, account_id, identity_id, matched_by, NULL FROM anchors_{r} "
                             f"WHERE connector = {lit(sources[r - 1])} AND matched_by = 'rule'")
            src_links.append(f"SELECT connector, account_id, CASE WHEN n = 1 THEN identity_id END, "
                             f"CASE WHEN n = 1 THEN key END, CASE WHEN n > 1 THEN candidates END FROM m_{r}")
        anchors = f"anchors_{len(sources)}"
        ctes.append("src_links AS MATERIALIZED (\n        " + "\n        UNION ALL\n        ".join(src_links) + ")")
        ctes.append("rest AS (SELECT k.* FROM keyed k WHERE NOT EXISTS "
                    "(SELECT 1 FROM src s WHERE s.connector = k.connector AND s.account_id = k.account_id))")
        matching("m_rest", "rest", anchors)
        ctes.append("""links AS (
        SELECT l.connector, l.account_id, l.identity_id, l.matched_by, l.candidates
        FROM src_links l JOIN src s USING (connector, account_id) WHERE s.present
        UNION ALL
        SELECT r.connector, r.account_id, CASE WHEN m.n = 1 THEN m.identity_id END,
               CASE WHEN m.n = 1 THEN m.key END, CASE WHEN m.n > 1 THEN m.candidates END
        FROM rest r LEFT JOIN m_rest m USING (connector, account_id))""")
        ctes.append(f"""people AS (
        SELECT a.identity_id,
               coalesce(s.display_name, nullif(btrim(concat_ws(' ', s.given_name, s.family_name)), ''),
                        s.username, s.email) AS display_name,
               s.email, s.k_employee_id AS employee_id,
               CASE WHEN EXISTS (SELECT 1 FROM src_links l JOIN src o USING (connector, account_id)
                                 WHERE l.identity_id = a.identity_id AND o.present AND o.status = 'ACTIVE')
                    THEN 'active' ELSE 'terminated' END AS status,
               a.connector AS source_connector
        FROM {anchors} a JOIN src s USING (connector, account_id))""")
    else:
        ctes.append(f"""anchors AS (
        SELECT DISTINCT ON (k_email) {anchor_cols}, md5('email:' || k_email)::uuid AS identity_id,
               display_name, given_name, family_name, username, email
        FROM keyed WHERE k_email IS NOT NULL AND account_type <> 'service'
        ORDER BY k_email, (status = 'ACTIVE') DESC, connector, account_id)""")
        matching("m_all", "keyed", "anchors")
        ctes.append("""links AS (
        SELECT k.connector, k.account_id, CASE WHEN m.n = 1 THEN m.identity_id END AS identity_id,
               CASE WHEN m.n = 1 THEN m.key END AS matched_by, CASE WHEN m.n > 1 THEN m.candidates END AS candidates
        FROM keyed k LEFT JOIN m_all m USING (connector, account_id))""")
        ctes.append("""people AS (
        SELECT identity_id,
               coalesce(display_name, nullif(btrim(concat_ws(' ', given_name, family_name)), ''), username, k_email)
                   AS display_name,
               k_email AS email, k_employee_id AS employee_id, 'active'::text AS status, NULL::text AS source_connector
        FROM anchors)""")
    return Resolution(",\n    ".join(ctes))


def history_functions(cfg: IdentityConfig | None) -> list[str]:
    """``CREATE OR REPLACE`` of ``ingest.identities_at(ts)`` and ``ingest.identity_accounts_at(ts)``."""
    res = compile_resolution(cfg, at="p_at")
    return [
        "DROP FUNCTION IF EXISTS ingest.identities_at(timestamptz)",
        "DROP FUNCTION IF EXISTS ingest.identity_accounts_at(timestamptz)",
        f"""CREATE FUNCTION ingest.identities_at(p_at timestamptz)
RETURNS TABLE (identity_id uuid, display_name text, email text, employee_id text, status text, source_connector text)
LANGUAGE sql STABLE AS $fn$
{res.query("SELECT identity_id, display_name, email, employee_id, status, source_connector FROM people")}
$fn$""",
        f"""CREATE FUNCTION ingest.identity_accounts_at(p_at timestamptz)
RETURNS TABLE (identity_id uuid, connector text, account_id text, matched_by text)
LANGUAGE sql STABLE AS $fn$
{res.query("SELECT identity_id, connector, account_id, matched_by FROM links WHERE identity_id IS NOT NULL")}
$fn$""",
    ]
