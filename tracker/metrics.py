"""Every Prometheus metric Tracker exports, defined once. Labels are bounded: never a user id."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "CALL_CALLBACKS_MERGED",
    "CALL_POOL_CALLS",
    "CALL_POOL_DRY",
    "CALL_POOL_FREE",
    "CALL_POOL_RESERVATIONS",
    "CALL_TRANSCRIPTS",
    "CALL_WEBHOOKS",
    "COLLECTOR_EVENTS",
    "COLLECTOR_REQUESTS",
    "COLLECTOR_REQUEST_SECONDS",
    "EMAIL_WEBHOOKS",
    "HELPDESK_WEBHOOKS",
    "IDENTITY_CONFLICTS",
    "JOURNEY_LATE_EVENTS",
    "KAFKA_PRODUCE_FAILURES",
    "KAFKA_REACHABLE",
    "LINK_CLICKS",
    "LINK_CLICKS_DROPPED",
    "LINK_CLICK_QUEUE",
    "POISON_RECORDS",
    "SINK_FAILURES",
    "SINK_FLUSH_SECONDS",
    "SINK_ROWS",
    "STAGE_LAG",
    "STAGE_RETRIES",
    "STATE_FOLDED",
    "STITCH_EVENTS",
    "STITCH_ROUTES",
    "TICKET_CALLBACKS_MERGED",
    "WORKER_EVENTS",
    "WORKER_LAG",
    "WORKER_PARTITION_LAG",
    "WORKER_READY",
    "LoopCounter",
    "LoopHistogram",
    "observe_stage_lag",
]


# -- metrics of hot paths -------------------------------------------------------------------------
#
# prometheus_client guards every value with a mutex: a Counter.inc costs about 0.5 µs and a
# Histogram.observe about 1 µs, a fifth of a short-link redirect's own work. The metrics every
# request touches are kept instead in plain numbers, updated from the one event loop of the
# process that owns them, and turned into the same samples when /metrics is read.


class _LoopCounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LoopCounter(Collector):
    """A labelled counter for hot paths, exposed like a ``Counter``. Not thread-safe: update it
    from the event loop of the process only."""

    _type = "counter"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._name = name.removesuffix("_total")
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _LoopCounterChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> _LoopCounterChild:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _LoopCounterChild()
        return child

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        yield family


class _LoopHistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class LoopHistogram(Collector):
    """A labelled histogram for hot paths, exposed like a ``Histogram``. Not thread-safe: update
    it from the event loop of the process only."""

    _type = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = tuple(sorted(b for b in buckets if not math.isinf(b)))
        self._children: dict[tuple[str, ...], _LoopHistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> _LoopHistogramChild:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _LoopHistogramChild(self._bounds)
        return child

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        edges = [*(floatToGoString(b) for b in self._bounds), "+Inf"]  # type: ignore[no-untyped-call]
        for values, child in list(self._children.items()):
            running, buckets = 0, []
            for edge, count in zip(edges, child.counts, strict=True):
                running += count
                buckets.append((edge, float(running)))
            family.add_metric(list(values), buckets, child.sum)
        yield family


COLLECTOR_REQUESTS = LoopCounter(
    "tracker_collector_requests_total",
    "HTTP requests a collector answered, by collector, route and status code.",
    ["collector", "route", "status"],
)
COLLECTOR_REQUEST_SECONDS = LoopHistogram(
    "tracker_collector_request_seconds",
    "Time from request to answer, including the Kafka acknowledgement.",
    ["collector", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
COLLECTOR_EVENTS = Counter(
    "tracker_collector_events_total",
    "Events a collector handled: accepted (acknowledged by Kafka) or rejected (sent to dead letters).",
    ["collector", "outcome"],
)
KAFKA_PRODUCE_FAILURES = Counter(
    "tracker_kafka_produce_failures_total",
    "Writes Kafka did not acknowledge in time; the client was told to retry.",
    ["topic"],
)
WORKER_EVENTS = Counter(
    "tracker_worker_events_total",
    "Events the worker handled: forwarded (ingested, on to stitching), written (stitched and "
    "stored), duplicate (already stored), dead_letter or forgotten.",
    ["outcome"],
)
KAFKA_REACHABLE = Gauge(
    "tracker_kafka_reachable",
    "1 while this collector's producer reaches Kafka, 0 while it is known to be down (requests "
    "are then answered 503 with Retry-After at once, and /readyz says why).",
)
WORKER_LAG = Gauge(
    "tracker_worker_lag_events",
    "Raw events in Kafka that this worker has not yet stored, over its partitions: a ClickHouse "
    "outage shows here as delay.",
)
WORKER_PARTITION_LAG = Gauge(
    "tracker_worker_partition_lag_events",
    "Records of one partition this worker owns that it has not yet handled: end offset minus "
    "the committed one (or the log start, where retention deleted what was never committed).",
    ["topic", "partition"],
)
WORKER_READY = Gauge(
    "tracker_worker_ready", "1 once the worker has applied migrations and started."
)
SINK_ROWS = Counter("tracker_sink_rows_total", "Rows written to ClickHouse.", ["table"])
SINK_FLUSH_SECONDS = Histogram(
    "tracker_sink_flush_seconds",
    "Time to write one batch to ClickHouse, including the duplicate check.",
    ["table"],
)
SINK_FAILURES = Counter(
    "tracker_sink_failures_total",
    "Batch writes ClickHouse refused; the batch is retried, never dropped.",
    ["table"],
)
LINK_CLICKS = LoopCounter(
    "tracker_link_clicks_total",
    "Requests for a short link, by outcome: redirect, fallback, gone (404/410 page) or unknown_slug.",
    ["outcome"],
)
LINK_CLICK_QUEUE = Gauge(
    "tracker_link_click_queue",
    "Clicks answered but not yet acknowledged by Kafka, waiting in the links service's buffer.",
)
LINK_CLICKS_DROPPED = Counter(
    "tracker_link_clicks_dropped_total",
    "Clicks lost because the click buffer was full (Kafka away too long). Should stay 0.",
)
CALL_WEBHOOKS = Counter(
    "tracker_call_webhooks_total",
    "Call webhooks by provider and outcome: accepted, unauthorized, malformed, not_configured.",
    ["provider", "outcome"],
)
CALL_TRANSCRIPTS = Counter(
    "tracker_call_transcripts_total",
    "Call transcripts the calls collector read, by provider and outcome: flagged (a topic was "
    "found), unflagged, or off (TRACKER_CALL_TRANSCRIPTS=off: dropped). Provider retries count.",
    ["provider", "outcome"],
)
EMAIL_WEBHOOKS = Counter(
    "tracker_email_webhooks_total",
    "Email provider webhooks by provider and outcome: accepted, ignored, unauthorized, malformed, "
    "not_configured, or subscription (an SNS subscription awaiting an operator's confirmation).",
    ["provider", "outcome"],
)
HELPDESK_WEBHOOKS = Counter(
    "tracker_helpdesk_webhooks_total",
    "Helpdesk and chat webhooks by provider and outcome: accepted, ignored, unauthorized, "
    "malformed, not_configured.",
    ["provider", "outcome"],
)
TICKET_CALLBACKS_MERGED = Counter(
    "tracker_ticket_callbacks_merged_total",
    "Helpdesk callbacks the worker handled: merged (new), duplicate (a retry), over_limit (the "
    "ticket has the most callbacks kept) or over_size (its state is at TRACKER_STATE_MAX_BYTES).",
    ["outcome"],
)
CALL_CALLBACKS_MERGED = Counter(
    "tracker_call_callbacks_merged_total",
    "Call callbacks the worker handled: merged (new), duplicate (a retry), over_limit (the "
    "call has the most callbacks kept) or over_size (its state is at TRACKER_STATE_MAX_BYTES).",
    ["outcome"],
)
CALL_POOL_RESERVATIONS = Counter(
    "tracker_call_pool_reservations_total",
    "Pool number reservations the beacon made: new, extended (the same session asked again) or "
    "lost_race (another beacon instance took the number first; the next one was tried).",
    ["pool", "outcome"],
)
CALL_POOL_DRY = Counter(
    "tracker_call_pool_dry_total",
    "Number requests a pool could not serve because every number was reserved: the pool's "
    "fallback number was shown, and the visit cannot be joined to a call. Should stay 0.",
    ["pool"],
)
CALL_POOL_FREE = Gauge(
    "tracker_call_pool_free_numbers",
    "Numbers of a pool nobody holds, as this beacon instance last saw them.",
    ["pool"],
)
CALL_POOL_CALLS = Counter(
    "tracker_call_pool_calls_total",
    "Calls to a pool number the worker saw first: attributed (inside a reservation's window, "
    "joined to its web session) or unattributed (kept, without a session).",
    ["pool", "outcome"],
)
STAGE_LAG = LoopHistogram(
    "tracker_stage_lag_seconds",
    "Seconds from an event's receipt by a collector (received_ts) until a stage of the worker took "
    "it (ingest, identity, journey) or its stitched row was written to ClickHouse (write).",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
STITCH_EVENTS = Counter(
    "tracker_stitch_records_total",
    "Records handled by each stitching step: identity (the identity log) or journey.",
    ["step"],
)
STITCH_ROUTES = Counter(
    "tracker_stitch_routes_total",
    "Touchpoints handed to stitching, by path: ordered (through the one-partition identity log: "
    "they may link identifiers not yet linked) or direct (straight to their customer's "
    "partition, resolved through the replicated aliases).",
    ["path"],
)
IDENTITY_CONFLICTS = Counter(
    "tracker_identity_conflicts_total",
    "Links the identity rules refused (two user ids, a per-type limit, a split), kept for review.",
)
JOURNEY_LATE_EVENTS = Counter(
    "tracker_journey_late_events_total",
    "Events later than the allowed lateness: kept and counted, not put into sessions.",
)
POISON_RECORDS = Counter(
    "tracker_poison_records_total",
    "Records a worker stage could not process, by stage: each went to dead letters with its "
    "reason, and its batch-mates went on. Should stay 0.",
    ["stage"],
)
STAGE_RETRIES = Counter(
    "tracker_stage_retries_total",
    "Batches a worker stage retried because ClickHouse or Kafka was away: a delay, not a loss.",
    ["stage"],
)
STATE_FOLDED = Counter(
    "tracker_state_folded_total",
    "Detail dropped to keep one key's state under TRACKER_STATE_MAX_BYTES, by state: journey "
    "(events folded into counts), journey_forwards (moves forgotten) or call (callbacks not kept).",
    ["state"],
)


def observe_stage_lag(stage: str, received: Iterable[datetime | str | None]) -> None:
    """One sample per event of ``tracker_stage_lag_seconds``: now minus its ``received_ts``
    (a datetime, or its ISO text as on the wire). A clock behind the collector's counts as 0."""
    child = STAGE_LAG.labels(stage)
    now = datetime.now(UTC)
    for ts in received:
        if ts is None:
            continue
        at = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        child.observe(max((now - at).total_seconds(), 0.0))
