"""The reports' maths on its own: interval estimates, attribution models and path building.

Markov and Shapley are checked against independent computations written here in exact
arithmetic (fractions); the conversion-sum invariant is property-tested for every model."""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.reports import build_paths
from tracker.reports.attribution import (
    MODELS,
    Path,
    Touch,
    attribute,
    bootstrap,
    markov,
    rule_weights,
    shapley,
)
from tracker.reports.stats import ces, csat, nps, percentile, t_quantile, wilson

T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def path(*channels: str, customer: str = "c", value: float = 0.0, converted: bool = True) -> Path:
    touches = tuple(Touch(c, at(i)) for i, c in enumerate(channels))
    return Path(customer, touches, converted, at(len(channels)) if converted else None, value)


# -- interval estimates --------------------------------------------------------------------------


def test_wilson_matches_values_worked_by_hand() -> None:
    # p = 0.5, n = 10: centre 0.5, half-width z·√(0.025 + z²/400)/(1 + z²/10)
    z = 1.959963984540054
    half = z * math.sqrt(0.5 * 0.5 / 10 + z * z / 400) / (1 + z * z / 10)
    assert wilson(5, 10) == pytest.approx((0.5 - half, 0.5 + half))
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(0, 0) is None


@given(st.integers(0, 10_000), st.integers(1, 10_000))
def test_wilson_holds_the_share_inside_zero_and_one(successes: int, extra: int) -> None:
    n = successes + extra
    low, high = wilson(successes, n)  # type: ignore[misc]
    assert 0.0 <= low <= successes / n <= high <= 1.0


def test_nps_and_its_interval_worked_by_hand() -> None:
    # 10 answers: 5 promoters, 2 detractors. NPS 30, SE = 100·√((0.7 - 0.09)/10) = 24.698
    score = nps(5, 2, 10)
    assert score.value == pytest.approx(30.0)
    se = 100 * math.sqrt(0.061)
    assert score.ci_low == pytest.approx(30 - 1.959963984540054 * se)
    assert score.ci_high == pytest.approx(30 + 1.959963984540054 * se)
    assert (score.ci_low, score.ci_high) == pytest.approx((-18.408, 78.408), abs=1e-3)
    assert nps(0, 0, 0).value is None


def test_csat_is_the_share_of_fours_and_fives_with_a_wilson_interval() -> None:
    score = csat(3, 4)
    low, high = wilson(3, 4)  # type: ignore[misc]
    assert (score.value, score.n) == (75.0, 4)
    assert (score.ci_low, score.ci_high) == pytest.approx((100 * low, 100 * high))


def test_ces_is_a_mean_with_a_student_t_interval() -> None:
    # answers 2, 3, 4: mean 3, s = 1, t(0.975, 2) = 4.302653 → 3 ± 4.302653/√3
    score = ces(2 + 3 + 4, 4 + 9 + 16, 3)
    assert score.value == pytest.approx(3.0)
    assert (score.ci_low, score.ci_high) == pytest.approx((0.51586, 5.48414), abs=1e-5)
    one = ces(5, 25, 1)
    assert (one.value, one.ci_low, one.ci_high) == (5.0, None, None)


@pytest.mark.parametrize(
    ("df", "quantile"),
    # Student t 0.975 quantiles from published tables
    [
        (1, 12.7062),
        (2, 4.3027),
        (3, 3.1824),
        (5, 2.5706),
        (10, 2.2281),
        (30, 2.0423),
        (120, 1.9799),
    ],
)
def test_t_quantile_matches_the_tables(df: int, quantile: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-4)


def test_t_quantile_is_continuous_where_it_changes_method() -> None:
    assert t_quantile(0.975, 1000) == pytest.approx(t_quantile(0.975, 1001), abs=1e-5)
    assert t_quantile(0.975, 10**7) == pytest.approx(1.959963984540054, abs=1e-6)


@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=50), st.integers(1, 9))
def test_percentile_interpolates_as_inclusive_quantiles(values: list[float], decile: int) -> None:
    ordered = sorted(values)
    expected = statistics.quantiles(ordered, n=10, method="inclusive")[decile - 1]
    assert percentile(ordered, decile / 10) == pytest.approx(expected, abs=1e-6)


# -- the rule-based models ---------------------------------------------------------------------


def test_position_based_gives_forty_forty_twenty() -> None:
    assert rule_weights("position_based", path("a")) == [1.0]
    assert rule_weights("position_based", path("a", "b")) == [0.5, 0.5]
    assert rule_weights("position_based", path("a", "b", "c")) == pytest.approx([0.4, 0.2, 0.4])
    assert rule_weights("position_based", path("a", "b", "c", "d")) == pytest.approx(
        [0.4, 0.1, 0.1, 0.4]
    )


def test_time_decay_halves_the_weight_every_half_life() -> None:
    # touches 7 days and 0 days before the conversion, half-life 7 days: weights 1/2 and 1
    converting = Path("c", (Touch("a", at(0)), Touch("b", at(7))), True, at(7), 30.0)
    assert rule_weights("time_decay", converting, 7.0) == pytest.approx([1 / 3, 2 / 3])
    credits = attribute("time_decay", [converting], 7.0)
    assert credits["a"].value == pytest.approx(10.0)
    assert credits["b"].value == pytest.approx(20.0)


def test_last_non_direct_skips_direct_unless_all_are_direct() -> None:
    assert rule_weights("last_non_direct", path("email", "direct", "direct")) == [1.0, 0.0, 0.0]
    assert rule_weights("last_non_direct", path("direct", "direct")) == [0.0, 1.0]
    assert rule_weights("first_touch", path("a", "b")) == [1.0, 0.0]
    assert rule_weights("last_touch", path("a", "b")) == [0.0, 1.0]
    assert rule_weights("linear", path("a", "b", "c", "d")) == [0.25] * 4


# -- invariants over every model -----------------------------------------------------------------

CHANNELS = ["direct", "email", "paid_search", "social", "phone", "referral"]

paths_strategy = st.lists(
    st.builds(
        lambda customer, channels, converted, gaps, value: Path(
            f"c{customer}",
            tuple(Touch(c, at(sum(gaps[: i + 1]))) for i, c in enumerate(channels)),
            converted,
            at(sum(gaps) + 0.5) if converted else None,
            value if converted else 0.0,
        ),
        st.integers(0, 8),
        st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=6),
        st.booleans(),
        st.lists(st.floats(0, 10), min_size=6, max_size=6),
        st.floats(0, 1000),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(paths_strategy, st.sampled_from(MODELS), st.floats(0.5, 30))
def test_credited_conversions_sum_to_the_conversions_for_every_model(
    paths: list[Path], model: str, half_life: float
) -> None:
    credits = attribute(model, paths, half_life)
    converting = [p for p in paths if p.converted]
    assert sum(c.conversions for c in credits.values()) == pytest.approx(len(converting))
    assert sum(c.value for c in credits.values()) == pytest.approx(
        sum(p.value for p in converting), abs=1e-6
    )
    assert all(c.conversions >= -1e-12 for c in credits.values())
    assert set(credits) <= {t.channel for p in paths for t in p.touches}


# -- Markov, against an exact computation ------------------------------------------------------


def exact_conversion_probability(paths: list[Path], removed: str | None) -> Fraction:
    """P(start ⇝ conversion) with fractions: the chain's absorbing equations, solved by
    Gauss-Jordan elimination; transitions into a removed channel go to null."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for p in paths:
        states = ["S", *(f"ch:{t.channel}" for t in p.touches), "C" if p.converted else "N"]
        for here, there in itertools.pairwise(states):
            counts[here][there] += 1
    gone = f"ch:{removed}" if removed else None
    transient = sorted(s for s in counts if s != gone)
    size = len(transient)
    rows = []
    for s in transient:
        total = sum(counts[s].values())
        row = [Fraction(int(s == other)) for other in transient] + [Fraction(0)]
        for there, n in counts[s].items():
            if there == "C":
                row[size] += Fraction(n, total)
            elif there in transient:
                row[transient.index(there)] -= Fraction(n, total)
        rows.append(row)
    for col in range(size):
        pivot = next(r for r in range(col, size) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        rows[col] = [v / rows[col][col] for v in rows[col]]
        for r in range(size):
            if r != col:
                rows[r] = [a - rows[r][col] * b for a, b in zip(rows[r], rows[col], strict=True)]
    return rows[transient.index("S")][size]


def exact_markov(paths: list[Path]) -> dict[str, Fraction]:
    base = exact_conversion_probability(paths, None)
    channels = {t.channel for p in paths for t in p.touches}
    effects = {c: 1 - exact_conversion_probability(paths, c) / base for c in channels}
    total = sum(effects.values())
    conversions = sum(1 for p in paths if p.converted)
    return {c: conversions * e / total for c, e in effects.items() if e}


def test_markov_on_a_chain_worked_by_hand() -> None:
    # start→email→conv and start→paid→email→conv: P = 1; without email 0, without paid 1/2.
    # Removal effects 1 and 1/2, normalised to 2 conversions: email 4/3, paid 2/3.
    paths = [path("email", customer="a", value=10), path("paid", "email", customer="b", value=5)]
    credits = markov(paths)
    assert credits["email"].conversions == pytest.approx(4 / 3)
    assert credits["paid"].conversions == pytest.approx(2 / 3)
    assert credits["email"].value == pytest.approx(10.0)
    assert exact_markov(paths) == {"email": Fraction(4, 3), "paid": Fraction(2, 3)}


@settings(max_examples=150, deadline=None)
@given(paths_strategy)
def test_markov_matches_the_exact_computation(paths: list[Path]) -> None:
    if not any(p.converted for p in paths):
        assert markov(paths) == {}
        return
    expected = exact_markov(paths)
    credits = markov(paths)
    assert set(credits) == set(expected)
    for channel, share in expected.items():
        assert credits[channel].conversions == pytest.approx(float(share), abs=1e-9)


# -- Shapley, against the coalition formula -----------------------------------------------------


def exact_shapley(paths: list[Path]) -> dict[str, Fraction]:
    """φ_i = Σ_{S ⊆ N - {i}} |S|!(n-|S|-1)!/n! · (v(S | {i}) - v(S)), v(S) = conversions whose
    path's channel set is a subset of S."""
    sets = [frozenset(t.channel for t in p.touches) for p in paths if p.converted]
    players = sorted({c for s in sets for c in s})
    n = len(players)

    def v(coalition: frozenset[str]) -> int:
        return sum(1 for s in sets if s <= coalition)

    values = {}
    for player in players:
        others = [c for c in players if c != player]
        total = Fraction(0)
        for size in range(n):
            weight = Fraction(
                math.factorial(size) * math.factorial(n - size - 1), math.factorial(n)
            )
            for coalition in itertools.combinations(others, size):
                s = frozenset(coalition)
                total += weight * (v(s | {player}) - v(s))
        values[player] = total
    return {c: x for c, x in values.items() if x}


@settings(max_examples=150, deadline=None)
@given(paths_strategy)
def test_shapley_matches_the_coalition_formula(paths: list[Path]) -> None:
    expected = exact_shapley(paths)
    credits = shapley(paths)
    assert {c for c, credit in credits.items() if credit.conversions} == set(expected)
    for channel, share in expected.items():
        assert credits[channel].conversions == pytest.approx(float(share), abs=1e-9)


def test_shapley_on_a_game_worked_by_hand() -> None:
    # {email} converts twice, {email, paid} once: email 2 + 1/2, paid 1/2
    paths = [path("email"), path("email", "email"), path("paid", "email")]
    assert exact_shapley(paths) == {"email": Fraction(5, 2), "paid": Fraction(1, 2)}
    assert shapley(paths)["email"].conversions == pytest.approx(2.5)


# -- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_is_repeatable_with_a_seed_and_brackets_the_estimate() -> None:
    paths = [path("email", customer=f"e{i}") for i in range(6)] + [
        path("paid", "email", customer=f"p{i}") for i in range(4)
    ]
    paths += [path("paid", customer=f"n{i}", converted=False) for i in range(5)]
    first = bootstrap(markov, paths, rounds=300, seed=11)
    assert first == bootstrap(markov, paths, rounds=300, seed=11)
    estimate = markov(paths)
    for channel, (low, high) in first.items():
        assert low <= estimate[channel].conversions <= high
    assert first["email"][0] < first["email"][1]


# -- paths from sessions and conversions -------------------------------------------------------


def test_paths_follow_the_lookback_and_the_previous_conversion() -> None:
    sessions = [
        ("a", at(-40), "social"),  # beyond the 30-day lookback of the first conversion
        ("a", at(-10), "email"),
        ("a", at(0), "paid"),
        ("a", at(2), "direct"),
        ("b", at(3), "email"),  # b never converts: one non-converting path
        ("c", at(-50), "email"),  # c's sessions are all outside the window before the end
    ]
    conversions = [("a", at(1), 50.0), ("a", at(3), 20.0)]
    found = build_paths(sessions, conversions, at(-5), at(5), timedelta(days=30))
    assert [(p.customer, [t.channel for t in p.touches], p.converted, p.value) for p in found] == [
        ("a", ["email", "paid"], True, 50.0),
        ("a", ["direct"], True, 20.0),
        ("b", ["email"], False, 0.0),
    ]
