"""Rate limits per client and surface: their settings, the buckets, and who counts as a client."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from collectors.beacon import create_app
from tracker.errors import ConfigError
from tracker.kafka.producer import MemoryPublisher
from tracker.ratelimit import RATE_LIMIT_SURFACES, RateLimit, TokenBuckets, retry_after
from tracker.settings import Settings

SERVER_KEY = "server-key-0123456789"


def test_every_surface_has_a_default_and_settings_override_some() -> None:
    settings = Settings.from_env(
        {"TRACKER_RATE_LIMITS": '{"beacon": {"rate": 2, "burst": 3}, "console": {"rate": 0.5}}'}
    )
    assert settings.rate_limit("beacon") == RateLimit(2.0, 3)
    assert settings.rate_limit("console") == RateLimit(0.5, RATE_LIMIT_SURFACES["console"].burst)
    assert settings.rate_limit("calls") == RATE_LIMIT_SURFACES["calls"]
    # the management API keeps its own variables unless TRACKER_RATE_LIMITS names it
    api = Settings.from_env({"TRACKER_LINKS_API_RATE": "3", "TRACKER_LINKS_API_BURST": "7"})
    assert api.rate_limit("links_api") == RateLimit(3.0, 7)
    off = Settings.from_env({"TRACKER_RATE_LIMITS": '{"links": "off"}'})
    assert off.rate_limit("links") is None and off.rate_limit("beacon") is not None
    everything = Settings.from_env({"TRACKER_RATE_LIMITS": "off"})
    assert all(everything.rate_limit(s) is None for s in RATE_LIMIT_SURFACES)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"beacons": {"rate": 1}}', "unknown surface 'beacons'"),
        ('{"beacon": {"rate": 0}}', "beacon.rate must be a positive number"),
        ('{"beacon": {"burst": 0.5}}', "beacon.burst must be a whole number"),
        ('{"beacon": {"rate": 1, "per": "ip"}}', 'or an object {"rate": ..., "burst": ...}'),
        ("[1]", "must be a JSON object"),
    ],
)
def test_a_wrong_rate_limit_setting_stops_the_start(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match="TRACKER_RATE_LIMITS") as caught:
        Settings.from_env({"TRACKER_RATE_LIMITS": raw})
    assert message in str(caught.value)


def test_a_bucket_refuses_past_its_burst_says_how_long_to_wait_and_refills() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("a", now=0.0)
    assert wait == pytest.approx(0.5)
    assert retry_after(wait) == 1
    assert buckets.take("b", now=0.0) == 0.0  # another client is not held up
    assert buckets.take("a", now=0.5) == 0.0  # one token back after half a second


def test_memory_is_bounded_without_letting_a_held_back_client_off() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2, max_clients=3)
    assert [buckets.take("flooder", now=0.0) > 0 for _ in range(3)] == [False, False, True]
    # a flood of new addresses in the same second, past the bound
    assert [buckets.take(f"new-{n}", now=0.1) for n in range(10)] == [0.0] * 10
    assert buckets.take("flooder", now=0.2) > 0  # still held back
    assert len(buckets._buckets) <= 3
    # once the early ones have refilled, their room goes to newcomers
    assert buckets.take("late", now=5.0) == 0.0 and "late" in buckets._buckets


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_HASH_SALT": "s",
            "TRACKER_TRUST_FORWARDED_FOR": "true",
            "TRACKER_RATE_LIMITS": '{"beacon": {"rate": 0.001, "burst": 2}}',
            **env,
        }
    )


def _event() -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "type": "page_view", "ts": "2026-11-21T10:00:00Z"}


async def test_the_client_is_the_network_and_health_is_never_limited(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path), MemoryPublisher())
    async with TestClient(TestServer(app)) as client:

        async def send(ip: str) -> int:
            answer = await client.post(
                "/v1/events", json=[_event()], headers={"X-Forwarded-For": ip}
            )
            return answer.status

        # 203.0.113.7 and .99 are one /24: one client
        assert [await send("203.0.113.7"), await send("203.0.113.99")] == [200, 200]
        assert await send("203.0.113.7") == 429
        assert await send("198.51.100.1") == 200
        health = await client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7"})
        assert health.status == 200


async def test_a_server_source_is_limited_by_its_own_rate_not_its_address(
    tmp_path: Path,
) -> None:
    sources = [{"name": "backend", "write_key": SERVER_KEY, "kind": "server"}]
    settings = _settings(tmp_path, TRACKER_SOURCES=json.dumps(sources))
    auth = {"Authorization": "Basic " + base64.b64encode(f"{SERVER_KEY}:".encode()).decode()}
    async with TestClient(TestServer(create_app(settings, MemoryPublisher()))) as client:
        statuses = [
            (await client.post("/v1/events", json=[_event()], headers=auth)).status
            for _ in range(5)
        ]
        assert statuses == [200] * 5  # TRACKER_SOURCE_RATE's 50/s, not the address's 2
        # a wrong key counts against its address, as no key does
        wrong = {"Authorization": "Basic " + base64.b64encode(b"wrong-key-xxxxx:").decode()}
        track = {"userId": "u1", "event": "Signed Up"}
        statuses = [
            (await client.post("/v1/track", json=track, headers=wrong)).status for _ in range(2)
        ]
        assert statuses == [401, 401]
        segment = await client.post("/v1/track", json=track, headers=wrong)
        assert segment.status == 429
        answer = await segment.json()
        assert answer["code"] == "rate_limited" and segment.headers["Retry-After"]


def test_the_cli_waits_as_a_429_tells_it_then_gets_its_answer(tmp_path: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tracker.cli.client import console_request

    answers = [(429, b'{"error": "slow down"}'), (200, b"1\n")]

    class Console(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            status, body = answers.pop(0)
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Console)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = Settings.from_env(
            {"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_CONSOLE_PORT": str(server.server_port)}
        )
        assert console_request(settings, "/api/query", {"sql": "SELECT 1"}, "query") == b"1\n"
        assert answers == []
    finally:
        server.shutdown()
        server.server_close()
