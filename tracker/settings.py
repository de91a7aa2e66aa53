"""Settings: one frozen object, read from ``TRACKER_*`` environment variables once at the entry point.

Every variable is documented in docs/settings.md.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from tracker.errors import ConfigError
from tracker.privacy import (
    DEFAULT_PII_QUERY_PARAMS,
    PII_MODES,
    InvalidIdentifier,
    PiiRules,
    normalize_phone,
)
from tracker.ratelimit import RATE_LIMIT_SURFACES, RateLimit

__all__ = [
    "CAMPAIGN_KEYS",
    "KAFKA_SECURITY_PROTOCOLS",
    "WORKER_ROLES",
    "KafkaSecurity",
    "NumberPool",
    "Secret",
    "Settings",
    "Source",
]

CAMPAIGN_KEYS: Final = ("source", "medium", "name", "term", "content")
CALL_TRANSCRIPT_MODES: Final = ("off", "topics", "store")
# The topics TRACKER_CALL_TOPICS replaces: each topic's phrases, matched as whole words.
CALL_TOPICS: Final[Mapping[str, tuple[str, ...]]] = {
    "cancel": ("cancel", "cancel my", "cancellation"),
    "refund": ("refund", "money back", "chargeback"),
    "complaint": ("complaint", "complain", "unacceptable"),
    "manager": ("speak to a manager", "talk to a manager", "your supervisor"),
}
_TOPIC_NAME = re.compile(r"^[\w-]{1,64}$")


@dataclass(frozen=True, slots=True)
class NumberPool:
    """One pool from ``TRACKER_CALL_NUMBER_POOLS``. Numbers are E.164."""

    name: str
    numbers: tuple[str, ...]
    fallback: str
    campaign: Mapping[str, str] = field(default_factory=dict)
    channel: str = "phone"


@dataclass(frozen=True, slots=True)
class Source:
    """One sender from ``TRACKER_SOURCES``, known by its write key. A ``server`` source is
    trusted: its events are never classified as bots. ``channels``: those its events may claim
    (empty: any). ``rate``/``burst``: its own request limit, else the ``TRACKER_SOURCE_*`` ones."""

    name: str
    write_key: Secret
    kind: str
    channels: tuple[str, ...] = ()
    revoked: bool = False
    rate: float | None = None
    burst: int | None = None


LOCAL_KAFKA = "local"


@dataclass(frozen=True, slots=True)
class Secret:
    """A value that must never reach logs or reprs."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')" if self.value else "Secret('')"

    def __bool__(self) -> bool:
        return bool(self.value)


KAFKA_SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How every Kafka client authenticates and encrypts (``TRACKER_KAFKA_SECURITY_PROTOCOL``,
    ``TRACKER_KAFKA_SASL_*``, ``TRACKER_KAFKA_SSL_CAFILE``): a managed cluster's settings."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: Secret = Secret("")
    ssl_cafile: str = ""

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    clickhouse_url: str
    clickhouse_database: str
    kafka_bootstrap: str
    kafka_local_port: int
    topic_prefix: str
    topic_partitions: int
    topic_replication: int
    worker_id: str
    host: str
    console_host: str
    console_port: int
    beacon_port: int
    links_port: int
    calls_port: int
    api_token: Secret
    hash_salt: Secret
    max_body_bytes: int
    max_events_per_request: int
    produce_timeout_seconds: float
    retry_after_seconds: int
    sink_batch_size: int
    sink_flush_seconds: float
    trust_forwarded_for: bool
    max_event_age_days: int
    default_phone_region: str
    cors_origins: tuple[str, ...]
    log_level: str
    # How long a collector waits for a request's body once its headers are in (answers 408 after).
    body_read_timeout_seconds: float = 5.0
    links_base_url: str = "http://127.0.0.1:8002"
    links_click_buffer: int = 250_000
    links_api_rate: float = 10.0
    links_api_burst: int = 40
    # Call webhooks (collectors/calls, docs/calls.md). An empty secret turns its provider off.
    calls_public_url: str = ""
    call_signature_tolerance_seconds: int = 300
    call_tracking_numbers: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    call_number_pools: Mapping[str, NumberPool] = field(default_factory=dict)
    call_pool_reservation_minutes: int = 30
    twilio_auth_token: Secret = Secret("")
    vonage_signature_secret: Secret = Secret("")
    telnyx_public_key: Secret = Secret("")
    plivo_auth_token: Secret = Secret("")
    freeswitch_username: str = ""
    freeswitch_password: Secret = Secret("")
    asterisk_signing_secret: Secret = Secret("")
    generic_webhook_secret: Secret = Secret("")
    # Call transcripts (collectors/calls/transcripts.py, docs/calls.md): off, topics or store.
    call_transcripts: str = "off"
    call_topics: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(CALL_TOPICS))
    # Email webhooks (collectors/email, docs/email.md). An empty secret turns its provider off.
    email_port: int = 8004
    email_signature_tolerance_seconds: int = 300
    sendgrid_webhook_public_key: Secret = Secret("")
    mailgun_webhook_signing_key: Secret = Secret("")
    postmark_webhook_username: str = ""
    postmark_webhook_password: Secret = Secret("")
    ses_sns_topic_arns: tuple[str, ...] = ()
    ses_sns_certificates: str = ""
    # Helpdesk and chat webhooks (collectors/helpdesk, docs/helpdesk.md). Empty turns one off.
    helpdesk_port: int = 8005
    helpdesk_signature_tolerance_seconds: int = 300
    zendesk_webhook_secret: Secret = Secret("")
    intercom_client_secret: Secret = Secret("")
    helpdesk_webhook_secret: Secret = Secret("")
    # Journey stitching (agents/stitching.py, docs/journeys.md). Empty rule lists mean the defaults.
    session_inactivity_minutes: float = 30.0
    session_split_on_campaign: bool = False
    session_split_at_midnight: bool = False
    journey_allowed_lateness_minutes: float = 60.0
    journey_max_events: int = 500
    state_max_bytes: int = 262_144
    journey_stages: tuple[Mapping[str, Any], ...] = ()
    journey_conversions: tuple[Mapping[str, Any], ...] = ()
    friction_thresholds: Mapping[str, float] = field(default_factory=dict)
    identity_limits: Mapping[str, int] = field(default_factory=dict)
    # Limits of every console query (tracker/console.py, docs/http-api.md).
    query_max_seconds: float = 30.0
    query_max_memory_bytes: int = 1_073_741_824
    query_max_rows: int = 100_000
    # How `tracker up` restarts a component that died (tracker/cli/supervision.py).
    supervisor_max_restarts: int = 5
    supervisor_window_seconds: float = 300.0
    supervisor_backoff_seconds: float = 1.0
    supervisor_max_backoff_seconds: float = 30.0
    supervisor_stable_seconds: float = 60.0
    # A ClickHouse cluster's name: migrations then make replicated, distributed tables ON CLUSTER.
    clickhouse_cluster: str = ""
    api_token_name: str = "console"  # who the audit of a forget names for a console token
    # Write keys (collectors/beacon/sources.py, docs/sources.md): who may send, and how fast.
    sources: tuple[Source, ...] = ()
    source_rate: float = 50.0
    source_burst: int = 200
    # Health and shutdown (docs/operations.md): how often a collector looks at Kafka, how long
    # a stopping process may take, and how often one repeated log line may be written.
    kafka_probe_seconds: float = 2.0
    kafka_security: KafkaSecurity = KafkaSecurity()
    shutdown_grace_seconds: float = 30.0
    log_repeat_seconds: float = 60.0
    # What this worker process runs (WORKER_ROLES, docs/operations.md "Worker roles"), and the
    # port a stitch-only worker serves /healthz, /readyz and /metrics on (it has no console).
    worker_role: str = "all"
    worker_health_port: int = 8010
    # Where the worker keeps its tables' state between changelog writes (agents/streams.py).
    table_store: str = "rocksdb"
    # Salt rotation (docs/privacy.md): the salt being replaced, still tried by lookups.
    hash_salt_previous: Secret = Secret("")
    # Personal data in URLs and properties (tracker/privacy.py, docs/privacy.md).
    pii_mode: str = "strip"
    pii_query_params: frozenset[str] = frozenset(DEFAULT_PII_QUERY_PARAMS)
    # Requests per client and surface (tracker/ratelimit.py, docs/privacy.md#abuse-controls).
    # A surface mapped to None is not limited (TRACKER_RATE_LIMITS "off").
    rate_limits: Mapping[str, RateLimit | None] = field(default_factory=dict)

    @property
    def hash_salts(self) -> tuple[str, ...]:
        """The salts an identifier may be stored under: the current one first."""
        salts = [self.hash_salt.value]
        if self.hash_salt_previous and self.hash_salt_previous.value != self.hash_salt.value:
            salts.append(self.hash_salt_previous.value)
        return tuple(salts)

    @property
    def pii_rules(self) -> PiiRules:
        return PiiRules(
            mode=self.pii_mode,
            params=self.pii_query_params,
            salt=self.hash_salt.value,
            phone_region=self.default_phone_region,
        )

    def rate_limit(self, surface: str) -> RateLimit | None:
        """The request limit of one surface (``beacon``, ``links``, ...), per client; None
        when it is turned off."""
        if surface in self.rate_limits:
            return self.rate_limits[surface]
        if surface == "links_api":
            return RateLimit(self.links_api_rate, self.links_api_burst)
        return RATE_LIMIT_SURFACES[surface]

    @property
    def uses_local_kafka(self) -> bool:
        return self.kafka_bootstrap == LOCAL_KAFKA

    @property
    def local_kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_local_port}"

    @property
    def bootstrap_servers(self) -> str:
        """Where clients connect: the local broker's address, or the configured cluster."""
        return self.local_kafka_bootstrap if self.uses_local_kafka else self.kafka_bootstrap

    @property
    def uses_embedded_clickhouse(self) -> bool:
        return self.clickhouse_url.startswith("chdb:")

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def with_hash_salt(self) -> Settings:
        """These settings, with a local salt made under the data directory if none is configured.

        Only components that hash identifiers call this, so reading settings has no side effects.
        """
        if self.hash_salt:
            return self
        return replace(self, hash_salt=Secret(_local_salt(self.data_dir)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        reader = _Reader(env)
        data_dir = Path(reader.text("TRACKER_DATA_DIR", ".tracker")).expanduser().resolve()
        salt = reader.text("TRACKER_HASH_SALT", "") or _read_local_salt(data_dir)
        return cls(
            data_dir=data_dir,
            clickhouse_url=reader.text(
                "TRACKER_CLICKHOUSE_URL", f"chdb://{data_dir / 'clickhouse'}"
            ),
            clickhouse_database=reader.identifier("TRACKER_CLICKHOUSE_DATABASE", "tracker"),
            clickhouse_cluster=(
                reader.identifier("TRACKER_CLICKHOUSE_CLUSTER", "")
                if reader.text("TRACKER_CLICKHOUSE_CLUSTER", "")
                else ""
            ),
            kafka_bootstrap=reader.text("TRACKER_KAFKA_BOOTSTRAP", LOCAL_KAFKA),
            kafka_local_port=reader.port("TRACKER_KAFKA_LOCAL_PORT", 9092),
            topic_prefix=reader.text("TRACKER_TOPIC_PREFIX", ""),
            topic_partitions=reader.integer("TRACKER_TOPIC_PARTITIONS", 4, minimum=1),
            topic_replication=reader.integer("TRACKER_TOPIC_REPLICATION", 1, minimum=1),
            worker_id=reader.text("TRACKER_WORKER_ID", "tracker"),
            worker_role=_worker_role(reader.text("TRACKER_WORKER_ROLE", "all")),
            worker_health_port=reader.port("TRACKER_WORKER_HEALTH_PORT", 8010),
            table_store=reader.choice("TRACKER_TABLE_STORE", "rocksdb", ("memory", "rocksdb")),
            host=reader.text("TRACKER_HOST", "127.0.0.1"),
            console_host=reader.text("TRACKER_CONSOLE_HOST", "127.0.0.1"),
            console_port=reader.port("TRACKER_CONSOLE_PORT", 8000),
            beacon_port=reader.port("TRACKER_BEACON_PORT", 8001),
            links_port=reader.port("TRACKER_LINKS_PORT", 8002),
            calls_port=reader.port("TRACKER_CALLS_PORT", 8003),
            api_token=Secret(reader.text("TRACKER_API_TOKEN", "")),
            api_token_name=reader.text("TRACKER_API_TOKEN_NAME", "console") or "console",
            hash_salt=Secret(salt),
            max_body_bytes=reader.integer("TRACKER_MAX_BODY_BYTES", 1_048_576, minimum=1024),
            max_events_per_request=reader.integer("TRACKER_MAX_EVENTS_PER_REQUEST", 500, minimum=1),
            body_read_timeout_seconds=reader.number("TRACKER_BODY_READ_TIMEOUT_SECONDS", 5.0),
            produce_timeout_seconds=reader.number("TRACKER_PRODUCE_TIMEOUT_SECONDS", 5.0),
            retry_after_seconds=reader.integer("TRACKER_RETRY_AFTER_SECONDS", 5, minimum=1),
            sink_batch_size=reader.integer("TRACKER_SINK_BATCH_SIZE", 5000, minimum=1),
            sink_flush_seconds=reader.number("TRACKER_SINK_FLUSH_SECONDS", 0.5),
            trust_forwarded_for=reader.flag("TRACKER_TRUST_FORWARDED_FOR", False),
            max_event_age_days=reader.integer("TRACKER_MAX_EVENT_AGE_DAYS", 730, minimum=1),
            default_phone_region=reader.text("TRACKER_DEFAULT_PHONE_REGION", "US").upper(),
            cors_origins=tuple(
                o.strip() for o in reader.text("TRACKER_CORS_ORIGINS", "*").split(",") if o.strip()
            ),
            log_level=reader.text("TRACKER_LOG_LEVEL", "INFO").upper(),
            links_base_url=reader.text(
                "TRACKER_LINKS_BASE_URL",
                f"http://127.0.0.1:{reader.port('TRACKER_LINKS_PORT', 8002)}",
            ).rstrip("/"),
            links_click_buffer=reader.integer("TRACKER_LINKS_CLICK_BUFFER", 250_000, minimum=1000),
            links_api_rate=reader.number("TRACKER_LINKS_API_RATE", 10.0),
            links_api_burst=reader.integer("TRACKER_LINKS_API_BURST", 40, minimum=1),
            **_call_settings(reader),
            **_email_settings(reader),
            **_helpdesk_settings(reader),
            **_journey_settings(reader),
            **_query_settings(reader),
            **_supervisor_settings(reader),
            **_source_settings(reader),
            kafka_probe_seconds=reader.number("TRACKER_KAFKA_PROBE_SECONDS", 2.0),
            kafka_security=_kafka_security(reader),
            shutdown_grace_seconds=reader.number("TRACKER_SHUTDOWN_GRACE_SECONDS", 30.0),
            log_repeat_seconds=reader.number("TRACKER_LOG_REPEAT_SECONDS", 60.0),
            **_privacy_settings(reader),
        )


def _kafka_security(reader: _Reader) -> KafkaSecurity:
    protocol = reader.text("TRACKER_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper() or "PLAINTEXT"
    if protocol not in KAFKA_SECURITY_PROTOCOLS:
        raise ConfigError(
            f"TRACKER_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(KAFKA_SECURITY_PROTOCOLS)},"
            f" got {protocol!r}"
        )
    mechanism = reader.text("TRACKER_KAFKA_SASL_MECHANISM", "PLAIN").upper() or "PLAIN"
    if mechanism not in KAFKA_SASL_MECHANISMS:
        raise ConfigError(
            f"TRACKER_KAFKA_SASL_MECHANISM must be one of {', '.join(KAFKA_SASL_MECHANISMS)}, "
            f"got {mechanism!r}"
        )
    security = KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=reader.text("TRACKER_KAFKA_SASL_USERNAME", ""),
        sasl_password=Secret(reader.text("TRACKER_KAFKA_SASL_PASSWORD", "")),
        ssl_cafile=reader.text("TRACKER_KAFKA_SSL_CAFILE", ""),
    )
    if security.uses_sasl and not (security.sasl_username and security.sasl_password):
        raise ConfigError(
            f"TRACKER_KAFKA_SECURITY_PROTOCOL={protocol} needs TRACKER_KAFKA_SASL_USERNAME and "
            "TRACKER_KAFKA_SASL_PASSWORD"
        )
    if security.ssl_cafile and not Path(security.ssl_cafile).is_file():
        raise ConfigError(f"TRACKER_KAFKA_SSL_CAFILE is not a file: {security.ssl_cafile!r}")
    return security


def _privacy_settings(reader: _Reader) -> dict[str, Any]:
    mode = reader.text("TRACKER_PII_MODE", "strip").lower()
    if mode not in PII_MODES:
        raise ConfigError(f"TRACKER_PII_MODE must be one of {', '.join(PII_MODES)}, got {mode!r}")
    raw_params = reader.text("TRACKER_PII_QUERY_PARAMS", "")
    params = (
        frozenset(p.strip().lower() for p in raw_params.split(",") if p.strip())
        if raw_params
        else frozenset(DEFAULT_PII_QUERY_PARAMS)
    )
    return {
        "hash_salt_previous": Secret(reader.text("TRACKER_HASH_SALT_PREVIOUS", "")),
        "pii_mode": mode,
        "pii_query_params": params,
        "rate_limits": _rate_limits(reader.text("TRACKER_RATE_LIMITS", "")),
    }


def _rate_limits(raw: str) -> dict[str, RateLimit | None]:
    """``TRACKER_RATE_LIMITS``: inline JSON, or the path of a JSON file, of surface to
    ``{"rate": requests per second, "burst": requests}`` or ``"off"``, merged over the
    defaults; ``off`` alone turns every surface's limit off."""
    name = "TRACKER_RATE_LIMITS"
    if not raw:
        return {}
    if raw.lower() == "off":
        return dict.fromkeys(RATE_LIMIT_SURFACES)
    parsed = _json_setting(name, raw)
    if not isinstance(parsed, dict):
        raise ConfigError(
            f'{name} must be a JSON object such as {{"beacon": {{"rate": 100, "burst": 400}}}}'
        )
    limits: dict[str, RateLimit | None] = {}
    for surface, spec in parsed.items():
        if surface not in RATE_LIMIT_SURFACES:
            raise ConfigError(
                f"{name}: unknown surface {surface!r}; surfaces: {', '.join(RATE_LIMIT_SURFACES)}"
            )
        if spec == "off":
            limits[surface] = None
            continue
        if not isinstance(spec, dict) or set(spec) - {"rate", "burst"}:
            raise ConfigError(
                f'{name}.{surface} must be "off" or an object {{"rate": ..., "burst": ...}}'
            )
        default = RATE_LIMIT_SURFACES[surface]
        rate, burst = spec.get("rate", default.rate), spec.get("burst", default.burst)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
            raise ConfigError(f"{name}.{surface}.rate must be a positive number, got {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigError(f"{name}.{surface}.burst must be a whole number of 1 or more")
        limits[surface] = RateLimit(float(rate), burst)
    return limits


def _source_settings(reader: _Reader) -> dict[str, Any]:
    return {
        "sources": _sources(reader.text("TRACKER_SOURCES", "")),
        "source_rate": reader.number("TRACKER_SOURCE_RATE", 50.0),
        "source_burst": reader.integer("TRACKER_SOURCE_BURST", 200, minimum=1),
    }


_SOURCE_KEYS = ("name", "write_key", "kind", "channels", "revoked", "rate", "burst")
_CHANNEL = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _sources(raw: str) -> tuple[Source, ...]:
    """``TRACKER_SOURCES``: inline JSON, or the path of a JSON file, listing each source as
    ``{"name", "write_key", "kind": "server" | "browser", "channels": [...]}``."""
    name = "TRACKER_SOURCES"
    if not raw:
        return ()
    parsed = _json_setting(name, raw)
    if not isinstance(parsed, list):
        raise ConfigError(f"{name} must be a JSON list of sources")
    sources: list[Source] = []
    for index, entry in enumerate(parsed):
        where = f"{name}[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be an object")
        unknown = sorted(set(entry) - set(_SOURCE_KEYS))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {unknown[0]!r}; keys: {', '.join(_SOURCE_KEYS)}"
            )
        label, key, kind = entry.get("name"), entry.get("write_key"), entry.get("kind")
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"{where}: name must be a non-empty string")
        # The key is never echoed in an error: configuration errors end up in logs.
        if not isinstance(key, str) or len(key) < 8:
            raise ConfigError(
                f"{where} ({label}): write_key must be a string of 8 characters or more"
            )
        if kind not in ("server", "browser"):
            raise ConfigError(f'{where} ({label}): kind must be "server" or "browser"')
        channels = entry.get("channels", [])
        if not isinstance(channels, list) or not all(
            isinstance(c, str) and _CHANNEL.match(c) for c in channels
        ):
            raise ConfigError(f"{where} ({label}): channels must be a list of snake_case names")
        revoked = entry.get("revoked", False)
        if not isinstance(revoked, bool):
            raise ConfigError(f"{where} ({label}): revoked must be true or false")
        rate, burst = entry.get("rate"), entry.get("burst")
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0
        ):
            raise ConfigError(f"{where} ({label}): rate must be a positive number")
        if burst is not None and (
            isinstance(burst, bool) or not isinstance(burst, int) or burst < 1
        ):
            raise ConfigError(f"{where} ({label}): burst must be a whole number of 1 or more")
        sources.append(
            Source(
                name=label.strip(),
                write_key=Secret(key),
                kind=kind,
                channels=tuple(channels),
                revoked=revoked,
                rate=float(rate) if rate is not None else None,
                burst=burst,
            )
        )
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"{name}: source names must be unique")
    if len({s.write_key.value for s in sources}) != len(sources):
        raise ConfigError(f"{name}: two sources share one write key")
    return tuple(sources)


WORKER_ROLES: Final = ("all", "stitch", "write")


def _worker_role(role: str) -> str:
    if role.lower() not in WORKER_ROLES:
        raise ConfigError(
            f"TRACKER_WORKER_ROLE must be one of {', '.join(WORKER_ROLES)}, not {role!r}"
        )
    return role.lower()


def _read_local_salt(data_dir: Path) -> str:
    path = data_dir / "hash_salt"
    return path.read_text().strip() if path.exists() else ""


def _query_settings(reader: _Reader) -> dict[str, Any]:
    return {
        "query_max_seconds": reader.number("TRACKER_QUERY_MAX_SECONDS", 30.0),
        "query_max_memory_bytes": reader.integer(
            "TRACKER_QUERY_MAX_MEMORY_BYTES", 1_073_741_824, minimum=16_777_216
        ),
        "query_max_rows": reader.integer("TRACKER_QUERY_MAX_ROWS", 100_000, minimum=1),
    }


def _call_settings(reader: _Reader) -> dict[str, Any]:
    region = reader.text("TRACKER_DEFAULT_PHONE_REGION", "US").upper()
    tracking = _tracking_numbers(reader.text("TRACKER_CALL_TRACKING_NUMBERS", ""), region)
    return {
        "calls_public_url": reader.text("TRACKER_CALLS_PUBLIC_URL", "").rstrip("/"),
        "call_signature_tolerance_seconds": reader.integer(
            "TRACKER_CALL_SIGNATURE_TOLERANCE_SECONDS", 300, minimum=1
        ),
        "call_tracking_numbers": tracking,
        "call_number_pools": _number_pools(
            reader.text("TRACKER_CALL_NUMBER_POOLS", ""), region, tracking
        ),
        "call_pool_reservation_minutes": reader.integer(
            "TRACKER_CALL_POOL_RESERVATION_MINUTES", 30, minimum=1
        ),
        "twilio_auth_token": Secret(reader.text("TRACKER_TWILIO_AUTH_TOKEN", "")),
        "vonage_signature_secret": Secret(reader.text("TRACKER_VONAGE_SIGNATURE_SECRET", "")),
        "telnyx_public_key": Secret(reader.text("TRACKER_TELNYX_PUBLIC_KEY", "")),
        "plivo_auth_token": Secret(reader.text("TRACKER_PLIVO_AUTH_TOKEN", "")),
        "freeswitch_username": reader.text("TRACKER_FREESWITCH_USERNAME", ""),
        "freeswitch_password": Secret(reader.text("TRACKER_FREESWITCH_PASSWORD", "")),
        "asterisk_signing_secret": Secret(reader.text("TRACKER_ASTERISK_SIGNING_SECRET", "")),
        "generic_webhook_secret": Secret(reader.text("TRACKER_GENERIC_WEBHOOK_SECRET", "")),
        "call_transcripts": _choice(
            "TRACKER_CALL_TRANSCRIPTS",
            reader.text("TRACKER_CALL_TRANSCRIPTS", "off").lower(),
            CALL_TRANSCRIPT_MODES,
        ),
        "call_topics": _call_topics(reader.text("TRACKER_CALL_TOPICS", "")),
    }


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _call_topics(raw: str) -> dict[str, tuple[str, ...]]:
    """``TRACKER_CALL_TOPICS``: inline JSON, or the path of a JSON file, mapping each topic to
    its phrases, in any language: ``{"cancel": ["cancel", "kündigen"], ...}``."""
    name = "TRACKER_CALL_TOPICS"
    if not raw:
        return dict(CALL_TOPICS)
    parsed = _json_setting(name, raw)
    if not isinstance(parsed, dict) or not parsed:
        raise ConfigError(f'{name} must map topics to phrase lists: {{"refund": ["refund"]}}')
    topics: dict[str, tuple[str, ...]] = {}
    for topic, phrases in parsed.items():
        if not _TOPIC_NAME.match(topic):
            raise ConfigError(
                f"{name}: topic {topic[:40]!r} must be 1 to 64 letters, digits, _ or -"
            )
        if (
            not isinstance(phrases, list)
            or not phrases
            or not all(isinstance(p, str) and p.split() for p in phrases)
        ):
            raise ConfigError(f"{name}: topic {topic!r} must list one or more non-blank phrases")
        topics[topic] = tuple(p.strip() for p in phrases)
    return topics


def _email_settings(reader: _Reader) -> dict[str, Any]:
    arns = reader.text("TRACKER_SES_SNS_TOPIC_ARNS", "")
    return {
        "email_port": reader.port("TRACKER_EMAIL_PORT", 8004),
        "email_signature_tolerance_seconds": reader.integer(
            "TRACKER_EMAIL_SIGNATURE_TOLERANCE_SECONDS", 300, minimum=1
        ),
        "sendgrid_webhook_public_key": Secret(
            reader.text("TRACKER_SENDGRID_WEBHOOK_PUBLIC_KEY", "")
        ),
        "mailgun_webhook_signing_key": Secret(
            reader.text("TRACKER_MAILGUN_WEBHOOK_SIGNING_KEY", "")
        ),
        "postmark_webhook_username": reader.text("TRACKER_POSTMARK_WEBHOOK_USERNAME", ""),
        "postmark_webhook_password": Secret(reader.text("TRACKER_POSTMARK_WEBHOOK_PASSWORD", "")),
        "ses_sns_topic_arns": tuple(a.strip() for a in arns.split(",") if a.strip()),
        "ses_sns_certificates": reader.text("TRACKER_SES_SNS_CERTIFICATES", ""),
    }


def _helpdesk_settings(reader: _Reader) -> dict[str, Any]:
    return {
        "helpdesk_port": reader.port("TRACKER_HELPDESK_PORT", 8005),
        "helpdesk_signature_tolerance_seconds": reader.integer(
            "TRACKER_HELPDESK_SIGNATURE_TOLERANCE_SECONDS", 300, minimum=1
        ),
        "zendesk_webhook_secret": Secret(reader.text("TRACKER_ZENDESK_WEBHOOK_SECRET", "")),
        "intercom_client_secret": Secret(reader.text("TRACKER_INTERCOM_CLIENT_SECRET", "")),
        "helpdesk_webhook_secret": Secret(reader.text("TRACKER_HELPDESK_WEBHOOK_SECRET", "")),
    }


def _json_setting(name: str, raw: str) -> Any:
    """A JSON setting: inline JSON, or the path of a JSON file."""
    text = raw
    if not raw.lstrip().startswith(("{", "[")):
        try:
            text = Path(raw).expanduser().read_text()
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {raw!r}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from None


def _tracking_numbers(raw: str, region: str) -> dict[str, dict[str, str]]:
    """``TRACKER_CALL_TRACKING_NUMBERS``: inline JSON, or the path of a JSON file, mapping each
    tracking number to its campaign: ``{"+14155550100": {"source": "...", "medium": "...", ...}}``."""
    name = "TRACKER_CALL_TRACKING_NUMBERS"
    if not raw:
        return {}
    parsed = _json_setting(name, raw)
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name} must be a JSON object of number to campaign")
    numbers: dict[str, dict[str, str]] = {}
    for number, campaign in parsed.items():
        if not isinstance(campaign, dict) or not all(
            k in _CAMPAIGN_KEYS and isinstance(v, str) for k, v in campaign.items()
        ):
            raise ConfigError(
                f"{name}: {number!r} must map to an object of strings with keys among "
                f"{', '.join(_CAMPAIGN_KEYS)}"
            )
        try:
            numbers[normalize_phone(number, region)] = dict(campaign)
        except InvalidIdentifier as exc:
            raise ConfigError(f"{name}: {number!r} {exc}") from None
    return numbers


_POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_POOL_KEYS = ("numbers", "fallback", "campaign", "channel")


def _number_pools(raw: str, region: str, tracking: Mapping[str, object]) -> dict[str, NumberPool]:
    """``TRACKER_CALL_NUMBER_POOLS``: inline JSON, or the path of a JSON file, mapping each pool
    name to ``{"numbers": [...], "fallback": "...", "campaign": {...}, "channel": "..."}``."""
    name = "TRACKER_CALL_NUMBER_POOLS"
    if not raw:
        return {}
    parsed = _json_setting(name, raw)
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name} must be a JSON object of pool name to pool")

    def number(pool: str, raw_number: object) -> str:
        if not isinstance(raw_number, str):
            raise ConfigError(f"{name}: pool {pool!r}: {raw_number!r} is not a phone number")
        try:
            return normalize_phone(raw_number, region)
        except InvalidIdentifier as exc:
            raise ConfigError(f"{name}: pool {pool!r}: {raw_number!r} {exc}") from None

    pools: dict[str, NumberPool] = {}
    owner: dict[str, str] = {}
    for pool, spec in parsed.items():
        if not _POOL_NAME.match(pool):
            raise ConfigError(
                f"{name}: pool name {pool!r} must be 1-64 lower-case letters, digits, - or _"
            )
        if not isinstance(spec, dict) or set(spec) - set(_POOL_KEYS):
            raise ConfigError(
                f"{name}: pool {pool!r} must be an object with keys among {', '.join(_POOL_KEYS)}"
            )
        listed = spec.get("numbers")
        if not isinstance(listed, list) or not listed:
            raise ConfigError(f"{name}: pool {pool!r} needs a non-empty list of numbers")
        if "fallback" not in spec:
            raise ConfigError(
                f"{name}: pool {pool!r} needs a fallback number, shown when it is dry"
            )
        numbers = tuple(number(pool, n) for n in listed)
        for n in numbers:
            if n in owner:
                raise ConfigError(f"{name}: {n} is listed twice (pools {owner[n]!r} and {pool!r})")
            if n in tracking:
                raise ConfigError(
                    f"{name}: {n} in pool {pool!r} is also a static number in "
                    "TRACKER_CALL_TRACKING_NUMBERS; a number is one or the other"
                )
            owner[n] = pool
        campaign = spec.get("campaign") or {}
        if not isinstance(campaign, dict) or not all(
            k in CAMPAIGN_KEYS and isinstance(v, str) for k, v in campaign.items()
        ):
            raise ConfigError(
                f"{name}: pool {pool!r}: campaign must be an object of strings with keys among "
                f"{', '.join(CAMPAIGN_KEYS)}"
            )
        channel = spec.get("channel", "phone")
        if not isinstance(channel, str) or not channel:
            raise ConfigError(f"{name}: pool {pool!r}: channel must be a non-empty string")
        pools[pool] = NumberPool(
            name=pool,
            numbers=numbers,
            fallback=number(pool, spec["fallback"]),
            campaign={k: v for k, v in campaign.items() if v},
            channel=channel,
        )
    for pool in pools.values():
        if pool.fallback in owner:
            raise ConfigError(
                f"{name}: the fallback of pool {pool.name!r}, {pool.fallback}, is a pool number; "
                "a fallback must never be handed out"
            )
    return pools


_CAMPAIGN_KEYS = ("source", "medium", "name", "channel")

FRICTION_THRESHOLDS = (
    "long_queue_wait_seconds",
    "long_hold_seconds",
    "transfers",
    "repeat_contact_hours",
    "web_to_phone_minutes",
    "error_status",
    "nps_at_most",
    "csat_at_most",
    "ces_at_least",
    "ticket_first_reply_minutes",
    "ticket_resolution_hours",
    "chat_first_reply_seconds",
    "chat_resolution_minutes",
    "reopens",
)
_RULE_KEYS: dict[str, dict[str, Any]] = {
    "TRACKER_JOURNEY_STAGES": {"stage": str, "types": list, "paths": list, "queues": list},
    "TRACKER_JOURNEY_CONVERSIONS": {"name": str, "types": list, "min_value": (int, float)},
}


# Kafka refuses records above about 1 MB (the producers' max.request.size): state stays well under.
STATE_MAX_BYTES_CEILING = 900_000


def _state_max_bytes(reader: _Reader) -> int:
    value = reader.integer("TRACKER_STATE_MAX_BYTES", 262_144, minimum=16_384)
    if value > STATE_MAX_BYTES_CEILING:
        raise ConfigError(
            f"TRACKER_STATE_MAX_BYTES must be at most {STATE_MAX_BYTES_CEILING} (Kafka refuses "
            f"records above about 1 MB), got {value}"
        )
    return value


def _journey_settings(reader: _Reader) -> dict[str, Any]:
    return {
        "session_inactivity_minutes": reader.number("TRACKER_SESSION_INACTIVITY_MINUTES", 30.0),
        "session_split_on_campaign": reader.flag("TRACKER_SESSION_SPLIT_ON_CAMPAIGN", False),
        "session_split_at_midnight": reader.flag("TRACKER_SESSION_SPLIT_AT_MIDNIGHT", False),
        "journey_allowed_lateness_minutes": reader.number(
            "TRACKER_JOURNEY_ALLOWED_LATENESS_MINUTES", 60.0
        ),
        "journey_max_events": reader.integer("TRACKER_JOURNEY_MAX_EVENTS", 500, minimum=10),
        "state_max_bytes": _state_max_bytes(reader),
        "journey_stages": _rules(reader, "TRACKER_JOURNEY_STAGES", required="stage"),
        "journey_conversions": _rules(reader, "TRACKER_JOURNEY_CONVERSIONS", required="name"),
        "friction_thresholds": _numbers(reader, "TRACKER_FRICTION_THRESHOLDS", FRICTION_THRESHOLDS),
        "identity_limits": {
            k: int(v) for k, v in _numbers(reader, "TRACKER_IDENTITY_LIMITS", None).items()
        },
    }


def _supervisor_settings(reader: _Reader) -> dict[str, Any]:
    backoff = reader.number("TRACKER_SUPERVISOR_BACKOFF_SECONDS", 1.0)
    max_backoff = reader.number("TRACKER_SUPERVISOR_MAX_BACKOFF_SECONDS", 30.0)
    if max_backoff < backoff:
        raise ConfigError(
            "TRACKER_SUPERVISOR_MAX_BACKOFF_SECONDS must be at least "
            f"TRACKER_SUPERVISOR_BACKOFF_SECONDS ({backoff:g}), got {max_backoff:g}"
        )
    return {
        "supervisor_max_restarts": reader.integer("TRACKER_SUPERVISOR_MAX_RESTARTS", 5),
        "supervisor_window_seconds": reader.number("TRACKER_SUPERVISOR_WINDOW_SECONDS", 300.0),
        "supervisor_backoff_seconds": backoff,
        "supervisor_max_backoff_seconds": max_backoff,
        "supervisor_stable_seconds": reader.number("TRACKER_SUPERVISOR_STABLE_SECONDS", 60.0),
    }


def _json(reader: _Reader, name: str) -> Any:
    raw = reader.text(name, "")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from None


def _rules(reader: _Reader, name: str, required: str) -> tuple[Mapping[str, Any], ...]:
    """A JSON list of rule objects, checked for shape here so a typo fails at start-up."""
    parsed = _json(reader, name)
    if parsed is None:
        return ()
    allowed = _RULE_KEYS[name]
    if not isinstance(parsed, list) or not parsed:
        raise ConfigError(f"{name} must be a non-empty JSON list of rule objects")
    for index, rule in enumerate(parsed):
        if not isinstance(rule, dict) or not isinstance(rule.get(required), str):
            raise ConfigError(f"{name}[{index}] must be an object with a string {required!r}")
        for key, value in rule.items():
            if key not in allowed:
                raise ConfigError(
                    f"{name}[{index}]: unknown key {key!r}; known: {', '.join(allowed)}"
                )
            if not isinstance(value, allowed[key]) or (
                isinstance(value, list) and not all(isinstance(v, str) for v in value)
            ):
                raise ConfigError(f"{name}[{index}].{key} has the wrong type: {value!r}")
    return tuple(parsed)


def _numbers(reader: _Reader, name: str, known: tuple[str, ...] | None) -> dict[str, float]:
    parsed = _json(reader, name)
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name} must be a JSON object of name to number")
    for key, value in parsed.items():
        if known is not None and key not in known:
            raise ConfigError(f"{name}: unknown key {key!r}; known: {', '.join(known)}")
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{name}.{key} must be a number of at least 0, got {value!r}")
    return {k: float(v) for k, v in parsed.items()}


def _local_salt(data_dir: Path) -> str:
    """The salt for identifier hashes on a single machine: made once, kept under the data directory."""
    path = data_dir / "hash_salt"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(32)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(salt)
    tmp.chmod(0o600)
    try:
        os.link(tmp, path)  # atomic: a racing process keeps the first salt
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str) -> str:
        return self._env.get(name, default).strip()

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        raw = self._env.get(name)
        if raw is None or not raw.strip():
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        return value

    def port(self, name: str, default: int) -> int:
        value = self.integer(name, default)
        if not 0 <= value <= 65535:
            raise ConfigError(f"{name} must be a TCP port (0-65535), got {value}")
        return value

    def number(self, name: str, default: float) -> float:
        raw = self._env.get(name)
        if raw is None or not raw.strip():
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self._env.get(name)
        if raw is None or not raw.strip():
            return default
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default).lower() or default
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def identifier(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if not value.replace("_", "").isalnum() or value[0].isdigit():
            raise ConfigError(f"{name} must be letters, digits and underscores, got {value!r}")
        return value
