"""Identity resolution: the same customers for any arrival order, duplicates and redelivery."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.identity import Identifier, IdentityGraph, IdentityRules, Link, customer_id_for, is_junk

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def anon(v: str) -> Identifier:
    return Identifier("anon", v)


def user(v: str) -> Identifier:
    return Identifier("user", v)


def email(v: str) -> Identifier:
    return Identifier("email", v)


def phone(v: str) -> Identifier:
    return Identifier("phone", v)


def link(event_id: str, minute: int, *identifiers: Identifier) -> Link:
    return Link.of(event_id, T0 + timedelta(minutes=minute), identifiers)


# A small alphabet, so that random links collide, chain and conflict often.
identifier_strategy = st.builds(
    Identifier,
    st.sampled_from(["anon", "user", "email", "phone"]),
    st.sampled_from(["a", "b", "c", "d", "e"]),
)
links_strategy = st.lists(
    st.builds(
        lambda n, minute, ids: Link.of(f"ev{n}", T0 + timedelta(minutes=minute), ids),
        st.integers(0, 10_000),
        st.integers(0, 500),
        st.lists(identifier_strategy, min_size=1, max_size=3),
    ),
    max_size=30,
    unique_by=lambda item: item.event_id,
)


def resolved(
    links: list[Link], rules: IdentityRules | None = None
) -> tuple[dict[Identifier, str], list[object]]:
    graph = IdentityGraph(rules)
    for item in links:
        graph.add(item)
    everyone = {i for item in links for i in item.identifiers}
    return {i: graph.customer_of(i) for i in everyone}, graph.conflicts


@settings(max_examples=300, deadline=None)
@given(links_strategy, st.randoms(use_true_random=False))
def test_any_arrival_order_and_any_duplicates_give_the_same_customers(
    links: list[Link], rng: random.Random
) -> None:
    arrived = links + [rng.choice(links) for _ in range(len(links) // 2)] if links else []
    rng.shuffle(arrived)
    assert resolved(arrived) == resolved(sorted(links, key=lambda item: item.order))


@settings(max_examples=300, deadline=None)
@given(links_strategy)
def test_no_customer_holds_two_user_ids_or_more_than_its_limits(links: list[Link]) -> None:
    rules = IdentityRules(limits={"user": 1, "email": 2, "phone": 2})
    customers, _ = resolved(links, rules)
    per_customer: dict[str, Counter[str]] = {}
    for identifier, customer in customers.items():
        per_customer.setdefault(customer, Counter())[identifier.kind] += 1
    for counts in per_customer.values():
        assert counts["user"] <= 1 and counts["email"] <= 2 and counts["phone"] <= 2


@settings(max_examples=300, deadline=None)
@given(links_strategy)
def test_a_customer_is_named_after_its_oldest_identifier(links: list[Link]) -> None:
    customers, _ = resolved(links)
    # First seen in a link: an event with one identifier names nothing.
    first_seen: dict[Identifier, tuple[datetime, str]] = {}
    for item in sorted(links, key=lambda item: item.order):
        for identifier in item.identifiers if len(item.identifiers) > 1 else ():
            first_seen.setdefault(identifier, (item.ts, identifier.key))
    for customer in set(customers.values()):
        group = [i for i, c in customers.items() if c == customer]
        oldest = min(group, key=lambda i: first_seen.get(i, (datetime.max.replace(tzinfo=UTC), "")))
        assert customer == customer_id_for(oldest)


def test_an_email_joins_a_browser_to_a_known_user() -> None:
    graph = IdentityGraph()
    graph.add(link("visit", 0, anon("laptop")))
    graph.add(link("signup", 5, anon("laptop"), email("e1")))
    changed = graph.add(link("login", 60, email("e1"), user("u1"), anon("phone")))
    assert (
        graph.customer_of(user("u1"))
        == graph.customer_of(anon("laptop"))
        == customer_id_for(anon("laptop"))
    )
    assert changed == {
        user("u1"): customer_id_for(anon("laptop")),
        anon("phone"): customer_id_for(anon("laptop")),
    }


def test_two_user_ids_never_merge_and_the_conflict_is_kept_for_review() -> None:
    graph = IdentityGraph()
    graph.add(link("one", 0, anon("shared-tablet"), user("alice")))
    graph.add(link("two", 10, anon("shared-tablet"), user("bob")))
    assert graph.customer_of(user("alice")) != graph.customer_of(user("bob"))
    assert graph.customer_of(anon("shared-tablet")) == graph.customer_of(user("alice"))
    [conflict] = graph.conflicts
    assert (conflict.event_id, conflict.rule) == ("two", "two user ids")


def test_a_late_earlier_link_changes_who_got_there_first() -> None:
    graph = IdentityGraph()
    graph.add(link("later", 10, anon("tablet"), user("bob")))
    assert graph.customer_of(anon("tablet")) == graph.customer_of(user("bob"))
    changed = graph.add(link("earlier", 0, anon("tablet"), user("alice")))  # arrived late
    assert (
        graph.customer_of(anon("tablet"))
        == graph.customer_of(user("alice"))
        != graph.customer_of(user("bob"))
    )
    # The tablet, the oldest identifier either way, keeps its customer: Alice joins it, Bob leaves.
    assert changed == {
        user("alice"): customer_id_for(anon("tablet")),
        user("bob"): customer_id_for(user("bob")),
    }


def test_junk_values_never_link_anything() -> None:
    graph = IdentityGraph()
    for n, value in enumerate(["null", "undefined", "0", "anonymous", "", "  NULL ", "00000000"]):
        graph.add(link(f"j{n}", n, anon(value), user(f"u{n}")))
    assert len({graph.customer_of(user(f"u{n}")) for n in range(7)}) == 7
    assert is_junk("undefined") and not is_junk("a1b2")


def test_a_shared_phone_stops_collapsing_customers_at_its_limit() -> None:
    graph = IdentityGraph(IdentityRules(limits={"user": 1, "email": 2, "phone": 1}))
    for n in range(4):
        graph.add(link(f"call{n}", n, phone("+reception"), email(f"e{n}")))
    customers = {graph.customer_of(email(f"e{n}")) for n in range(4)}
    assert len(customers) == 3  # the first two emails joined the phone, then the limit held
    assert {c.rule for c in graph.conflicts} == {"more than 2 email identifiers"}


def test_a_split_removes_a_wrong_link_and_recomputes() -> None:
    graph = IdentityGraph()
    graph.add(link("a", 0, anon("kiosk"), email("e1")))
    graph.add(link("b", 5, anon("kiosk"), email("e2")))
    assert graph.customer_of(email("e1")) == graph.customer_of(email("e2"))
    changed = graph.split(anon("kiosk"), email("e2"))
    assert graph.customer_of(email("e2")) != graph.customer_of(email("e1"))
    assert changed == {email("e2"): customer_id_for(email("e2"))}
    graph.add(link("c", 9, anon("kiosk"), email("e2")))  # the same wrong link again stays split
    assert graph.customer_of(email("e2")) != graph.customer_of(email("e1"))


def test_a_later_version_of_an_event_links_what_it_learnt() -> None:
    graph = IdentityGraph()
    graph.add(link("call-1", 0, phone("+1555")))
    graph.add(link("visit", 5, anon("laptop")))
    # The call's record converges: a pool reservation names the web visitor it came from.
    graph.add(link("call-1", 0, phone("+1555"), anon("laptop")))
    assert graph.customer_of(anon("laptop")) == graph.customer_of(phone("+1555"))


def test_an_identifier_first_linked_leaves_its_own_customer_with_a_regroup() -> None:
    from agents.identity import IdentityResolver

    resolver = IdentityResolver()
    alone = resolver.resolve("newsletter", T0, [email("e1")])
    assert alone.customer_id == customer_id_for(email("e1")) and not alone.aliases
    resolver.resolve("visit", T0 + timedelta(minutes=1), [anon("laptop")])
    joined = resolver.resolve("signup", T0 + timedelta(minutes=5), [anon("laptop"), email("e1")])
    # The email's first event went to its own customer by the direct path, so the link that
    # joins it to the laptop (named first in the link, the earlier key) sends a regroup there.
    laptop = customer_id_for(anon("laptop"))
    assert joined.moves == {customer_id_for(email("e1")): {"email:e1": laptop}}
    assert joined.aliases == {email("e1"): laptop, anon("laptop"): laptop}
    # Only the email's move is news to a replica: the laptop is still its own customer.
    assert joined.replicated == {email("e1"): laptop}


def test_events_of_one_identifier_do_not_decide_the_survivor() -> None:
    graph = IdentityGraph()
    graph.add(link("newsletter", 0, email("e1")))  # the email alone, long before
    graph.add(link("signup", 60, anon("laptop"), email("e1")))
    # Both first seen in a link at 60: the earlier key names the customer.
    assert graph.customer_of(email("e1")) == customer_id_for(anon("laptop"))
