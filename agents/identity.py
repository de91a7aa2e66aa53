"""Identity resolution: typed identifiers joined into one customer, by union-find. Plain Python.

An event that carries several identifiers links them. The resolution is a function of the *set*
of links, not of their arrival order: a component's links are replayed in event-time order
(ties by event id) whenever one of them arrives, and each link is accepted unless it breaks a
rule given the links accepted before it. So redelivery, duplicates and reordering all give the
same customers. The survivor is deterministic: a customer's id derives from its oldest
identifier (first seen earliest, ties by name).

Rules: junk values never link; two different user ids never merge (the conflict is recorded
for review); per-type limits stop a shared device or phone from collapsing many customers into
one; a split removes a wrong link between two identifiers for good.
"""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, NamedTuple

__all__ = [
    "JUNK_VALUES",
    "Conflict",
    "Identifier",
    "IdentityGraph",
    "IdentityResolver",
    "IdentityRules",
    "Link",
    "Move",
    "Resolution",
    "customer_id_for",
    "identifiers_of",
    "is_junk",
]

_NEVER: Final = datetime.max.replace(tzinfo=UTC)
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
    """An identifier's customer before and after a change. ``new``: first seen just now, so
    nothing was ever routed to its ``before``."""

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
        """Record a link; return each identifier whose customer changed, from which to which."""
        # A later version of an event (a call learnt better) may carry more identifiers: a link
        # is one event's one identifier set.
        key = f"{link.event_id}|{'|'.join(i.key for i in link.identifiers)}"
        if key in self._links or not link.identifiers:
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
    """The typed identifiers a touchpoint carries. CRM ids come as ``crm.<system>`` properties."""
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


class IdentityResolver:
    """An :class:`IdentityGraph` fed one event at a time. A link repeating an identifier set
    already seen at an earlier time changes nothing and is skipped, so the common event (a
    known visitor again) costs a lookup, and the graph holds one link per identifier set."""

    def __init__(self, rules: IdentityRules | None = None) -> None:
        self.graph = IdentityGraph(rules)
        self._earliest: dict[frozenset[Identifier], tuple[datetime, str]] = {}
        self._reported: set[tuple[str, str, str]] = set()

    def is_new(self, link: Link) -> bool:
        seen = self._earliest.get(frozenset(link.identifiers))
        return bool(link.identifiers) and (seen is None or link.order < seen)

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
        return Resolution(
            self.graph.customer_of(primary),
            primary.key,
            _grouped(moves),
            {i: m.after for i, m in moves.items()},
            conflicts,
        )

    def split(self, left: Identifier, right: Identifier) -> Resolution:
        moves = self.graph.split_moves(left, right)
        return Resolution(
            self.graph.customer_of(left),
            left.key,
            _grouped(moves),
            {i: m.after for i, m in moves.items()},
            self._new_conflicts(),
        )

    def _new_conflicts(self) -> list[Conflict]:
        fresh = []
        for conflict in self.graph.conflicts:
            key = (conflict.event_id, conflict.left, conflict.right)
            if key not in self._reported:
                self._reported.add(key)
                fresh.append(conflict)
        return fresh


def _grouped(moves: Mapping[Identifier, Move]) -> dict[str, dict[str, str]]:
    grouped: dict[str, dict[str, str]] = defaultdict(dict)
    for identifier, move in moves.items():
        if move.before != move.after and not move.new:
            grouped[move.before][identifier.key] = move.after
    return dict(grouped)
