"""Attribution models: how much of each conversion each channel earns. Plain Python, no I/O.

A path is the run of touches (sessions, with their channel and start) that led to a conversion,
or that of a customer who did not convert. Every model gives each converting path a total weight
of 1 over its channels, so credited conversions over channels sum to the number of conversions.
Definitions in docs/reports.md.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from tracker.reports.stats import percentile

__all__ = [
    "MODELS",
    "Credit",
    "Path",
    "Touch",
    "attribute",
    "bootstrap",
    "markov",
    "rule_weights",
    "shapley",
]

DIRECT = "direct"
MODELS = (
    "first_touch",
    "last_touch",
    "last_non_direct",
    "linear",
    "position_based",
    "time_decay",
    "markov",
    "shapley",
)
BOOTSTRAPPED = frozenset({"markov", "shapley"})


@dataclass(frozen=True, slots=True)
class Touch:
    channel: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class Path:
    customer: str
    touches: tuple[Touch, ...]
    converted: bool
    ts: datetime | None = None
    """When the conversion happened; None for a path that did not convert."""
    value: float = 0.0


@dataclass(frozen=True, slots=True)
class Credit:
    conversions: float
    value: float


Credits = dict[str, Credit]


def rule_weights(model: str, path: Path, half_life_days: float = 7.0) -> list[float]:
    """The weight of each touch of a converting path under a rule-based model; they sum to 1."""
    touches = path.touches
    k = len(touches)
    weights = [0.0] * k
    if model == "first_touch":
        weights[0] = 1.0
    elif model == "last_touch":
        weights[-1] = 1.0
    elif model == "last_non_direct":
        chosen = next((i for i in range(k - 1, -1, -1) if touches[i].channel != DIRECT), k - 1)
        weights[chosen] = 1.0
    elif model == "linear":
        weights = [1.0 / k] * k
    elif model == "position_based":
        if k == 1:
            weights = [1.0]
        elif k == 2:
            weights = [0.5, 0.5]
        else:
            weights = [0.4] + [0.2 / (k - 2)] * (k - 2) + [0.4]
    elif model == "time_decay":
        assert path.ts is not None
        at = path.ts
        raw = [2.0 ** (-((at - t.ts).total_seconds() / 86_400) / half_life_days) for t in touches]
        total = sum(raw)
        weights = [w / total for w in raw]
    else:
        raise ValueError(f"no rule-based model {model!r}")
    return weights


def _rule_credits(model: str, paths: Iterable[Path], half_life_days: float) -> Credits:
    conversions: dict[str, float] = defaultdict(float)
    values: dict[str, float] = defaultdict(float)
    for path in paths:
        if not path.converted or not path.touches:
            continue
        for touch, weight in zip(
            path.touches, rule_weights(model, path, half_life_days), strict=True
        ):
            conversions[touch.channel] += weight
            values[touch.channel] += weight * path.value
    return {c: Credit(conversions[c], values[c]) for c in conversions}


# -- Markov ---------------------------------------------------------------------------------------

_START, _CONVERSION, _NULL = "(start)", "(conversion)", "(null)"


def _transitions(paths: Iterable[Path]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for path in paths:
        if not path.touches:
            continue
        states = [_START, *(t.channel for t in path.touches)]
        states.append(_CONVERSION if path.converted else _NULL)
        for here, there in itertools.pairwise(states):
            counts[here][there] += 1
    return counts


def _conversion_probability(counts: Mapping[str, Mapping[str, int]], removed: str | None) -> float:
    """P(reaching conversion from start) in the first-order chain; a removed channel absorbs
    like null. Solves x = Qx + r over the transient states by Gaussian elimination."""
    states = [s for s in counts if s != removed]
    index = {s: i for i, s in enumerate(states)}
    n = len(states)
    matrix = [[0.0] * (n + 1) for _ in range(n)]
    for s, i in index.items():
        outgoing = counts[s]
        total = sum(outgoing.values())
        matrix[i][i] = 1.0
        for there, count in outgoing.items():
            p = count / total
            if there == _CONVERSION:
                matrix[i][n] += p
            elif there in index:
                matrix[i][index[there]] -= p
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(matrix[r][col]))
        if abs(matrix[pivot][col]) < 1e-15:
            continue
        matrix[col], matrix[pivot] = matrix[pivot], matrix[col]
        lead = matrix[col][col]
        matrix[col] = [v / lead for v in matrix[col]]
        for r in range(n):
            if r != col and matrix[r][col] != 0.0:
                factor = matrix[r][col]
                matrix[r] = [a - factor * b for a, b in zip(matrix[r], matrix[col], strict=True)]
    return matrix[index[_START]][n] if _START in index else 0.0


def markov(paths: Sequence[Path]) -> Credits:
    """Removal effects of a first-order chain, normalised to the conversions and their value."""
    converting = [p for p in paths if p.converted and p.touches]
    if not converting:
        return {}
    counts = _transitions(paths)
    base = _conversion_probability(counts, None)
    channels = sorted({t.channel for p in paths for t in p.touches})
    effects = {c: max(0.0, 1 - _conversion_probability(counts, c) / base) for c in channels}
    total_effect = sum(effects.values())
    conversions = len(converting)
    value = sum(p.value for p in converting)
    return {
        c: Credit(conversions * e / total_effect, value * e / total_effect)
        for c, e in effects.items()
        if e > 0
    }


# -- Shapley --------------------------------------------------------------------------------------


def shapley(paths: Sequence[Path]) -> Credits:
    """Exact Shapley values of v(S) = conversions whose path's channel set is a subset of S.

    v is a sum of unanimity games, one per conversion (v_T(S) = 1 when T ⊆ S), and the Shapley
    value of a unanimity game gives 1/|T| to each member of T and 0 to every other player. So the
    exact value splits each conversion equally among its path's distinct channels, for any number
    of channels: no coalition enumeration nor permutation sampling is needed. (The test checks
    this against the coalition formula in exact arithmetic.) Value is credited the same way.
    """
    conversions: dict[str, float] = defaultdict(float)
    values: dict[str, float] = defaultdict(float)
    for path in paths:
        if not path.converted or not path.touches:
            continue
        players = {t.channel for t in path.touches}
        for channel in players:
            conversions[channel] += 1 / len(players)
            values[channel] += path.value / len(players)
    return {c: Credit(conversions[c], values[c]) for c in conversions}


# -- all models -----------------------------------------------------------------------------------


def attribute(model: str, paths: Sequence[Path], half_life_days: float = 7.0) -> Credits:
    if model == "markov":
        return markov(paths)
    if model == "shapley":
        return shapley(paths)
    return _rule_credits(model, paths, half_life_days)


def bootstrap(
    model: Callable[[Sequence[Path]], Credits],
    paths: Sequence[Path],
    rounds: int = 200,
    seed: int | None = None,
) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of each channel's credited conversions, resampling customers
    (all of a customer's paths together) with replacement."""
    by_customer: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        by_customer[path.customer].append(path)
    groups = list(by_customer.values())
    if not groups:
        return {}
    rng = random.Random(seed)
    channels = sorted({t.channel for p in paths for t in p.touches})
    samples: dict[str, list[float]] = {c: [] for c in channels}
    for _ in range(rounds):
        drawn = [p for group in rng.choices(groups, k=len(groups)) for p in group]
        credits = model(drawn)
        for c in channels:
            samples[c].append(credits[c].conversions if c in credits else 0.0)
    intervals = {}
    for c, values in samples.items():
        values.sort()
        low, high = percentile(values, 0.025), percentile(values, 0.975)
        assert low is not None and high is not None
        intervals[c] = (low, high)
    return intervals
