"""Identity resolution: typed identifiers joined into one customer, by union-find. Plain Python.

An event that carries several identifiers links them. The resolution is a function of the *set*
of links, not of their arrival order: a component's links are replayed in event-time order
(ties by event id) whenever one of them arrives, and each link is accepted unless it breaks a
rule given the links accepted before it. So redelivery, duplicates and reordering all give the
same customers. The survivor is deterministic: a customer's id derives from its oldest
identifier: the one first seen earliest *in a link* (an event carrying two identifiers or more),
ties by name. An event with one identifier links nothing and names nothing, so it need not pass
through the graph at all: it goes straight to its identifier's customer (:class:`AliasReplica`).

Rules: junk values never link; two different user ids never merge (the conflict is recorded
for review); per-type limits stop a shared device or phone from collapsing many customers into
one; a split removes a wrong link between two identifiers for good.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

import orjson

from tracker.touchpoint import PREVIOUS_SALT_PROPERTIES

__all__ = [
    "JUNK_VALUES",
    "UNROUTED",
    "AliasReplica",
    "Conflict",
    "Identifier",
    "IdentityGraph",
    "IdentityResolver",
    "IdentityRules",
    "Link",
    "Move",
    "Resolution",
    "Route",
    "alias_record",
    "customer_id_for",
    "identifiers_of",
    "is_junk",
    "link_key",
    "link_record",
]

_NEVER: Final = datetime.max.replace(tzinfo=UTC)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_CUSTOMER_NAMESPACE: Final = uuid.UUID("2f6b8f3e-7d0c-4b9a-a8e1-5c3d9e0f4a21")
JUNK_VALUES: Final = frozenset(
    {
        "",
        "null",
        "undefined",
        "none",
        "nil",
        "nan",
        "0",
        "-1",
        "false",
        "true",
        "anonymous",
        "anon",
        "unknown",
        "guest",
        "n/a",
        "na",
        "test",
        "[object object]",
        "00000000-0000-0000-0000-000000000000",
    }
)


@dataclass(frozen=True, slots=True, order=True)
class Identifier:
    """``kind`` is anon, user, email (a hash), phone (a hash), click, pool or crm:<system>."""

    kind: str
    value: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"


def is_junk(value: str) -> bool:
    stripped = value.strip().lower()
    return stripped in JUNK_VALUES or (len(set(stripped)) == 1 and len(stripped) > 3)


@dataclass(frozen=True, slots=True)
class Link:
    """The identifiers one event carries, at its event time."""

    event_id: str
    ts: datetime
    identifiers: tuple[Identifier, ...]

    @classmethod
    def of(cls, event_id: str, ts: datetime, identifiers: Iterable[Identifier]) -> Link:
        clean = sorted({i for i in identifiers if not is_junk(i.value)})
        return cls(event_id, ts, tuple(clean))

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.ts, self.event_id)


@dataclass(frozen=True, slots=True)
class IdentityRules:
    """The most identifiers of each kind one customer may hold; kinds not named are unlimited."""

    limits: Mapping[str, int] = field(
        default_factory=lambda: {"user": 1, "email": 5, "phone": 5, "anon": 100, "click": 500}
    )


@dataclass(frozen=True, slots=True)
class Conflict:
    """A link that was refused: it would have broken ``rule``. Kept for review."""

    event_id: str
    ts: datetime
    left: str
    right: str
    rule: str


class Move(NamedTuple):
    """An identifier's customer before and after a change. ``new``: first seen in a link just
    now; its ``before`` is its own customer, where events carrying it alone went."""

    before: str
    after: str
    new: bool = False


@functools.lru_cache(maxsize=1 << 16)
def customer_id_for(oldest: Identifier) -> str:
    """Cached: every replay of a component asks again for each identifier in it."""
    return str(uuid.uuid5(_CUSTOMER_NAMESPACE, oldest.key))


class IdentityGraph:
    """Every link seen, and the customers they resolve to. ``add`` answers which identifiers
    changed customer, so a caller can publish versioned alias records for just those."""

    def __init__(self, rules: IdentityRules | None = None) -> None:
        self.rules = rules or IdentityRules()
        self._links: dict[str, Link] = {}
        self._links_of: dict[Identifier, set[str]] = defaultdict(set)
        self._splits: set[frozenset[Identifier]] = set()
        self._customer: dict[Identifier, str] = {}
        self._conflicts: dict[tuple[str, str, str], Conflict] = {}

    def add(self, link: Link) -> dict[Identifier, str]:
        """Record a link; return each identifier whose customer changed, with its new customer."""
        return {i: move.after for i, move in self.add_moves(link).items()}

    def add_moves(self, link: Link) -> dict[Identifier, Move]:
        """Record a link; return each identifier whose customer changed, from which to which.
        A link of one identifier links nothing and names nothing: it is not kept."""
        # A later version of an event (a call learnt better) may carry more identifiers: a link
        # is one event's one identifier set.
        key = f"{link.event_id}|{'|'.join(i.key for i in link.identifiers)}"
        if key in self._links or len(link.identifiers) < 2:
            return {}
        self._links[key] = link
        for identifier in link.identifiers:
            self._links_of[identifier].add(key)
        return self._resolve(set(link.identifiers))

    def split(self, left: Identifier, right: Identifier) -> dict[Identifier, str]:
        """Never link these two again, whatever events say, and resolve afresh."""
        return {i: move.after for i, move in self.split_moves(left, right).items()}

    def split_moves(self, left: Identifier, right: Identifier) -> dict[Identifier, Move]:
        self._splits.add(frozenset((left, right)))
        return self._resolve({left, right})

    @property
    def splits(self) -> list[tuple[Identifier, Identifier]]:
        return sorted(tuple(sorted(pair)) for pair in self._splits)  # type: ignore[misc]

    def customer_of(self, identifier: Identifier) -> str:
        """The customer an identifier belongs to; an identifier never seen is a customer of its own."""
        return self._customer.get(identifier) or customer_id_for(identifier)

    def identifiers_of(self, customer_id: str) -> list[Identifier]:
        return sorted(i for i, c in self._customer.items() if c == customer_id)

    @property
    def conflicts(self) -> list[Conflict]:
        return sorted(self._conflicts.values(), key=lambda c: (c.ts, c.event_id, c.left, c.right))

    def _resolve(self, touched: set[Identifier]) -> dict[Identifier, Move]:
        """Replay, in event-time order, every link reachable from ``touched`` through any link."""
        region = self._reachable(touched)
        links = sorted(
            {self._links[k] for i in region for k in self._links_of[i]},
            key=lambda link: (link.order, link.identifiers),
        )
        first_seen: dict[Identifier, tuple[datetime, str]] = {}
        for link in links:
            for identifier in link.identifiers:
                first_seen.setdefault(identifier, (link.ts, identifier.key))
        parent = {i: i for i in region}
        members: dict[Identifier, list[Identifier]] = {i: [i] for i in region}

        def root(i: Identifier) -> Identifier:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        replayed = {link.event_id for link in links}
        for key in [k for k in self._conflicts if k[0] in replayed]:
            del self._conflicts[key]
        for link in links:
            anchor = link.identifiers[0]
            for other in link.identifiers[1:]:
                a, b = root(anchor), root(other)
                if a == b:
                    continue
                refusal = self._refusal(members[a], members[b])
                if refusal:
                    conflict = Conflict(link.event_id, link.ts, anchor.key, other.key, refusal)
                    self._conflicts[(link.event_id, anchor.key, other.key)] = conflict
                    continue
                keep, gone = (a, b) if first_seen[a] <= first_seen[b] else (b, a)
                parent[gone] = keep
                members[keep].extend(members.pop(gone))
        changed: dict[Identifier, Move] = {}
        for group in members.values():
            oldest = min(group, key=lambda i: first_seen.get(i, (_NEVER, i.key)))
            customer = customer_id_for(oldest)
            for identifier in group:
                before = self._customer.get(identifier)
                if before != customer:
                    self._customer[identifier] = customer
                    changed[identifier] = Move(
                        before or customer_id_for(identifier), customer, new=before is None
                    )
        return changed

    def _refusal(self, left: list[Identifier], right: list[Identifier]) -> str:
        for a in left:
            for b in right:
                if frozenset((a, b)) in self._splits:
                    return "split"
        counts: dict[str, int] = defaultdict(int)
        for identifier in (*left, *right):
            counts[identifier.kind] += 1
        for kind, count in counts.items():
            limit = self.rules.limits.get(kind)
            if limit is not None and count > limit:
                return "two user ids" if kind == "user" else f"more than {limit} {kind} identifiers"
        return ""

    def _reachable(self, start: set[Identifier]) -> set[Identifier]:
        seen, frontier = set(start), list(start)
        while frontier:
            identifier = frontier.pop()
            for key in self._links_of.get(identifier, ()):
                for other in self._links[key].identifiers:
                    if other not in seen:
                        seen.add(other)
                        frontier.append(other)
        return seen


# -- resolving events --------------------------------------------------------------------------

# The identifier an event is routed by, when it carries several: the most durable first.
_PRIORITY: Final = ("user", "crm", "email", "phone", "anon", "click")
CRM_PROPERTY_PREFIX: Final = "crm."


def identifiers_of(
    anonymous_id: str,
    user_id: str,
    email_hash: str,
    phone_hash: str,
    click_id: str,
    properties: Mapping[str, str],
) -> list[Identifier]:
    """The typed identifiers a touchpoint carries. CRM ids come as ``crm.<system>`` properties;
    during a salt rotation, the email's and phone's hashes under the previous salt come as
    ``previous_salt.*`` properties, and link the two hashes into one customer."""
    found = [
        Identifier(kind, value)
        for kind, value in (
            ("anon", anonymous_id),
            ("user", user_id),
            ("email", email_hash),
            ("phone", phone_hash),
            ("click", click_id),
        )
        if value
    ]
    for name, value in properties.items():
        if name.startswith(CRM_PROPERTY_PREFIX) and value:
            found.append(Identifier(f"crm:{name[len(CRM_PROPERTY_PREFIX) :]}", value))
    for kind, name in PREVIOUS_SALT_PROPERTIES.items():
        if previous := properties.get(name):
            found.append(Identifier(kind, previous))
    return found


def _priority(identifier: Identifier) -> tuple[int, str, str]:
    kind = identifier.kind.split(":", 1)[0]
    rank = _PRIORITY.index(kind) if kind in _PRIORITY else len(_PRIORITY)
    return (rank, identifier.kind, identifier.value)


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where an event goes, and what its link changed."""

    customer_id: str
    primary: str
    """The key of the identifier the event is routed by."""
    moves: dict[str, dict[str, str]]
    """Customer before → {identifier key: customer after}, for identifiers that changed."""
    aliases: dict[Identifier, str]
    """Every identifier whose customer changed (or that is new), with its customer now."""
    conflicts: list[Conflict]
    """Refusals first seen now."""
    replicated: dict[Identifier, str] = field(default_factory=dict)
    """The part of ``aliases`` that says something an :class:`AliasReplica` does not assume
    already: all but identifiers first seen now that stay their own customer."""


class IdentityResolver:
    """An :class:`IdentityGraph` fed one event at a time. A link repeating an identifier set
    already seen at an earlier time changes nothing and is skipped, so the common event (a
    known visitor again) costs a lookup, and the graph holds one link per identifier set."""

    def __init__(self, rules: IdentityRules | None = None) -> None:
        self.graph = IdentityGraph(rules)
        self._earliest: dict[frozenset[Identifier], tuple[datetime, str]] = {}
        self._reported: set[tuple[str, str, str]] = set()

    def is_new(self, link: Link) -> bool:
        """Whether the link can change anything: two identifiers or more, in a set never seen
        at this time or earlier (the rule :meth:`AliasReplica.route` applies too)."""
        seen = self._earliest.get(frozenset(link.identifiers))
        return len(link.identifiers) > 1 and (seen is None or link.order < seen)

    def resolve(self, event_id: str, ts: datetime, identifiers: Iterable[Identifier]) -> Resolution:
        link = Link.of(event_id, ts, identifiers)
        if not link.identifiers:  # nothing to join by: the event is a customer of its own
            own = Identifier("event", event_id)
            return Resolution(customer_id_for(own), own.key, {}, {}, [])
        moves: dict[Identifier, Move] = {}
        conflicts: list[Conflict] = []
        if self.is_new(link):
            self._earliest[frozenset(link.identifiers)] = link.order
            moves = self.graph.add_moves(link)
            conflicts = self._new_conflicts()
        primary = min(link.identifiers, key=_priority)
        return _resolution(self.graph.customer_of(primary), primary.key, moves, conflicts)

    def split(self, left: Identifier, right: Identifier) -> Resolution:
        moves = self.graph.split_moves(left, right)
        return _resolution(self.graph.customer_of(left), left.key, moves, self._new_conflicts())

    def _new_conflicts(self) -> list[Conflict]:
        fresh = []
        for conflict in self.graph.conflicts:
            key = (conflict.event_id, conflict.left, conflict.right)
            if key not in self._reported:
                self._reported.add(key)
                fresh.append(conflict)
        return fresh


def _resolution(
    customer: str, primary: str, moves: Mapping[Identifier, Move], conflicts: list[Conflict]
) -> Resolution:
    # An identifier new to the graph may have had events on its own customer (they came alone,
    # by the direct path): a regroup sends them on, so new moves are grouped like any other.
    grouped: dict[str, dict[str, str]] = defaultdict(dict)
    for identifier, move in moves.items():
        if move.before != move.after:
            grouped[move.before][identifier.key] = move.after
    return Resolution(
        customer,
        primary,
        dict(grouped),
        {i: m.after for i, m in moves.items()},
        conflicts,
        {i: m.after for i, m in moves.items() if not (m.new and m.after == customer_id_for(i))},
    )


# -- the direct path ---------------------------------------------------------------------------

UNROUTED: Final = -1
"""The routing position of an identifier no decision of the identity log has moved: before
every identity-log position (the first record's is 0)."""
_LINK_PREFIX: Final = "links|"


def link_key(identifiers: Iterable[Identifier]) -> str:
    """The aliases-topic key of an identifier set seen in a link. Never an identifier key (those
    are ``kind:value``); hashed, so that the key stays short whatever the set."""
    joined = "|".join(sorted(i.key for i in identifiers))
    return _LINK_PREFIX + hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Route:
    """Where the direct path sends an event: its customer as far as this worker knows, the
    identifier it is routed by, and the identity-log position of the decision behind it."""

    customer_id: str
    primary: str
    position: int


class AliasReplica:
    """What the identity log has decided, as a worker reads it from the compacted aliases topic:
    identifier → (customer, version) for identifiers that left their own customer, and the
    earliest (time, event) each identifier set was seen in a link.

    :meth:`route` answers for an event that cannot change the graph: one identifier (or none),
    or an identifier set the graph saw at this event's time or earlier (the graph would skip it,
    :meth:`IdentityResolver.is_new`). Anything else needs the identity log: ``None``.

    The replica may lag the log by any amount. A lag can only send an event to a customer its
    identifier has since left, with the older position; the journey step's forwards pass it on
    (agents/customer.py, ``forward_for``), as for any event routed before a move. Link sets are
    only ever added or seen earlier, so a lag never makes an event look redundant that is not.
    """

    def __init__(self) -> None:
        self._aliases: dict[str, tuple[str, int]] = {}
        self._links: dict[str, tuple[int, str]] = {}

    def __len__(self) -> int:
        return len(self._aliases) + len(self._links)

    def apply(self, topic: str, key: str, value: bytes | None) -> None:
        """One record of the aliases topic (``CompactedState``'s apply). Raises ``KeyError``,
        ``TypeError`` or ``ValueError`` for a malformed record."""
        if key.startswith(_LINK_PREFIX):
            if value is None:
                self._links.pop(key, None)
                return
            wire = orjson.loads(value)
            order = (_micros(datetime.fromisoformat(wire["ts"])), str(wire["event_id"]))
            known = self._links.get(key)
            self._links[key] = order if known is None else min(known, order)
            return
        if value is None:
            self._aliases.pop(key, None)
            return
        wire = orjson.loads(value)
        version = int(wire["version"])
        known_alias = self._aliases.get(key)
        if known_alias is None or known_alias[1] <= version:
            self._aliases[key] = (str(wire["customer_id"]), version)

    def route(self, event_id: str, ts: datetime, identifiers: Iterable[Identifier]) -> Route | None:
        link = Link.of(event_id, ts, identifiers)
        if not link.identifiers:
            own = Identifier("event", event_id)
            return Route(customer_id_for(own), own.key, UNROUTED)
        if len(link.identifiers) > 1:
            seen = self._links.get(link_key(link.identifiers))
            if seen is None or (_micros(ts), event_id) < seen:
                return None
        primary = min(link.identifiers, key=_priority)
        known = self._aliases.get(primary.key)
        if known is None:
            return Route(customer_id_for(primary), primary.key, UNROUTED)
        return Route(known[0], primary.key, known[1])


def link_record(link: Link, version: int) -> bytes:
    """The aliases-topic value saying that ``link``'s identifier set was seen at its time."""
    return orjson.dumps({"ts": link.ts, "event_id": link.event_id, "version": version})


def alias_record(identifier: Identifier, customer: str, version: int) -> bytes:
    """The aliases-topic value of an identifier's customer as of identity-log ``version``."""
    return orjson.dumps(
        {
            "identifier": identifier.key,
            "customer_id": customer,
            "own_customer_id": customer_id_for(identifier),
            "version": version,
        }
    )


def _micros(ts: datetime) -> int:
    return (ts - _EPOCH) // _MICROSECOND
