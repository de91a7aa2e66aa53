"""Fuzzing the calls and links edge with a fixed seed, so CI runs the same few thousand requests
every time: the real aiohttp apps in-process, producing to the real Kafka broker.

Whatever is sent, nothing answers 5xx except 503 with Retry-After, and every 4xx says why.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook
from twilio.request_validator import RequestValidator

from collectors.calls import create_app as create_calls_app
from collectors.links import LinkState, LinkTable
from collectors.links import create_app as create_links_app
from tests.conftest import component_env
from tracker.cli.kafka_local import LocalKafka
from tracker.kafka.producer import KafkaPublisher
from tracker.settings import Settings

pytestmark = pytest.mark.integration

PUBLIC = "https://calls.example.com"
GENERIC_SECRET = "whsec_" + base64.b64encode(b"fuzzing-secret-for-the-generic!!").decode()
TWILIO_TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
TOKEN = "fuzz-token"
FREESWITCH_AUTH = "Basic " + base64.b64encode(b"cdr:cdr-password").decode()

# A fixed seed: the same requests on every run, so a failure in CI reproduces.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


@dataclass
class Edge:
    loop: asyncio.AbstractEventLoop
    session: aiohttp.ClientSession
    calls: str
    links: str

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        async def send() -> tuple[int, bytes, dict[str, str]]:
            async with self.session.request(
                method, url, data=body, headers=headers, allow_redirects=False
            ) as response:
                return response.status, await response.read(), dict(response.headers)

        answer: tuple[int, bytes, dict[str, str]] = self.run(send())
        return answer


@pytest.fixture(scope="module")
def edge(kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    env = component_env(
        kafka.bootstrap,
        tmp_path_factory.mktemp("fuzz"),
        TRACKER_CALLS_PUBLIC_URL=PUBLIC,
        TRACKER_GENERIC_WEBHOOK_SECRET=GENERIC_SECRET,
        TRACKER_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        TRACKER_FREESWITCH_USERNAME="cdr",
        TRACKER_FREESWITCH_PASSWORD="cdr-password",
        TRACKER_API_TOKEN=TOKEN,
        TRACKER_LINKS_API_RATE="1000000",
        TRACKER_LINKS_API_BURST="1000000",
    )
    config = Settings.from_env(env).with_hash_salt()
    loop = asyncio.new_event_loop()
    calls = TestServer(create_calls_app(config, KafkaPublisher(config)))
    links = TestServer(
        create_links_app(config, KafkaPublisher(config), LinkState(config, LinkTable()))
    )

    async def start() -> aiohttp.ClientSession:
        await calls.start_server()
        await links.start_server()
        session = aiohttp.ClientSession()
        for server in (calls, links):
            for _ in range(600):
                async with session.get(server.make_url("/readyz")) as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{server.make_url('/')} never became ready")
        return session

    session = loop.run_until_complete(start())
    running = Edge(loop, session, str(calls.make_url("")), str(links.make_url("")))
    _seed_links(running)
    yield running

    async def stop() -> None:
        await session.close()
        await links.close()
        await calls.close()

    loop.run_until_complete(stop())
    loop.close()


def assert_answered(status: int, body: bytes, headers: dict[str, str]) -> None:
    """No 5xx but a 503 with Retry-After; a 4xx always carries a reason."""
    if status >= 500:
        assert status == 503 and headers.get("Retry-After"), (status, body[:500])
    if 400 <= status < 500:
        assert body.strip(), status
        if headers.get("Content-Type", "").startswith("application/json"):
            answer = orjson.loads(body)
            assert answer.get("error"), answer
            if status == 400 and "errors" in answer:
                assert all(e.get("field") and e.get("reason") for e in answer["errors"]), answer


# -- what a fuzzer sends -----------------------------------------------------------------------

ODD_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59Z",
    "1969-12-31T23:59:59Z",
    "1899-01-01T00:00:00Z",
    " ",
    "",
    "2026-13-01T00:00:00Z",
    "Fri, 31 Dec 9999 23:59:59 -1400",
    "Mon, 01 Jan 0001 00:00:00 +1400",
    "1e20",
    "-1",
    "253402300800",
    "nan",
    "inf",
]
BIG = ["x" * 257, "y" * 5000, "z" * 70_000, "\x00" * 300, "\n" * 100]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(ODD_TIMES + BIG)
)


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
) | st.sampled_from(
    [_nested(40), _nested(200), list(range(1500)), {str(i): i for i in range(1100)}]
)

GENERIC_FIELDS = [
    "call_id",
    "leg_id",
    "status",
    "timestamp",
    "direction",
    "from",
    "to",
    "started_at",
    "answered_at",
    "ended_at",
    "ring_seconds",
    "queue_seconds",
    "talk_seconds",
    "hold_seconds",
    "transfers",
    "queue",
    "agent",
    "recording",
    "hangup_by",
]
GOOD_GENERIC = {
    "call_id": "fuzz-call",
    "status": "completed",
    "timestamp": "2026-11-29T10:00:00Z",
    "direction": "inbound",
    "from": "+14155550132",
    "to": "+18005550100",
}


def _mutated(base: dict[str, Any], names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with some known fields changed or dropped and some unknown ones added."""
    return st.builds(
        lambda changes, dropped, extra: {
            **{k: v for k, v in base.items() if k not in dropped},
            **changes,
            **extra,
        },
        st.dictionaries(st.sampled_from(names), JSON_VALUES, max_size=4),
        st.sets(st.sampled_from(sorted(base)), max_size=2),
        st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=2),
    )


def _sign_generic(body: bytes, msg_id: str) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(GENERIC_SECRET).sign(msg_id, now, body.decode()),
        "Content-Type": "application/json",
    }


@settings(FUZZ, max_examples=2000)
@given(
    payload=_mutated(GOOD_GENERIC, GENERIC_FIELDS)
    | st.text(max_size=50)
    | st.sampled_from(["[" * 1000 + "]" * 1000, '{"x":' + "[" * 2000 + "]" * 2000 + "}"]),
    msg_id=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
    | st.just("m" * 300),
)
def test_fuzz_the_signed_generic_call_webhook(edge: Edge, payload: Any, msg_id: str) -> None:
    body = orjson.dumps(payload) if isinstance(payload, dict) else payload.encode()
    status, answer, headers = edge.request(
        "POST", edge.calls + "/v1/calls/generic", body, _sign_generic(body, msg_id)
    )
    assert status != 401, answer[:300]  # signed properly: validation is what answers
    assert_answered(status, answer, headers)


TWILIO_FIELDS = [
    "CallSid",
    "CallStatus",
    "Direction",
    "From",
    "To",
    "Timestamp",
    "SequenceNumber",
    "CallDuration",
    "QueueTime",
    "QueueSid",
    "ParentCallSid",
    "AnsweredBy",
    "RecordingSid",
    "RecordingUrl",
]
FORM_VALUES = st.text(max_size=40) | st.sampled_from(ODD_TIMES + BIG)


@settings(FUZZ, max_examples=700)
@given(
    params=st.builds(
        lambda changes, extra: {
            "CallSid": "CA0123",
            "CallStatus": "completed",
            "Direction": "inbound",
            **changes,
            **extra,
        },
        st.dictionaries(st.sampled_from(TWILIO_FIELDS), FORM_VALUES, max_size=4),
        st.dictionaries(st.text(min_size=1, max_size=8), FORM_VALUES, max_size=2),
    )
)
def test_fuzz_the_signed_twilio_webhook(edge: Edge, params: dict[str, str]) -> None:
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        f"{PUBLIC}/v1/calls/twilio", params
    )
    status, answer, headers = edge.request(
        "POST",
        edge.calls + "/v1/calls/twilio",
        urlencode(params).encode(),
        {
            "X-Twilio-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert_answered(status, answer, headers)


FREESWITCH_VARIABLES = [
    "uuid",
    "call_uuid",
    "direction",
    "caller_id_number",
    "destination_number",
    "start_epoch",
    "start_uepoch",
    "answer_epoch",
    "end_epoch",
    "billsec",
    "progresssec",
    "hold_accum_seconds",
    "hangup_cause",
    "cc_queue",
    "cc_agent",
    "record_path",
]


@settings(FUZZ, max_examples=700)
@given(
    variables=_mutated(
        {"uuid": "6f2b2ea6", "direction": "inbound", "start_epoch": "1795341600"},
        FREESWITCH_VARIABLES,
    ),
    callflow=JSON_VALUES,
)
def test_fuzz_the_freeswitch_cdr_webhook(
    edge: Edge, variables: dict[str, Any], callflow: Any
) -> None:
    cdr = {"variables": variables, "callflow": callflow}
    status, answer, headers = edge.request(
        "POST",
        edge.calls + "/v1/calls/freeswitch",
        orjson.dumps(cdr),
        {"Authorization": FREESWITCH_AUTH, "Content-Type": "application/json"},
    )
    assert_answered(status, answer, headers)


# -- links ---------------------------------------------------------------------------------------

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
SEEDED: dict[str, dict[str, Any]] = {
    "plain": {"target": "https://shop.example/"},
    "frag": {"target": "https://shop.example/p?x=1#reviews"},
    "utm": {"target": "https://shop.example/#top", "utm": {"source": "mail", "campaign": "c"}},
    "ruled": {
        "target": "https://shop.example/",
        "rules": [{"target": "https://m.shop.example/#m", "devices": ["mobile"]}],
    },
    "limited": {"target": "https://shop.example/", "max_clicks": 3, "fallback_url": None},
    "off": {"target": "https://shop.example/", "disabled": True},
    "patched": {"target": "https://shop.example/"},
}


def _seed_links(edge: Edge) -> None:
    for slug, body in SEEDED.items():
        status, answer, _ = edge.request(
            "POST", edge.links + "/api/links", orjson.dumps({"slug": slug, **body}), AUTH
        )
        assert status == 201, answer


HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@settings(FUZZ, max_examples=2000)
@given(
    method=st.sampled_from(["GET", "HEAD"]),
    slug=st.sampled_from(sorted(SEEDED)) | st.text(max_size=70),
    query=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=3),
    user_agent=HEADER_TEXT,
    language=HEADER_TEXT,
)
def test_fuzz_redirects(
    edge: Edge,
    method: str,
    slug: str,
    query: list[tuple[str, str]],
    user_agent: str,
    language: str,
) -> None:
    path = "/" + quote(slug, safe="")
    if query:
        path += "?" + urlencode(query)
    status, body, headers = edge.request(
        method,
        edge.links + path,
        headers={"User-Agent": user_agent, "Accept-Language": language},
    )
    assert_answered(status, body if method == "GET" else b"-", headers)
    if status in (301, 302, 307, 308):
        # The click id reaches the site: in the query, never after the fragment.
        location = urlsplit(headers["Location"])
        assert location.scheme == "https" and location.hostname, headers["Location"]
        assert "tc_id" in parse_qs(location.query), headers["Location"]
        assert "tc_id" not in location.fragment, headers["Location"]


LINK_FIELDS = [
    "slug",
    "target",
    "status_code",
    "tags",
    "campaign",
    "channel",
    "utm",
    "forward_query",
    "valid_since",
    "valid_until",
    "fallback_url",
    "max_clicks",
    "disabled",
    "rules",
]
LINK_VALUES = JSON_VALUES | st.sampled_from(
    [
        "https://a.example:65536/",
        "https://a.example/#frag",
        "sale\n",
        [{"target": "https://a.example/", "devices": ["mobile"] * 50}],
        {"source": "s" * 300},
        10**13,
    ]
)


@settings(FUZZ, max_examples=2000)
@given(
    body=st.builds(
        lambda changes, extra: {"target": "https://shop.example/", **changes, **extra},
        st.dictionaries(st.sampled_from(LINK_FIELDS), LINK_VALUES, max_size=4),
        st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=1),
    )
    | JSON_VALUES,
    patch=st.booleans(),
)
def test_fuzz_the_links_api(edge: Edge, body: Any, patch: bool) -> None:
    if isinstance(body, dict) and not patch and isinstance(body.get("slug"), str):
        body["slug"] = body["slug"] + uuid.uuid4().hex[:6] if body["slug"] else body["slug"]
    method, url = ("PATCH", "/api/links/patched") if patch else ("POST", "/api/links")
    status, answer, headers = edge.request(method, edge.links + url, orjson.dumps(body), AUTH)
    assert_answered(status, answer, headers)
    if patch and status == 200:  # keep the link there for the next change
        assert orjson.loads(answer)["slug"] == "patched"
