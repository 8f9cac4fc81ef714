"""A deterministic synthetic organisation, generated one index at a time.

Everything about user ``i`` on day ``d`` is a pure function of ``(OrgSpec, i)``:
nothing is stored and nothing is materialised, so generating page ``k`` of any
list costs O(page size) whatever the organisation's size, and two processes
given the same spec produce byte-identical answers.

How the organisation changes from one day to the next
-----------------------------------------------------
``churn`` is the fraction of users whose record or access changes per day. It
is split between kinds of event (``SHARES``):

- **joiners**: ``users * churn * SHARES["join"]`` new users a day take the next
  indices (the index space grows; day 0 has exactly ``users`` users);
- **leavers**: every user leaves with the same daily hazard, so the headcount
  stays near ``users``; half of them are first suspended for 1-16 days
  (offboarding), then deleted;
- **renames** (family name, hence display name and e-mail), **job changes**
  (department, title, cost centre, manager), **temporary suspensions**,
  **logins** (``last_login_at``) and **access changes** (one grant moves to
  another group, workspace role or licence) are periodic per user: a kind with
  daily rate ``r`` fires for each user every ``1/r`` days at a per-user phase,
  so about ``users * r`` users see it each day, and the version of an attribute
  on day ``d`` is ``(d + phase) // period``: O(1), no look-back.

Managers are the first eighth of the initial users; they stay, and form a
hierarchy (each reports to a lower index; ``u0`` to no one). Everyone else
reports to one of them, and may get another manager on a job change.
Groups and workspaces are renamed now and then (``ENTITY_RENAME_SHARE``).

Access: people hold a licence plus grants to groups and workspace roles; the
grant lists come from a bounded set of shared *layouts* (people in one team
share access), pre-rendered as JSON, so a page of grants costs about one
string operation per user (see ``_Grants``).

Identifiers are stable: users ``u<i>``, groups ``g<k>``, workspaces ``w<k>``,
workspace roles ``<role>`` (with resource ``w<k>``), licences ``lic-<plan>``.

Randomness: two tables of 65,536 random 64-bit words per seed (built once with
a strong hash, ~5 MB); the words of user ``i`` are XORs of one entry of each,
four times cheaper than hashing per field. ``hash()`` of a tuple of ints is
deterministic across processes (PYTHONHASHSEED only salts str and bytes).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from datetime import date, timedelta

__all__ = ["EPOCH", "SHARES", "Org", "OrgSpec", "day_date", "get_org", "role_key"]

EPOCH = date(2025, 1, 1)  # day 0

# Share of the daily churn taken by each kind of event (sums to 1).
SHARES: dict[str, float] = {
    "join": 0.11,
    "leave": 0.11,
    "login": 0.35,
    "access": 0.20,
    "job": 0.10,
    "suspend": 0.10,
    "rename": 0.03,
}
SERVICE_RATIO = 0.05  # share of accounts that are service accounts
DORMANT_RATIO = 0.02  # share suspended for good (never cleaned up)
NEVER_LOGIN = 8 / 256  # share that never logged in
MANAGER_POOL = 8  # one in eight initial users can be a manager
ENTITY_RENAME_SHARE = 0.2  # daily rename rate of a group / workspace, relative to churn
_PRERENDER_LIMIT = 200_000  # entitlements whose JSON is rendered once per org
_SCAN_BUDGET = 50_000  # indices one page may look at beyond its limit (long runs of leavers)
MAX_DAY = 100_000

_M64 = (1 << 64) - 1
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_SERVICE_CUT = int(SERVICE_RATIO * 65536)
_DORMANT_CUT = int(DORMANT_RATIO * 65536)
_NEVER_LOGIN_CUT = int(NEVER_LOGIN * 256)
# word k of user i: T1[(i + k*_K1) & 0xFFFF] ^ T2[((i >> 16) + k*_K2) & 0xFFFF]
_K1, _K2 = 0x5BD1, 0x2F0B
_LIFE, _STATIC, _PHASE_A, _PHASE_B, _LAYOUT, _SUSP, _JOB, _NAME = range(8)
_GROUP, _WS = 101, 102  # domains of _h for groups and workspaces


def _h(*key: int) -> int:
    """64 well-mixed bits from a tuple of ints (deterministic across processes)."""
    x = hash(key) * _C1 & _M64
    x = (x ^ (x >> 32)) * _C2 & _M64
    return x ^ (x >> 29)


@functools.lru_cache(maxsize=4)
def _tables(seed: int) -> tuple[list[int], list[int]]:
    return [_h(seed, 1, j) for j in range(65536)], [_h(seed, 2, j) for j in range(65536)]


def _period(rate: float) -> int:
    """Days between two events of a kind firing at ``rate`` per user per day (0 = never)."""
    return max(1, round(1 / rate)) if rate > 0 else 0


GIVEN = (
    "Ada Alan Alice Amara Amir Ana Andre Anika Arjun Ava Ben Bianca Carlos Chen Chloe Chris Dana Daniel "
    "David Diego Elena Eli Emma Eric Farah Felix Fatima Grace Hana Hannah Hugo Ines Ivan Jack Jamal Jana "
    "Javier Jin Joao John Julia Kai Karim Kate Kenji Laila Lars Leo Lina Lucas Lucy Maria Mark Maya Mei "
    "Mia Mohamed Nadia Nate Nina Noah Nora Olga Omar Oscar Paul Pedro Priya Rafael Rania Ravi Rosa Ruth "
    "Sam Sara Sean Sofia Sven Tariq Tess Theo Tom Uma Vera Victor Wei Will Yara Yusuf Zoe Zara"
).split()
FAMILY = (
    "Abbott Adams Ahmed Alvarez Andersen Baker Banerjee Becker Bennett Brown Campbell Carter Castro Chen "
    "Clarke Cohen Costa Cruz Davis Diaz Dubois Edwards Evans Fischer Fernandes Garcia Gomez Gonzalez Gray "
    "Green Gupta Hall Hansen Harris Hoffmann Huang Hughes Ito Jackson Jensen Johnson Jones Kaur Kelly Khan "
    "Kim Klein Kowalski Kumar Lambert Larsen Lee Lewis Li Lopez Martin Meyer Miller Moore Morales Murphy "
    "Nakamura Nguyen Novak Okafor Olsen Park Patel Perez Peters Petrov Quinn Ramos Reed Reyes Rossi Sanchez "
    "Santos Schmidt Scott Silva Singh Smith Sousa Suzuki Tanaka Taylor Thomas Torres Turner Walker Wang "
    "Watson Weber White Williams Wilson Wong Wright Yamamoto Young Zhang"
).split()
_GIVEN_L = tuple(g.lower() for g in GIVEN)
_FAMILY_L = tuple(f.lower() for f in FAMILY)
DEPARTMENTS = (
    ("Engineering", ("Software Engineer", "Site Reliability Engineer", "Engineering Manager", "QA Engineer")),
    ("Product", ("Product Manager", "Product Analyst", "Technical Writer")),
    ("Design", ("Product Designer", "UX Researcher", "Brand Designer")),
    ("Sales", ("Account Executive", "Sales Engineer", "Sales Development Rep", "Sales Manager")),
    ("Marketing", ("Marketing Manager", "Content Strategist", "Growth Analyst")),
    ("Customer Success", ("Support Engineer", "Customer Success Manager", "Support Lead")),
    ("Finance", ("Accountant", "Financial Analyst", "Controller")),
    ("People", ("Recruiter", "People Partner", "People Operations Specialist")),
    ("Legal", ("Counsel", "Paralegal", "Compliance Analyst")),
    ("IT", ("IT Administrator", "Systems Engineer", "Help Desk Analyst")),
    ("Security", ("Security Engineer", "Security Analyst", "GRC Analyst")),
    ("Operations", ("Operations Manager", "Business Analyst", "Office Manager")),
)
LEVELS = ("", "", "Senior ", "Staff ", "Principal ")
LOCATIONS = ("London", "New York", "San Francisco", "Berlin", "Paris", "Toronto", "Singapore", "Sydney",
             "Bangalore", "Sao Paulo", "Remote")
SERVICE_PURPOSES = ("ci", "backup", "etl", "monitoring", "billing-sync", "scim", "reporting", "deploy",
                    "alerts", "data-export")
ORG_NAMES = ("Acme Corp", "Globex", "Initech", "Umbrella", "Stark Industries", "Wayne Enterprises",
             "Hooli", "Soylent", "Tyrell", "Cyberdyne")
TEAMS = ("Engineering", "Platform", "Data", "Infrastructure", "Mobile", "Web", "Sales", "Marketing",
         "Finance", "People", "Legal", "Support", "Security", "IT", "Design", "Product", "Operations",
         "Leadership", "Contractors", "Interns", "Berlin Office", "London Office", "NYC Office",
         "On-call", "Release Managers", "Admins", "Auditors", "Partners", "Analytics", "Growth")
TEAM_SUFFIXES = ("EMEA", "Americas", "APAC", "Core", "Team", "Guild", "All", "Leads")
PROJECTS = ("Apollo", "Borealis", "Cobalt", "Delta", "Everest", "Falcon", "Gemini", "Helix", "Iris",
            "Juniper", "Kepler", "Lumen", "Meridian", "Nimbus", "Orion", "Pulsar", "Quartz", "Raven",
            "Sierra", "Titan", "Umbra", "Vega", "Willow", "Xenon", "Yukon", "Zephyr")
WORKSPACE_SUFFIXES = ("Archive", "Next", "Labs", "Classic", "v2")
ROLES = (
    ("owner", "Owner", "Full control of the workspace, including deletion and billing."),
    ("admin", "Admin", "Manage members, settings and integrations."),
    ("editor", "Editor", "Create and edit content."),
    ("commenter", "Commenter", "View and comment."),
    ("viewer", "Viewer", "Read-only access."),
    ("billing", "Billing manager", "Manage invoices and payment methods."),
    ("auditor", "Auditor", "Read audit logs and exports."),
    ("guest", "Guest", "Limited access to shared items."),
)
LICENSES = (
    ("lic-standard", "Standard", "Standard seat."),
    ("lic-pro", "Professional", "Professional seat with advanced features."),
    ("lic-enterprise", "Enterprise", "Enterprise seat with SSO and audit logs."),
)

_HM = [f"{h:02d}:{m:02d}" for h in range(24) for m in range(60)]
_SS = [f"{s:02d}" for s in range(60)]
# Templates of the API's user objects: every value comes from the tables above (plain ASCII, nothing
# to escape), several times faster than building dicts for ``json.dumps``.
# ``profile`` leaves out what is unknown (the CEO has no manager).
_USER_T = (
    '{"id":"u%d","type":"user","username":"%s.%s%d","email":"%s.%s%d@%s",'
    '"first_name":"%s","last_name":"%s","display_name":"%s %s","status":"%s",'
    '"created_at":"%s","last_login_at":%s,"profile":{"department":"%s","title":"%s%s",'
    '"cost_center":"CC-%d",%s"location":"%s","employee_id":"E%d"}}'
)
_SERVICE_T = (
    '{"id":"u%d","type":"service","username":"svc-%s-%d","email":null,"first_name":null,"last_name":null,'
    '"display_name":"%s service account","status":"%s","created_at":"%s","last_login_at":%s,'
    '"profile":{"department":"%s","cost_center":"CC-%d"%s}}'
)


@functools.lru_cache(maxsize=8192)
def day_date(day: int) -> str:
    """The ISO date of a day number (day 0 is ``EPOCH``)."""
    return (EPOCH + timedelta(days=day)).isoformat()


def _timestamp(day: int, seconds: int) -> str:
    return f"{day_date(day)}T{_HM[seconds // 60]}:{_SS[seconds % 60]}Z"


@dataclass(frozen=True)
class OrgSpec:
    """The parameters that fully determine the organisation (and so every answer of the server)."""

    seed: int = 42
    day: int = 0
    users: int = 500
    groups: int = 40
    roles: int = 6
    workspaces: int = 12
    memberships_per_user: float = 4.0
    churn: float = 0.01

    def __post_init__(self) -> None:
        for name in ("day", "users", "groups", "roles", "workspaces"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.day > MAX_DAY:
            raise ValueError(f"day must be <= {MAX_DAY}")
        if not 0 <= self.churn <= 1:
            raise ValueError("churn must be between 0 and 1")
        if not 0 <= self.memberships_per_user <= 1000:
            raise ValueError("memberships_per_user must be between 0 and 1000")


def _strides(u: int) -> list[int]:
    """Multipliers coprime to ``u``: p -> (base + stride * p) % u is then a bijection."""
    out, k = [], u // 3 + 1
    while u > 1 and len(out) < 16 and k < u + 1024:
        if math.gcd(k, u) == 1:
            out.append(k)
        k += 1
    return out or [1]


def role_key(r: int) -> str:
    return ROLES[r][0] if r < len(ROLES) else f"custom-{r}"


class _Grants:
    """Which entitlements people hold: day-independent *layouts* shared by every day of one org shape.

    A layout is the grant list of the users whose layout word falls on it: a licence,
    then grants in distinct blocks of the universe (groups, then workspace roles),
    scattered by an affine bijection, so no one holds an entitlement twice. There
    are up to 65,536 layouts (people in a team share access, as in real orgs),
    built on first use; a user's access changes replace single grants of it.
    """

    def __init__(self, seed: int, groups: int, roles: int, workspaces: int, per_user: float) -> None:
        self.seed, self.groups, self.roles = seed, groups, roles
        self.universe = u = groups + roles * workspaces
        self.m_lo = int(per_user // 2)
        self.m_hi = max(self.m_lo, round(2 * per_user) - self.m_lo)  # uniform in [lo, hi]: mean per_user
        slots = min(self.m_hi, u)
        self.block = u // slots if slots else 0
        self.strides = _strides(u)
        # at most 65,536 layouts, fewer when people hold many grants (bounds the memory to ~20 MB)
        self.count = max(256, min(65536, 12_000_000 // (80 * (self.m_hi + 1))))
        self._layouts: list[tuple | None] = [None] * self.count
        self._t2 = _tables(seed)[1]
        # JSON tails of grant records by position; licence k sits at index -1 - k
        self.tails = ([self.tail(t) for t in range(u)] + [self.tail(-1 - k) for k in reversed(range(3))]
                      if u <= _PRERENDER_LIMIT else None)

    def entitlement_of(self, t: int) -> tuple[str, str, str, str]:
        """(kind, entitlement_id, resource_type, resource_id) of position ``t`` (``-1 - k``: licence k)."""
        if t < 0:
            return "license", LICENSES[-1 - t][0], "", ""
        if t < self.groups:
            return "group", f"g{t}", "", ""
        w, r = divmod(t - self.groups, self.roles)
        return "role", role_key(r), "workspace", f"w{w}"

    def tail(self, t: int) -> str:
        _, ent, rtype, rid = self.entitlement_of(t)
        return f'"entitlement_id":"{ent}","resource_type":"{rtype}","resource_id":"{rid}"}}'

    def position(self, h: int, base: int, stride: int, k: int, moves: int) -> int:
        """Position of regular grant ``k`` after ``moves`` access changes (always in block ``k``)."""
        w = (self._t2[(h + k * 0x9E37 + moves * 0x7F4B) & 0xFFFF] >> 32) % self.block
        return (base + stride * (k * self.block + w)) % self.universe

    def layout(self, key: int) -> tuple:
        """(h, licence, base, stride, positions of a person, positions of a service account, the
        person's grants as JSON with ``\0`` for the user's number, or None)."""
        entry = self._layouts[key]
        if entry is None:
            h = _h(self.seed, 3, key)
            m = self.m_lo + (h >> 40) % (self.m_hi - self.m_lo + 1)
            u = self.universe
            base = h % u if u else 0
            stride = self.strides[((h >> 32) & 15) % len(self.strides)]
            licence = ((h >> 36) & 0xF) % len(LICENSES)
            regular = tuple(self.position(h, base, stride, k, 0) for k in range(min(m, u)))
            person = (-1 - licence,) + regular[:m - 1] if m else ()
            blob = (",".join('{"account_id":"u\0",' + self.tails[p] for p in person)
                    if self.tails is not None else None)
            entry = self._layouts[key] = (h, licence, base, stride, person, regular[:m], blob)
        return entry


@functools.lru_cache(maxsize=4)
def _grants(seed: int, groups: int, roles: int, workspaces: int, per_user: float) -> _Grants:
    return _Grants(seed, groups, roles, workspaces, per_user)


class Org:
    """The organisation of one spec on its day. Methods are O(1) per record and keep no per-user state."""

    def __init__(self, spec: OrgSpec) -> None:
        self.spec = s = spec
        self.seed, self.day, self.n = s.seed, s.day, s.users
        self.name = ORG_NAMES[s.seed % len(ORG_NAMES)]
        self.domain = self.name.split()[0].lower() + ".example"
        self._t1, self._t2 = _tables(s.seed)
        rate = {k: s.churn * v for k, v in SHARES.items()}
        # Managers (the first eighth of the initial users, a hierarchy) stay; everyone else leaves
        # with the daily hazard that keeps the headcount near ``users``.
        self.manager_pool = max(1, s.users // MANAGER_POOL)
        self.joiners_per_day = s.users * rate["join"]
        stayers = s.users - self.manager_pool
        self.leave_hazard = min(1.0, rate["leave"] * s.users / stayers) if stayers > 0 else 0.0
        self._log_stay = math.log1p(-self.leave_hazard) if 0 < self.leave_hazard < 1 else None
        self.t_rename = _period(rate["rename"])
        self.t_job = _period(rate["job"])
        self.t_login = _period(rate["login"])
        self.t_access = _period(rate["access"])
        # half of the suspension cycles hold an absence: two events per absence -> one event per period
        self.t_susp = _period(rate["suspend"])
        self.max_absence = max(1, min(14, self.t_susp // 2))
        self.t_entity = _period(s.churn * ENTITY_RENAME_SHARE)
        if self.joiners_per_day > 0:
            self._bound = s.users + math.ceil(s.day * self.joiners_per_day) + 1
        else:
            self._bound = s.users
        self.grants = _grants(s.seed, s.groups, s.roles, s.workspaces, s.memberships_per_user)

    # -- randomness ---------------------------------------------------------
    def _word(self, i: int, k: int) -> int:
        """The ``k``-th random 64-bit word of user ``i``."""
        return self._t1[(i + k * _K1) & 0xFFFF] ^ self._t2[((i >> 16) + k * _K2) & 0xFFFF]

    # -- life cycle ----------------------------------------------------------
    def index_bound(self) -> int:
        """Exclusive upper bound of the user indices that may exist on this day."""
        return self._bound

    def join_day(self, i: int) -> int:
        """Day user ``i`` appears: 0 for the initial users, later for joiners."""
        if i < self.n:
            return 0
        return math.floor((i - self.n) / self.joiners_per_day) + 1

    def _life(self, i: int) -> tuple[int, float, int]:
        """(join day, leave day, life word); the leave day is geometric with the daily hazard."""
        h = self._t1[(i + _LIFE * _K1) & 0xFFFF] ^ self._t2[((i >> 16) + _LIFE * _K2) & 0xFFFF]
        if i < self.manager_pool:
            return 0, math.inf, h
        join = 0 if i < self.n else math.floor((i - self.n) / self.joiners_per_day) + 1
        if self._log_stay is not None:
            u = ((h >> 16) + 1) / 281474976710656.0  # (0, 1]
            return join, join + 1 + math.floor(math.log(u) / self._log_stay), h
        return join, (math.inf if self.leave_hazard <= 0 else join + 1), h

    def alive(self, i: int) -> bool:
        if i < 0 or i >= self._bound:
            return False
        join, leave, _ = self._life(i)
        return join <= self.day < leave

    def count_users(self) -> int:
        """Exact headcount on this day (O(users); the server caches it)."""
        d, life = self.day, self._life
        count = 0
        for i in range(self._bound):
            join, leave, _ = life(i)
            if join <= d < leave:
                count += 1
        return count

    def is_service(self, i: int) -> bool:
        return i >= self.manager_pool and (self._word(i, _STATIC) & 0xFFFF) < _SERVICE_CUT

    # -- users -----------------------------------------------------------------
    def user_json(self, i: int) -> str | None:
        """User ``i`` as the demo API renders it (one JSON object), or None when absent on this day."""
        if i < 0 or i >= self._bound:
            return None
        d = self.day
        join, leave, hl = self._life(i)
        if not join <= d < leave:
            return None
        t1, t2, lo, hi = self._t1, self._t2, i & 0xFFFF, i >> 16
        h1 = t1[(lo + _STATIC * _K1) & 0xFFFF] ^ t2[(hi + _STATIC * _K2) & 0xFFFF]
        ha = t1[(lo + _PHASE_A * _K1) & 0xFFFF] ^ t2[(hi + _PHASE_A * _K2) & 0xFFFF]
        hb = t1[(lo + _PHASE_B * _K1) & 0xFFFF] ^ t2[(hi + _PHASE_B * _K2) & 0xFFFF]
        pool = self.manager_pool
        grace = (hl & 0x1F) - 15 if (hl & 0x1F) > 15 else 0  # half the leavers: suspended 1-16 days first
        suspended = (i >= pool and ((h1 >> 16) & 0xFFFF) < _DORMANT_CUT) or (grace and d >= leave - grace)
        t = self.t_susp
        if not suspended and t:
            x = d + (ha >> 42) % t
            hc = t1[(lo + _SUSP * _K1) & 0xFFFF] ^ t2[(hi + _SUSP * _K2) & 0xFFFF] ^ t2[(x // t * 0x9E37) & 0xFFFF]
            suspended = bool(hc & 1) and x % t < 1 + (hc >> 1) % self.max_absence
        t = self.t_job
        hj = t1[(lo + _JOB * _K1) & 0xFFFF] ^ t2[(hi + _JOB * _K2) & 0xFFFF]
        if t:
            hj ^= t2[((d + (ha >> 21) % t) // t * 0x9E37 + 0x1234) & 0xFFFF]
        dept = hj % len(DEPARTMENTS)
        created = join if i >= self.n else -1 - ((hl >> 5) & 0x7FF)
        created_at = _timestamp(created, 32400 + (h1 >> 20) % 28800)
        last_login = "null"
        if ((hb >> 50) & 0xFF) >= _NEVER_LOGIN_CUT:
            login_day = d - (d + hb % self.t_login) % self.t_login if self.t_login else created
            if login_day >= created:
                last_login = f'"{_timestamp(login_day, (i * 2654435761 + login_day * 40503) % 86400)}"'
        status = "suspended" if suspended else "active"
        cost_center = 1000 + dept * 100 + (hj >> 32) % 20
        # managers form a hierarchy: the pool reports within itself, upwards; everyone else to the pool
        boss = (hj >> 24) % (min(pool, i)) if i else -1
        if i >= pool and (h1 & 0xFFFF) < _SERVICE_CUT:
            purpose = SERVICE_PURPOSES[(h1 >> 32) % len(SERVICE_PURPOSES)]
            return _SERVICE_T % (i, purpose, i, purpose, status, created_at, last_login,
                                 DEPARTMENTS[dept][0], cost_center, f',"manager":"u{boss}"')
        given = ((h1 >> 32) & 0xFFFF) % len(GIVEN)
        family0 = (h1 >> 48) % len(FAMILY)
        family = family0
        t = self.t_rename
        if t:
            version = (d + ha % t) // t
            if version:
                family = (t1[(lo + _NAME * _K1) & 0xFFFF] ^ t2[(hi + _NAME * _K2) & 0xFFFF]
                          ^ t2[(version * 0x9E37 + 0x5678) & 0xFFFF]) % len(FAMILY)
        titles = DEPARTMENTS[dept][1]
        gl, fl, g, f = _GIVEN_L[given], _FAMILY_L[family], GIVEN[given], FAMILY[family]
        return _USER_T % (
            i, gl, _FAMILY_L[family0], i, gl, fl, i, self.domain, g, f, g, f, status, created_at, last_login,
            DEPARTMENTS[dept][0], LEVELS[(hj >> 8) % len(LEVELS)], titles[(hj >> 16) % len(titles)],
            cost_center, f'"manager":"u{boss}",' if boss >= 0 else "", LOCATIONS[(hb >> 58) % len(LOCATIONS)],
            100000 + i,
        )

    def user(self, i: int) -> dict | None:
        """User ``i`` as a dict (the parsed ``user_json``), or None when absent on this day."""
        raw = self.user_json(i)
        return None if raw is None else json.loads(raw)

    def users_page_json(self, start: int, limit: int, stop: int | None = None) -> tuple[list[str], int | None]:
        """Up to ``limit`` users (JSON objects) with index in [start, stop); returns them and
        the index to continue from (None at the end)."""
        bound = self._bound if stop is None else min(stop, self._bound)
        out: list[str] = []
        i = max(start, 0)
        bound_here = min(bound, i + limit + _SCAN_BUDGET)  # a page may come back short, never slow
        render = self.user_json
        while i < bound_here and len(out) < limit:
            u = render(i)
            if u is not None:
                out.append(u)
            i += 1
        return out, (i if i < bound else None)

    def users_page(self, start: int, limit: int, stop: int | None = None) -> tuple[list[dict], int | None]:
        page, nxt = self.users_page_json(start, limit, stop)
        return [json.loads(u) for u in page], nxt

    # -- memberships -------------------------------------------------------------
    def entitlement_of(self, t: int) -> tuple[str, str, str, str]:
        """(kind, entitlement_id, resource_type, resource_id) of grant position ``t``."""
        return self.grants.entitlement_of(t)

    def _grants_of(self, i: int) -> tuple[tuple[int, ...] | list[int] | None, str | None]:
        """(positions, pre-rendered JSON of them or None) of user ``i``'s grants; (None, None) when absent."""
        if i < 0 or i >= self._bound:
            return None, None
        d = self.day
        join, leave, _ = self._life(i)
        if not join <= d < leave:
            return None, None
        t1, t2, lo, hi = self._t1, self._t2, i & 0xFFFF, i >> 16
        hl = t1[(lo + _LAYOUT * _K1) & 0xFFFF] ^ t2[(hi + _LAYOUT * _K2) & 0xFFFF]
        grants = self.grants
        h, licence, base, stride, person, service, blob = grants.layout(hl % grants.count)
        human = i < self.manager_pool or ((t1[(lo + _STATIC * _K1) & 0xFFFF] ^ t2[(hi + _STATIC * _K2) & 0xFFFF])
                                          & 0xFFFF) >= _SERVICE_CUT
        positions = person if human else service
        blob = blob if human else None
        t = self.t_access
        if not positions or not t:
            return positions, blob
        hb = t1[(lo + _PHASE_B * _K1) & 0xFFFF] ^ t2[(hi + _PHASE_B * _K2) & 0xFFFF]
        events = (d + (hb >> 21) % t) // t
        if not events:
            return positions, blob
        m, rot = len(positions), (hb >> 42) & 0xFF
        out = list(positions)
        for j in range(m) if events >= m else [(rot + e) % m for e in range(events)]:
            moves = (events - (j - rot) % m - 1) // m + 1
            if human and j == 0:
                out[0] = -1 - (licence + moves) % len(LICENSES)
            else:
                out[j] = grants.position(h, base, stride, j - human, moves)
        return out, None

    def slots(self, i: int) -> tuple[int, ...] | list[int] | None:
        """User ``i``'s grants as positions (``-1 - k`` for licence ``k``); None when absent.

        People hold one licence, service accounts none, then the grants of their layout
        (see ``_Grants``). Access changes rotate over a user's grants: change ``e``
        (1-based) moves grant ``(e - 1 + rot) % m`` to another entitlement of its block.
        """
        return self._grants_of(i)[0]

    def memberships(self, i: int) -> list[tuple[str, str, str]]:
        """User ``i``'s grants as (entitlement_id, resource_type, resource_id)."""
        return [self.entitlement_of(t)[1:] for t in self.slots(i) or ()]

    def memberships_page_json(self, start: int, slot: int, limit: int,
                              stop: int | None = None) -> tuple[list[str], tuple[int, int] | None]:
        """Up to ``limit`` grants from (user ``start``, grant ``slot``), users < ``stop``, as JSON
        chunks to join with commas (a chunk may hold several grants); returns them and the
        (user, slot) to continue from (None at the end)."""
        bound = self._bound if stop is None else min(stop, self._bound)
        out: list[str] = []
        tails = self.grants.tails
        if tails is None:  # too many entitlements to pre-render: render each grant
            tails = _Tails(self.grants)
        i, slot, count = max(start, 0), max(slot, 0), 0
        bound_here = min(bound, i + limit + _SCAN_BUDGET)  # a page may come back short, never slow
        grants_of = self._grants_of
        while i < bound_here:
            positions, blob = grants_of(i)
            if positions:
                n, room = len(positions), limit - count
                if blob is not None and not slot and n <= room:
                    out.append(blob.replace("\0", str(i)))  # the common case: one C call per user
                    count += n
                else:
                    head = f'{{"account_id":"u{i}",'
                    if n - slot > room:
                        out += [head + tails[p] for p in positions[slot:slot + room]]
                        return out, (i, slot + room)
                    out += [head + tails[p] for p in (positions[slot:] if slot else positions)]
                    count += n - slot
            slot = 0
            i += 1
        return out, ((i, 0) if i < bound else None)

    # -- groups, workspaces, roles, licences -----------------------------------
    def _entity_name(self, domain: int, k: int, base: str, pool: tuple[str, ...]) -> str:
        if not self.t_entity:
            return base
        version = (self.day + _h(self.seed, domain, k, 0) % self.t_entity) // self.t_entity
        return base if version == 0 else f"{base} {pool[_h(self.seed, domain, k, version) % len(pool)]}"

    def group(self, k: int) -> dict:
        base = TEAMS[k % len(TEAMS)] + (f" {k // len(TEAMS) + 1}" if k >= len(TEAMS) else "")
        h = _h(self.seed, _GROUP, k)
        parent = f"g{(h >> 8) % k}" if k > 0 and (h & 0xFF) < 26 else None  # ~1 in 10 is nested
        return {
            "id": f"g{k}",
            "name": self._entity_name(_GROUP, k, base, TEAM_SUFFIXES),
            "description": f"Members of {base}",
            "parent_id": parent,
            "created_at": _timestamp(-1 - (h >> 20) % 1500, 36000),
        }

    def workspace(self, k: int) -> dict:
        base = PROJECTS[k % len(PROJECTS)] + (f" {k // len(PROJECTS) + 1}" if k >= len(PROJECTS) else "")
        h = _h(self.seed, _WS, k)
        parent = f"w{(h >> 8) % k}" if k > 0 and (h & 0xFF) < 154 else None  # a tree, ~60% nested
        return {
            "id": f"w{k}",
            "name": self._entity_name(_WS, k, base, WORKSPACE_SUFFIXES),
            "description": f"Workspace of project {base}",
            "parent_id": parent,
            "created_at": _timestamp(-1 - (h >> 20) % 1500, 39600),
        }

    @staticmethod
    def role(r: int) -> dict:
        if r < len(ROLES):
            key, name, desc = ROLES[r]
        else:
            key, name, desc = role_key(r), f"Custom role {r}", "A custom role."
        return {"id": key, "name": name, "description": desc, "scope": "workspace"}

    @staticmethod
    def licenses() -> list[dict]:
        return [{"id": lid, "name": name, "description": desc} for lid, name, desc in LICENSES]


class _Tails:
    """``tails[p]`` rendered on demand (for universes too large to pre-render)."""

    def __init__(self, grants: _Grants) -> None:
        self.grants = grants

    def __getitem__(self, t: int) -> str:
        return self.grants.tail(t)


@functools.lru_cache(maxsize=16)
def get_org(spec: OrgSpec) -> Org:
    """The (immutable) Org of a spec, cached so a server builds each once."""
    return Org(spec)
