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

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

__all__ = [
    "JUNK_VALUES",
    "Conflict",
    "Identifier",
    "IdentityGraph",
    "IdentityRules",
    "Link",
    "customer_id_for",
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


def customer_id_for(oldest: Identifier) -> str:
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
        if link.event_id in self._links or not link.identifiers:
            return {}
        self._links[link.event_id] = link
        for identifier in link.identifiers:
            self._links_of[identifier].add(link.event_id)
        return self._resolve(set(link.identifiers))

    def split(self, left: Identifier, right: Identifier) -> dict[Identifier, str]:
        """Never link these two again, whatever events say, and resolve afresh."""
        self._splits.add(frozenset((left, right)))
        return self._resolve({left, right})

    def customer_of(self, identifier: Identifier) -> str:
        """The customer an identifier belongs to; an identifier never seen is a customer of its own."""
        return self._customer.get(identifier) or customer_id_for(identifier)

    def identifiers_of(self, customer_id: str) -> list[Identifier]:
        return sorted(i for i, c in self._customer.items() if c == customer_id)

    @property
    def conflicts(self) -> list[Conflict]:
        return sorted(self._conflicts.values(), key=lambda c: (c.ts, c.event_id, c.left, c.right))

    def _resolve(self, touched: set[Identifier]) -> dict[Identifier, str]:
        """Replay, in event-time order, every link reachable from ``touched`` through any link."""
        region = self._reachable(touched)
        links = sorted(
            {self._links[e] for i in region for e in self._links_of[i]}, key=lambda link: link.order
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
        changed: dict[Identifier, str] = {}
        for group in members.values():
            oldest = min(group, key=lambda i: first_seen.get(i, (_NEVER, i.key)))
            customer = customer_id_for(oldest)
            for identifier in group:
                if self._customer.get(identifier) != customer:
                    self._customer[identifier] = customer
                    changed[identifier] = customer
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
            for event_id in self._links_of.get(identifier, ()):
                for other in self._links[event_id].identifiers:
                    if other not in seen:
                        seen.add(other)
                        frontier.append(other)
        return seen
