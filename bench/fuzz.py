"""Hostile input on every endpoint: a fuzz harness against the real services.

    python bench/fuzz.py                       # 100,000 cases, seed 1, about 10 minutes
    python bench/fuzz.py --cases 3000 --seed 7  # the slice the test suite runs

bench/README.md (section "Fuzz") explains it. In short: on its own local Kafka broker (or
``--bootstrap``), the product runs as a user runs it (``python -m tracker worker`` with its
console and embedded chDB, ``serve beacon``, ``serve links``, ``serve calls``, ``serve email``,
``serve helpdesk``), with secrets set so that signed webhooks can be accepted and forged ones
refused (Intercom's is left unset: it must answer 503 with Retry-After). From a fixed
seed the harness generates cases for every endpoint: oversized and deeply nested bodies, invalid
UTF-8, compressed bodies (valid, truncated, bombs), huge batches and maps, header injection
(CR/LF in values, on raw sockets), slug traversal, open redirects, forged, replayed and skewed
webhooks, and SQL through the console that tries to write, read files, reach the network or
change settings. Then it checks:

- nothing answered 5xx other than 503 with ``Retry-After``, and every request got an answer;
- every refusal (4xx) has a reason: a JSON ``error``/``message``, or a non-empty page;
- what a case must be refused (a forged webhook, a write through the console...) was refused;
- no redirect goes anywhere but an http(s) URL, to the link's own host for the seeded links,
  and no answer carries a header a request tried to inject;
- nothing crashed: every service still answers ``/healthz``; their RSS is printed, start and
  end, and must not grow by more than ``--rss-growth-mb``;
- nothing invalid landed in ``touchpoints`` (checked in ClickHouse once the worker is idle),
  no file was written by the console, no table was dropped.

It prints the cases per endpoint and their outcomes, writes bench/results/fuzz.json, and exits
non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import hashlib
import hmac
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import brotli
import orjson
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from yarl import URL

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "fuzz.json"

TOKEN = "fuzz-api-token"
GENERIC_KEY = b"fuzzing-secret-for-the-generic!!"
GENERIC_SECRET = "whsec_" + base64.b64encode(GENERIC_KEY).decode()
TWILIO_TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
MAILGUN_KEY = "key-fuzz-mailgun-signing"
POSTMARK = ("fuzz", "postmark-password")
HELPDESK_KEY = b"fuzzing-secret-for-the-helpdesk!"
HELPDESK_SECRET = "whsec_" + base64.b64encode(HELPDESK_KEY).decode()
ZENDESK_SECRET = "fuzz-zendesk-signing-secret"
POOLS = {"spring": {"numbers": ["+18005550101", "+18005550102"], "fallback": "+18005550100"}}
SEEDED_LINKS = {
    "fz-home": "https://example.com/landing",
    "fz-fwd": "https://example.com/p?x=1",
    "fz-rules": "https://example.com/desktop",
}
INJECTED = "x-fuzz-injected"
MAX_BODY = 1024 * 1024  # TRACKER_MAX_BODY_BYTES's default

# The share of cases each endpoint gets (of --cases).
WEIGHTS = {
    "beacon POST /v1/events": 20,
    "beacon GET /v1/p.gif": 12,
    "beacon Segment /v1/{batch,track,...}": 8,
    "beacon POST /v1/numbers": 4,
    "beacon raw HTTP (header injection)": 3,
    "links GET /{slug}": 15,
    "links /api/links": 8,
    "calls POST /v1/calls/{provider}": 12,
    "email POST /v1/email/{provider}": 8,
    "helpdesk POST /v1/helpdesk/{provider}": 6,
    "console POST /api/query": 5,
    "console GET /api/reports/{name}": 1,
    "console GET /api/journey": 1,
    "console POST /api/forget": 1,
}


@dataclass
class Case:
    endpoint: str
    kind: str
    service: str
    method: str = "GET"
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    raw: bytes | None = None  # sent as is on a socket, for what an HTTP client will not send
    expect: frozenset[int] | None = None  # the statuses this case may answer, when it matters
    redirect_host: str | None = None  # a 3xx must go to this host
    repeat: int = 1  # a replay: the same request this many times


@dataclass
class Outcome:
    endpoint: str
    kind: str
    status: int  # 0: no answer
    failure: str | None


# -- what a fuzzer sends ----------------------------------------------------------------------

ODD_TIMES = [
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1969-12-31T23:59:59Z",
    "2026-13-45T99:99:99Z", "2026-02-30T10:00:00Z", "", " ", "1e20", "-1", "nan",
    "2026-11-22T10:00:00.123456789+23:59", "Fri, 31 Dec 9999 23:59:59 -1400",
]  # fmt: skip
ODD_STRINGS = [
    "", " ", "\x00", "null", "NaN", "0", "-1", "ada@example.com", "+1 415 555 0100", "é😀",
    "\ud7ff", "a\r\nX-Fuzz-Injected: yes", "<script>alert(1)</script>", "' OR 1=1 --",
    "../../../etc/passwd", "%00", "\u202e", "\ufeff",
]  # fmt: skip


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Gen:
    """Every case, from one seeded random source: the same seed, the same cases."""

    def __init__(self, seed: int, ports: dict[str, int], work: Path) -> None:
        self.r = random.Random(seed)
        self.ports = ports
        self.work = work
        self.twilio = RequestValidator(TWILIO_TOKEN)

    # -- building blocks

    def string(self) -> str:
        r = self.r
        pick = r.randrange(6)
        if pick == 0:
            return r.choice(ODD_STRINGS)
        if pick == 1:
            size = 70_000 if r.random() < 0.05 else r.choice([257, 1025, 4097])
            return r.choice('x@é😀\\"\x00') * size
        if pick == 2:
            return "".join(chr(r.randrange(1, 0x2FFF)) for _ in range(r.randrange(1, 30)))
        return "".join(r.choice("abcdefghijklmnopqrstuvwxyz0123456789_-") for _ in range(8))

    def value(self, depth: int = 0) -> Any:
        r = self.r
        pick = r.randrange(10 if depth < 3 else 6)
        if pick == 0:
            return None
        if pick == 1:
            return r.choice([True, False, 0, -1, 2**63, 2**80, 1e308, -1e308, 0.1])
        if pick in (2, 3, 4, 5):
            return self.string()
        if pick in (6, 7):
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        return {self.string()[:20]: self.value(depth + 1) for _ in range(r.randrange(4))}

    def nested(self) -> bytes:
        depth = self.r.choice([33, 100, 1000, 100_000])
        if self.r.random() < 0.5:
            return b"[" * depth + b"]" * depth
        return b'{"a":' * depth + b"1" + b"}" * depth

    def event(self, plain: bool = False) -> dict[str, Any]:
        r = self.r
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=r.getrandbits(128), version=4)),
            "type": r.choice(["page_view", "signup", "purchase"]),
            "ts": now_iso(),
            "anonymous_id": f"fz-{r.randrange(10**6)}",
        }
        if r.random() < 0.3:
            event["page"] = {"url": f"https://example.com/p/{r.randrange(100)}?utm_source=fz"}
        for _ in range(0 if plain else r.randrange(4)):
            name = r.choice([
                "event_id", "type", "ts", "sent_ts", "email", "phone", "user_id", "page",
                "properties", "campaign", "value", "currency", "survey", "consent", "context",
                "ad_click_ids", "channel", "unknown", "session_id",
            ])  # fmt: skip
            if name in ("ts", "sent_ts"):
                event[name] = r.choice(ODD_TIMES)
            elif name in ("properties", "context", "page", "campaign", "ad_click_ids", "survey"):
                size = r.choice([1, 3, 51, 2000])
                if size > 3:  # a wide map of small values
                    event[name] = {f"k{i}": "v" * r.randrange(3) for i in range(size)}
                else:
                    event[name] = {self.string()[:200]: self.value(1) for _ in range(size)}
            else:
                event[name] = self.value()
        return event

    def json_body(self, payload: Any) -> bytes:
        try:
            return orjson.dumps(payload)
        except TypeError:  # an integer past 64 bits: what a client could still send
            return repr(payload).encode()

    def hostile_body(self) -> tuple[str, bytes]:
        """A body that is no valid request at all, and what kind it is."""
        r = self.r
        kinds = ["binary", "nested", "invalid_utf8", "bom", "oversized", "empty", "text"]
        kind = r.choices(kinds, [4, 4, 4, 1, 1, 1, 4])[0]
        if kind == "binary":
            return kind, r.randbytes(r.randrange(1, 300))
        if kind == "nested":
            return kind, self.nested()
        if kind == "invalid_utf8":
            return kind, b'[{"event_id": "\xff\xfe", "type": "page_view", "ts": "\xc0\x80"}]'
        if kind == "bom":
            return kind, b"\xef\xbb\xbf[]"
        if kind == "oversized":
            return kind, b'{"events": ["' + b"a" * (MAX_BODY + 10) + b'"]}'
        if kind == "empty":
            return kind, b""
        return kind, self.string().encode("utf-8", "surrogatepass")

    def bad_provider(self) -> str:
        """A provider path segment no route serves: traversal, case, length, encoded bytes."""
        return self.r.choice(["../generic", "GENERIC", "x" * 300, "generic%2f..", "%00"])

    def maybe_encoded(
        self, kind: str, body: bytes, headers: dict[str, str], expect: frozenset[int] | None
    ) -> tuple[str, bytes, frozenset[int] | None]:
        """A signed webhook, sometimes sent compressed (signed over the decoded body, as the
        collector checks it); a broken encoding may answer anything but a 5xx."""
        if kind in ("signed", "signed_hostile") and self.r.random() < 0.3:
            encoding, body = self.encode(body, headers)
            return encoding, body, expect if encoding == "compressed" else None
        return "plain", body, expect

    def encode(self, body: bytes, headers: dict[str, str]) -> tuple[str, bytes]:
        """Maybe compressed: valid, truncated, mislabelled, unknown, or a bomb."""
        r = self.r
        pick = r.randrange(12)
        if pick > 5:
            return "plain", body
        encoding = r.choice(["gzip", "deflate", "br", "zstd"])
        compress = PACKERS[encoding]
        headers["Content-Encoding"] = encoding
        if pick == 0:
            return "compressed", compress(body)
        if pick == 1:
            packed = compress(body)
            return "truncated_compressed", packed[: max(1, len(packed) // 2)]
        if pick == 2:
            return "compression_bomb", _bomb(encoding)
        if pick == 3:
            return "mislabelled_encoding", body
        if pick == 4:
            headers["Content-Encoding"] = r.choice(["compress", "x-bogus", "gzip, br", "GZIP"])
            return "odd_encoding", body
        return "compressed", compress(body)

    # -- the endpoints

    def beacon_events(self) -> Case:
        r = self.r
        headers = {"Content-Type": r.choice(["application/json", "text/plain", "x/y"])}
        pick = r.randrange(10)
        if pick < 2:
            kind, body = self.hostile_body()
        elif pick == 2:
            kind, body = (
                "huge_batch",
                self.json_body([self.event(plain=True) for _ in range(r.choice([501, 2000]))]),
            )
        elif pick == 3:
            kind = "huge_map"
            body = self.json_body(
                [{**self.event(), "properties": {f"k{i}": "v" for i in range(20_000)}}]
            )
        else:
            kind = "events"
            batch = [self.event() for _ in range(r.randrange(1, 12))]
            body = self.json_body({"events": batch} if r.random() < 0.5 else batch)
        if r.random() < 0.1:
            headers["Authorization"] = "Basic " + base64.b64encode(b"wrong-key:").decode()
            kind += "+wrong_write_key"
        encoding, body = self.encode(body, headers)
        return Case(
            "beacon POST /v1/events",
            f"{kind}/{encoding}",
            "beacon",
            "POST",
            "/v1/events",
            headers,
            body,
        )

    def pixel(self) -> Case:
        r = self.r
        params = [
            (r.choice(["event_id", "type", "ts", "email", "phone", "url", "referrer", "title", "utm_source", "p.plan", "p." + "k" * 200, "anonymous_id"]), self.string()[:3000])
            for _ in range(r.randrange(6))
        ]  # fmt: skip
        query = urlencode(params, quote_via=quote)
        kind = "params"
        if r.random() < 0.3:
            query += "&" + r.choice(["ts=%FF%FE", "email=%C0%80", "p.x=%00", "type=%", "a=b;c", "url=%0d%0aX-Fuzz-Injected:%20yes", "%%%"])  # fmt: skip
            kind = "raw_query"
        headers = {}
        if r.random() < 0.3:
            # UTF-8 bytes as latin-1 text; control characters go on raw sockets (raw_http)
            referer = self.string()[:500].encode("utf-8", "replace").decode("latin-1")
            headers["Referer"] = "".join(c for c in referer if c >= " " and c != "\x7f")
        path = f"/v1/p.gif?{query}"
        if len(path) > 8000:
            path = path[:8000]
        return Case("beacon GET /v1/p.gif", kind, "beacon", "GET", path, headers)

    def segment(self) -> Case:
        r = self.r
        call = r.choice(["batch", "track", "identify", "page", "screen", "alias", "group"])
        message: dict[str, Any] = {
            "type": call if call != "batch" else "track",
            "messageId": str(uuid.UUID(int=r.getrandbits(128))),
            "anonymousId": f"fz-{r.randrange(1000)}",
            "event": "Signed Up",
            "timestamp": r.choice([now_iso(), *ODD_TIMES]),
        }
        for _ in range(r.randrange(3)):
            message[r.choice(["properties", "traits", "context", "userId", "integrations"])] = (
                self.value()
            )
        payload: Any = {"batch": [message] * r.choice([1, 3, 600])} if call == "batch" else message
        kind = "message"
        if r.random() < 0.2:
            kind, body = self.hostile_body()
        else:
            body = self.json_body(payload)
        headers = {"Content-Type": "application/json"}
        if r.random() < 0.5:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{self.string()[:40]}:".encode()).decode()  # fmt: skip
        encoding, body = self.encode(body, headers)
        return Case("beacon Segment /v1/{batch,track,...}", f"{kind}/{encoding}", "beacon", "POST", f"/v1/{call}", headers, body)  # fmt: skip

    def numbers(self) -> Case:
        r = self.r
        body: dict[str, Any] = {}
        for name in r.sample(
            ["pool", "session_id", "anonymous_id", "campaign", "other"], r.randrange(5)
        ):
            body[name] = self.value()
        if r.random() < 0.6:
            body["pool"] = r.choice(["spring", "../spring", "x" * 1000])
            body["session_id"] = f"s-{r.randrange(10**6)}"
        kind = "request"
        raw = self.json_body(body)
        if r.random() < 0.2:
            kind, raw = self.hostile_body()
        headers = {"Content-Type": "application/json"}
        encoding, raw = self.encode(raw, headers)
        return Case("beacon POST /v1/numbers", f"{kind}/{encoding}", "beacon", "POST", "/v1/numbers", headers, raw)  # fmt: skip

    def raw_http(self) -> Case:
        """Requests no HTTP client library will send: CR/LF and NUL inside header values,
        obsolete line folding, a header split by a bare LF, conflicting lengths."""
        r = self.r
        body = self.json_body([self.event()])
        injections = [
            ("crlf_in_value", f"User-Agent: fz\r\n{INJECTED}: yes\r\n"),
            ("bare_lf", f"User-Agent: fz\n{INJECTED}: yes\r\n"),
            ("nul_in_value", "User-Agent: fz\x00evil\r\n"),
            ("obs_fold", "User-Agent: fz\r\n folded\r\n"),
            ("bare_cr", "User-Agent: fz\revil\r\n"),
            ("two_lengths", f"Content-Length: {len(body)}\r\n"),
            ("chunked_and_length", "Transfer-Encoding: chunked\r\n"),
            ("huge_header", "X-Big: " + "a" * 20_000 + "\r\n"),
            ("many_headers", "".join(f"X-H{i}: v\r\n" for i in range(200))),
        ]
        kind, extra = r.choice(injections)
        path = r.choice(["/v1/events", "/v1/batch", "/v1/p.gif?ts=x"])
        method = "GET" if path.startswith("/v1/p.gif") else "POST"
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
        )
        raw = head.encode("latin-1") + (body if method == "POST" else b"")
        return Case("beacon raw HTTP (header injection)", kind, "beacon", method, path, raw=raw)

    def redirect(self) -> Case:
        r = self.r
        slug = r.choice([*SEEDED_LINKS, "nope", "api", "healthz-x"])
        kind = r.choice(["slug", "query", "traversal", "crlf", "open_redirect", "unicode", "long"])
        host = None
        if kind == "slug":
            path = f"/{slug}"
        elif kind == "query":
            pairs = [(self.string()[:50], self.string()[:200]) for _ in range(r.randrange(1, 5))]
            path = f"/{slug}?" + urlencode(pairs, quote_via=quote)
        elif kind == "traversal":
            path = "/" + r.choice([
                "../api/links", "%2e%2e/api/links", "%2e%2e%2fapi%2flinks", "fz-home/..%2f..%2fapi%2flinks",
                "fz-home%2f..%2f..%2fetc%2fpasswd", "..%5capi%5clinks", "fz-home/../../etc/passwd",
                "%252e%252e%252fapi", "api%2flinks", "fz-home%00.js", ".%2e/.%2e/api/links",
                "fz-home/%2e%2e/%2e%2e/", "\\..\\api\\links",
            ])  # fmt: skip
        elif kind == "crlf":
            path = f"/{slug}?utm=%0d%0a{INJECTED}:%20yes&x=%0a{INJECTED}:%20yes"
        elif kind == "open_redirect":
            target = r.choice(["//evil.example", "javascript:alert(1)", "data:text/html,x", "https://evil.example", "/\\evil.example", "http:evil.example"])  # fmt: skip
            path = f"/{slug}?" + urlencode(
                {r.choice(["url", "next", "redirect", "target", "to", "qr"]): target}
            )
        elif kind == "unicode":
            path = "/" + quote("fz-hôme😀", safe="")
        else:
            path = "/" + "a" * r.choice([65, 300, 4000])
        if slug in SEEDED_LINKS and kind in ("slug", "query", "crlf", "open_redirect"):
            host = urlsplit(SEEDED_LINKS[slug]).hostname
        return Case("links GET /{slug}", kind, "links", r.choice(["GET", "HEAD"]), path, redirect_host=host)  # fmt: skip

    def management(self) -> Case:
        r = self.r
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        kind = r.choice(["create", "create_hostile_target", "patch", "delete", "read", "no_token", "wrong_token", "body"])  # fmt: skip
        expect = None
        slug = r.choice([f"fm-{r.randrange(500)}", "../fz-home", "%2e%2e", "a/b", "x" * 100, "api", "fz-home"])  # fmt: skip
        if kind == "no_token":
            del headers["Authorization"]
            expect = frozenset({401, 404, 405, 429})
        elif kind == "wrong_token":
            headers["Authorization"] = r.choice(["Bearer wrong", "Basic " + TOKEN, "Bearer " + TOKEN + "x", "bearer"])  # fmt: skip
            expect = frozenset({401, 404, 405, 429})
        method, path, body = "POST", "/api/links", None
        if kind in ("create", "no_token", "wrong_token"):
            link: dict[str, Any] = {"target": f"https://example.com/m/{r.randrange(100)}"}
            if r.random() < 0.7:
                link["slug"] = slug if r.random() < 0.3 else f"fm-{r.randrange(10**6)}"
            for _ in range(r.randrange(3)):
                link[r.choice(["tags", "utm", "rules", "valid_until", "max_clicks", "status_code", "fallback_url", "campaign", "channel", "extra"])] = self.value()  # fmt: skip
            body = self.json_body(link)
        elif kind == "create_hostile_target":
            target = r.choice([
                "javascript:alert(1)", "JAVASCRIPT:alert(1)", " javascript:alert(1)", "data:text/html,<script>x</script>",
                "//evil.example/", "/relative", "http:evil.example", "file:///etc/passwd", "ftp://example.com/",
                f"https://example.com/\r\n{INJECTED}: yes", "https://example.com/%0d%0ax", "https://ex\x00ample.com/",
                "https://example.com\\@evil.example/", "vbscript:msgbox(1)", "https://[::1", "https://" + "a" * 5000,
            ])  # fmt: skip
            field_name = r.choice(["target", "fallback_url", "rules"])
            value: Any = [{"target": target}] if field_name == "rules" else target
            base = {"target": "https://example.com/ok"}
            body = self.json_body({**base, field_name: value, "slug": f"fh-{r.randrange(10**6)}"})
            expect = frozenset({400, 429})
            if target == "https://example.com/%0d%0ax":  # percent-encoded: a valid URL
                expect = frozenset({201, 400, 429})
        elif kind == "patch":
            method, path = "PATCH", f"/api/links/{quote(slug, safe='')}"
            body = self.json_body({r.choice(["target", "disabled", "tags", "rules"]): self.value()})
        elif kind == "delete":
            method, path = "DELETE", f"/api/links/{quote(slug, safe='/')}"
        elif kind == "read":
            method = "GET"
            path = r.choice([f"/api/links/{quote(slug, safe='/')}", f"/api/links?tag={quote(self.string()[:100])}", f"/api/links/{quote(slug)}/qr.svg", "/api/openapi.json", "/api/nothing", "/api/links/%2e%2e/%2e%2e/etc/passwd"])  # fmt: skip
        else:
            _, body = self.hostile_body()
        if body is not None and kind in ("create", "patch", "body"):
            encoding, body = self.encode(body, headers)
            kind = f"{kind}/{encoding}"
        return Case("links /api/links", kind, "links", method, path, headers, body, expect=expect)

    def _generic_signed(self, body: bytes, stamp: str | None = None, msg_id: str | None = None, key: bytes = GENERIC_KEY) -> dict[str, str]:  # fmt: skip
        msg_id = msg_id or f"msg_{self.r.getrandbits(64):x}"
        stamp = stamp or str(int(time.time()))
        signed = f"{msg_id}.{stamp}.".encode() + body
        signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": stamp,
            "webhook-signature": f"v1,{signature.decode()}",
            "Content-Type": "application/json",
        }

    def calls(self) -> Case:
        r = self.r
        call = {
            "call_id": f"fz-call-{r.randrange(10**6)}",
            "status": r.choice(["ringing", "answered", "completed", "missed", "nope"]),
            "timestamp": now_iso(),
            "direction": "inbound",
            "from": "+14155550100",
            "to": "+18005550101",
        }
        for _ in range(r.randrange(3)):
            call[r.choice(["call_id", "status", "timestamp", "from", "to", "ring_seconds", "tags", "recording_url", "extra"])] = self.value()  # fmt: skip
        body = self.json_body(call)
        kind = r.choice(["signed", "signed", "forged", "skewed", "replayed", "signed_hostile", "twilio", "twilio_forged", "unconfigured", "unknown_provider"])  # fmt: skip
        provider, headers, expect, repeat = "generic", {}, None, 1
        if kind == "signed":
            headers = self._generic_signed(body)
        elif kind == "forged":
            headers = self._generic_signed(body)
            headers["webhook-signature"] = r.choice(["v1,AAAA", "v1," + base64.b64encode(r.randbytes(32)).decode(), "", "v2,x", "v1," + headers["webhook-signature"][3:].lower()])  # fmt: skip
            expect = frozenset({401})
        elif kind == "skewed":
            stamp = r.choice([str(int(time.time()) - 3600), str(int(time.time()) + 3600), "0", "-1", "1e20", "abc", "99999999999999999999"])  # fmt: skip
            headers = self._generic_signed(body, stamp=stamp)
            expect = frozenset({401})
        elif kind == "replayed":
            headers = self._generic_signed(body)
            repeat = 3
        elif kind == "signed_hostile":
            _, body = self.hostile_body()
            headers = self._generic_signed(body)
            expect = frozenset({400, 413})
        elif kind in ("twilio", "twilio_forged"):
            provider = "twilio"
            params = {"CallSid": f"CA{r.getrandbits(128):032x}", "CallStatus": r.choice(["ringing", "in-progress", "completed", "busy"]), "From": "+14155550100", "To": "+18005550101", "Direction": "inbound"}  # fmt: skip
            if r.random() < 0.3:
                params[r.choice(["CallSid", "CallStatus", "CallDuration", "Timestamp"])] = (
                    self.string()[:300]
                )
            url = f"http://127.0.0.1:{self.ports['calls']}/v1/calls/twilio"
            signature = self.twilio.compute_signature(url, params)
            if kind == "twilio_forged":
                signature = base64.b64encode(r.randbytes(20)).decode()
                expect = frozenset({401})
            headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip
            body = urlencode(params).encode()
        elif kind == "unconfigured":
            provider = r.choice(["vonage", "telnyx", "plivo", "asterisk"])
            expect = frozenset({503})
        else:
            provider = self.bad_provider()
            expect = frozenset({404})
        encoding, body, expect = self.maybe_encoded(kind, body, headers, expect)
        return Case("calls POST /v1/calls/{provider}", f"{kind}/{encoding}", "calls", "POST", f"/v1/calls/{provider}", headers, body, expect=expect, repeat=repeat)  # fmt: skip

    def email(self) -> Case:
        r = self.r
        stamp = str(int(time.time()))
        kind = r.choice(["mailgun", "mailgun", "mailgun_forged", "mailgun_skewed", "mailgun_replayed", "postmark", "postmark_wrong_auth", "hostile", "unconfigured"])  # fmt: skip
        expect, repeat, provider = None, 1, "mailgun"
        headers = {"Content-Type": "application/json"}
        if kind.startswith("mailgun"):
            if kind == "mailgun_skewed":
                stamp = r.choice([str(int(time.time()) - 86_400), "0", "1e20", "x"])
                expect = frozenset({401})
            token = f"{r.getrandbits(96):024x}"
            signature = hmac.new(MAILGUN_KEY.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()  # fmt: skip
            if kind == "mailgun_forged":
                signature = r.choice(["0" * 64, signature[::-1], "", signature.upper() + "0"])
                expect = frozenset({401})
            data: dict[str, Any] = {
                "id": f"fz-{r.randrange(10**6)}",
                "event": r.choice(["delivered", "opened", "clicked", "failed", "unknown"]),
                "timestamp": time.time(),
                "recipient": r.choice(
                    ["ada@example.com", "not-an-email", "", "a" * 400 + "@example.com"]
                ),
            }
            for _ in range(r.randrange(3)):
                data[r.choice(["id", "event", "timestamp", "recipient", "url", "delivery-status", "client-info", "severity"])] = self.value()  # fmt: skip
            body = self.json_body({"signature": {"timestamp": stamp, "token": token, "signature": signature}, "event-data": data})  # fmt: skip
            if kind == "mailgun_replayed":
                repeat = 3
        elif kind.startswith("postmark"):
            provider = "postmark"
            user, password = (
                POSTMARK if kind == "postmark" else ("fuzz", r.choice(["wrong", "", "x" * 500]))
            )
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()  # fmt: skip
            if kind == "postmark_wrong_auth":
                expect = frozenset({401})
            record = {"RecordType": r.choice(["Delivery", "Open", "Click", "Bounce", "Nope"]), "MessageID": str(uuid.uuid4()), "Recipient": "ada@example.com", "DeliveredAt": now_iso()}  # fmt: skip
            for _ in range(r.randrange(3)):
                record[r.choice(["RecordType", "Recipient", "DeliveredAt", "ReceivedAt", "OriginalLink", "Metadata"])] = self.value()  # fmt: skip
            body = self.json_body(record)
        elif kind == "hostile":
            provider = r.choice(["mailgun", "postmark"])
            _, body = self.hostile_body()
            if provider == "postmark":
                headers["Authorization"] = "Basic " + base64.b64encode(":".join(POSTMARK).encode()).decode()  # fmt: skip
        else:
            provider = r.choice(["sendgrid", "ses"])
            body = b"[]"
            expect = frozenset({503})
        encoding = "plain"
        if kind in ("mailgun", "postmark", "hostile") and r.random() < 0.3:
            encoding, body = self.encode(body, headers)
        return Case("email POST /v1/email/{provider}", f"{kind}/{encoding}", "email", "POST", f"/v1/email/{provider}", headers, body, expect=expect, repeat=repeat)  # fmt: skip

    def helpdesk(self) -> Case:
        """Ticket callbacks: Standard Webhooks (generic) and Zendesk, signed, forged, skewed,
        replayed and hostile; Intercom is left unconfigured (503 with Retry-After)."""
        r = self.r
        ticket: dict[str, Any] = {
            "id": f"fz-T-{r.randrange(10**6)}",
            "tool": r.choice(["freshdesk", "helpscout", "front"]),
            "requester": {"email": "ada@example.com", "user_id": f"fz-{r.randrange(1000)}"},
            "status": r.choice(["open", "pending", "solved", "closed", "nope"]),
            "opened_at": now_iso(),
        }
        for _ in range(r.randrange(3)):
            ticket[r.choice(["id", "tool", "requester", "status", "opened_at", "solved_at", "reopens", "rating", "queue", "extra"])] = self.value()  # fmt: skip
        kind = r.choice(["signed", "signed", "forged", "skewed", "replayed", "signed_hostile", "zendesk", "zendesk_forged", "unconfigured", "unknown_provider"])  # fmt: skip
        event = {"type": r.choice(["ticket.opened", "ticket.solved", "chat.started", "nope"]), "timestamp": now_iso(), "data": ticket}  # fmt: skip
        body = self.json_body(event)
        provider, headers, expect, repeat = "generic", {}, None, 1
        if kind == "signed":
            headers = self._generic_signed(body, key=HELPDESK_KEY)
        elif kind == "forged":
            headers = self._generic_signed(body, key=r.randbytes(32))
            expect = frozenset({401})
        elif kind == "skewed":
            stamp = r.choice([str(int(time.time()) - 3600), str(int(time.time()) + 3600), "0", "abc", "99999999999999999999"])  # fmt: skip
            headers = self._generic_signed(body, stamp=stamp, key=HELPDESK_KEY)
            expect = frozenset({401})
        elif kind == "replayed":
            headers = self._generic_signed(body, key=HELPDESK_KEY)
            repeat = 3
        elif kind == "signed_hostile":
            _, body = self.hostile_body()
            headers = self._generic_signed(body, key=HELPDESK_KEY)
            expect = frozenset({400, 413})
        elif kind in ("zendesk", "zendesk_forged"):
            provider = "zendesk"
            trigger: dict[str, Any] = {"ticket_id": str(r.randrange(10**6)), "updated_at": now_iso(), "status": r.choice(["new", "open", "solved", "closed"]), "requester_email": r.choice(["ada@example.com", "not-an-email", ""])}  # fmt: skip
            for _ in range(r.randrange(3)):
                trigger[r.choice(["ticket_id", "updated_at", "status", "event", "satisfaction", "via", "requester_phone"])] = self.value()  # fmt: skip
            body = self.json_body(trigger)
            stamp = now_iso()
            digest = hmac.new(ZENDESK_SECRET.encode(), stamp.encode() + body, hashlib.sha256)
            signature = base64.b64encode(digest.digest()).decode()
            if kind == "zendesk_forged":
                signature = r.choice(["", "AAAA", base64.b64encode(r.randbytes(32)).decode()])
                expect = frozenset({401})
            headers = {"X-Zendesk-Webhook-Signature": signature, "X-Zendesk-Webhook-Signature-Timestamp": stamp, "Content-Type": "application/json"}  # fmt: skip
        elif kind == "unconfigured":
            provider = "intercom"
            expect = frozenset({503})
        else:
            provider = self.bad_provider()
            expect = frozenset({404})
        encoding, body, expect = self.maybe_encoded(kind, body, headers, expect)
        return Case("helpdesk POST /v1/helpdesk/{provider}", f"{kind}/{encoding}", "helpdesk", "POST", f"/v1/helpdesk/{provider}", headers, body, expect=expect, repeat=repeat)  # fmt: skip

    def sql_attacks(self) -> list[tuple[str, str]]:
        marker = self.work / "outfile-marker.txt"
        return [
            ("outfile", f"SELECT 'x' INTO OUTFILE '{marker}' TRUNCATE FORMAT TSVRaw"),
            ("outfile", "SELECT 'x' INTO OUTFILE 'fz-marker.txt'"),
            ("outfile", f"SELECT 1 INTO/**/OUTFILE '{marker}'"),
            ("write", "INSERT INTO touchpoints (event_id) VALUES (generateUUIDv4())"),
            ("write", "DROP TABLE links"),
            ("write", "TRUNCATE TABLE touchpoints"),
            ("write", "ALTER TABLE touchpoints DELETE WHERE 1"),
            ("write", "CREATE TABLE fz (a Int8) ENGINE = Memory"),
            ("write", "OPTIMIZE TABLE touchpoints FINAL"),
            ("write", "KILL QUERY WHERE 1"),
            ("write", "SYSTEM SHUTDOWN"),
            ("multi", "SELECT 1; DROP TABLE links"),
            ("multi", "SELECT 1;DROP TABLE links;"),
            ("comment", "SELECT 1 /* ; */ ; DROP TABLE links"),
            ("comment", "SELECT 1 -- \n; DROP TABLE links"),
            ("comment", "SELECT 1 # x\n; TRUNCATE TABLE touchpoints"),
            ("comment", "/* SELECT */ DROP TABLE links"),
            ("file", f"SELECT * FROM file('{marker}', 'LineAsString')"),
            ("file", "SELECT * FROM file('/etc/passwd', 'LineAsString')"),
            ("file", "SELECT * FROM FILE('/etc/passwd', 'LineAsString')"),
            ("file", "SELECT * FROM `file`('/etc/passwd', 'LineAsString')"),
            ("network", "SELECT * FROM url('http://127.0.0.1:9/', 'TSV', 'a String')"),
            ("network", "SELECT * FROM s3('http://127.0.0.1:9/b/k', 'TSV', 'a String')"),
            ("network", "SELECT * FROM remote('127.0.0.1:9000', system.one)"),
            ("network", "SELECT * FROM remoteSecure('127.0.0.1:9440', system.one)"),
            ("network", "SELECT * FROM mysql('127.0.0.1:3306', 'd', 't', 'u', 'p')"),
            ("network", "SELECT * FROM postgresql('127.0.0.1:5432', 'd', 't', 'u', 'p')"),
            ("network", "SELECT * FROM hdfs('hdfs://127.0.0.1:9/x', 'TSV', 'a String')"),
            ("network", "SELECT * FROM url ('http://127.0.0.1:9/', 'TSV', 'a String')"),
            ("network", "SELECT * FROM executable('x.sh', 'TSV', 'a String')"),
            ("input", "SELECT * FROM input('a String')"),
            ("settings", "SELECT 1 SETTINGS readonly = 0"),
            ("settings", "SELECT 1 SETTINGS max_execution_time = 0"),
            ("settings", "SET readonly = 0"),
            ("settings", "SELECT * FROM numbers(10) SETTINGS max_result_rows = 0"),
            ("settings", "SELECT getSetting('readonly') SETTINGS allow_ddl = 1"),
            ("secrets", "SELECT * FROM system.users"),
            ("secrets", "SELECT * FROM system.named_collections"),
            ("secrets", "SELECT * FROM system.grants"),
            ("secrets", "SELECT * FROM system.server_settings"),
            ("secrets", "SHOW CREATE USER default"),
            ("secrets", "SHOW GRANTS"),
            ("secrets", "SHOW ACCESS"),
        ]

    def console_query(self) -> Case:
        r = self.r
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        pick = r.randrange(10)
        expect = None
        if pick < 7:
            kind, sql = r.choice(self.sql_attacks())
            noise = [
                "",
                " ",
                "\n",
                "/* x */ ",
                "-- x\n",
                "(",
                "WITH 1 AS a ",
                "SELECT 1 UNION ALL ",
            ]
            sql = r.choice(noise) + sql + r.choice(["", ";", " ", " FORMAT TSV", " -- tail"])
            expect = frozenset({400})
            body = self.json_body({"sql": sql, "format": r.choice(["tsv", "json", "csv"])})
        elif pick == 7:
            kind = "read"
            sql = r.choice([
                "SELECT count() FROM touchpoints", "SELECT type, count() FROM touchpoints GROUP BY type",
                "SHOW TABLES", "DESCRIBE touchpoints", "SELECT 1", "EXISTS touchpoints",
                "SELECT * FROM dead_letters ORDER BY received_ts DESC LIMIT 5",
                "SELECT count() FROM numbers(1000000000000)", "SELECT throwIf(1)", "SELECT 'é😀'",
                "SELECT * FROM touchpoints LIMIT 3 FORMAT JSONEachRow", "SELECT 1 FORMAT Nope",
            ])  # fmt: skip
            body = self.json_body({"sql": sql, "format": r.choice(["tsv", "json", "pretty", "vertical", "nope", 7])})  # fmt: skip
        else:
            kind = r.choice(["hostile_body", "no_token", "huge_sql"])
            if kind == "hostile_body":
                _, body = self.hostile_body()
            elif kind == "no_token":
                body = self.json_body({"sql": "SELECT 1"})
                headers["Authorization"] = r.choice(["", "Bearer x", "Bearer " + TOKEN[:-1]])
                expect = frozenset({401})
            else:
                body = self.json_body({"sql": "SELECT " + "1+" * r.choice([1000, 140_000]) + "1"})
        return Case("console POST /api/query", kind, "console", "POST", "/api/query", headers, body, expect=expect)  # fmt: skip

    def console_report(self) -> Case:
        r = self.r
        name = r.choice(["channels", "funnel", "attribution", "nope", "../../etc/passwd", "%2e%2e%2f", "x" * 500, "%00", "channels;DROP"])  # fmt: skip
        params = {r.choice(["since", "until", "model", "steps", "by", "limit", "x"]): self.string()[:200] for _ in range(r.randrange(3))}  # fmt: skip
        path = f"/api/reports/{quote(name, safe='%/')}" + ("?" + urlencode(params, quote_via=quote) if params else "")  # fmt: skip
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return Case("console GET /api/reports/{name}", "report", "console", "GET", path, headers)

    def console_journey(self) -> Case:
        r = self.r
        pick = r.randrange(4)
        if pick == 0:
            ident = r.choice(["ada@example.com", "email:ada@example.com", "user:fz-1", "+14155550100", "anon:fz-1"])  # fmt: skip
        elif pick == 1:
            ident = r.choice(["", " ", "email:", "nope:x", "' OR 1=1 --", "x' UNION SELECT * FROM system.users --", "../../etc/passwd", "\x00"])  # fmt: skip
        else:
            ident = self.string()[:5000]
        params = {"id": ident} if r.random() < 0.9 else {r.choice(["ID", "identifier", "x"]): ident}  # fmt: skip
        headers = {"Authorization": f"Bearer {TOKEN}"}
        expect = None
        if r.random() < 0.1:
            headers["Authorization"] = r.choice(["", "Bearer x"])
            expect = frozenset({401})
        path = "/api/journey?" + urlencode(params, quote_via=quote)
        return Case("console GET /api/journey", "journey", "console", "GET", path, headers, expect=expect)  # fmt: skip

    def console_forget(self) -> Case:
        r = self.r
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        identifier = r.choice([f"email:fz-{r.randrange(10**6)}@example.invalid", "email:", "phone:abc", "nope:x", "email:" + "a" * 5000, None, 7, "user_id:' OR 1=1 --"])  # fmt: skip
        body = self.json_body({"identifier": identifier})
        if r.random() < 0.2:
            _, body = self.hostile_body()
        return Case("console POST /api/forget", "forget", "console", "POST", "/api/forget", headers, body)  # fmt: skip

    def cases(self, total: int, service: str) -> Iterator[Case]:
        """``total`` cases for the endpoints of one service, in WEIGHTS' proportions."""
        makers: dict[str, Callable[[], Case]] = {
            "beacon POST /v1/events": self.beacon_events,
            "beacon GET /v1/p.gif": self.pixel,
            "beacon Segment /v1/{batch,track,...}": self.segment,
            "beacon POST /v1/numbers": self.numbers,
            "beacon raw HTTP (header injection)": self.raw_http,
            "links GET /{slug}": self.redirect,
            "links /api/links": self.management,
            "calls POST /v1/calls/{provider}": self.calls,
            "email POST /v1/email/{provider}": self.email,
            "helpdesk POST /v1/helpdesk/{provider}": self.helpdesk,
            "console POST /api/query": self.console_query,
            "console GET /api/reports/{name}": self.console_report,
            "console GET /api/journey": self.console_journey,
            "console POST /api/forget": self.console_forget,
        }
        names = [n for n in WEIGHTS if n.split(" ", 1)[0] == service]
        weights = [WEIGHTS[n] for n in names]
        for _ in range(total):
            yield makers[self.r.choices(names, weights)[0]]()


def _zstd(data: bytes) -> bytes:
    try:
        from compression import zstd  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from backports import zstd  # type: ignore[no-redef,unused-ignore]
    packed: bytes = zstd.compress(data)
    return packed


def _brotli(data: bytes) -> bytes:
    packed: bytes = brotli.compress(data, quality=4)
    return packed


PACKERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": _brotli,
    "zstd": _zstd,
}
_BOMBS: dict[str, bytes] = {}


def _bomb(encoding: str) -> bytes:
    """A few kilobytes that decode to 64 MiB of zeros."""
    if encoding not in _BOMBS:
        zeros = b"0" * (64 * 1024 * 1024)
        _BOMBS[encoding] = PACKERS[encoding](zeros)
    return _BOMBS[encoding]


# -- judging an answer --------------------------------------------------------------------------


def judge(case: Case, status: int, headers: dict[str, str], body: bytes) -> str | None:
    """Why this answer breaks a promise, or None."""
    if status == 0:
        return f"no answer: {body[:200].decode(errors='replace')}"
    if status >= 500:
        if status != 503:
            return f"answered {status}: {body[:200]!r}"
        retry = headers.get("retry-after", "")
        if not retry.isdigit() or int(retry) < 1:
            return f"503 without a Retry-After of at least 1 s: {body[:200]!r}"
    if 400 <= status < 500 and case.method != "HEAD" and not reason_in(headers, body):
        return f"{status} without a reason: {body[:200]!r}"
    if INJECTED in headers:
        return f"an injected header came back: {headers[INJECTED]!r}"
    if case.expect is not None and status not in case.expect and not (status == 429 and "retry-after" in headers):  # fmt: skip
        return f"answered {status}, expected one of {sorted(case.expect)}: {body[:200]!r}"
    if 300 <= status < 400 and status != 304:
        location = headers.get("location", "")
        parts = urlsplit(location)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"redirect to {location[:200]!r}, not an absolute http(s) URL"
        if any(c in location for c in "\r\n\x00"):
            return f"redirect to {location[:200]!r}, with a control character"
        if case.redirect_host and parts.hostname != case.redirect_host:
            return f"redirect to {location[:200]!r}, not to the link's host {case.redirect_host}"
    return None


def reason_in(headers: dict[str, str], body: bytes) -> bool:
    if headers.get("content-type", "").startswith("application/json"):
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(answer, dict):
            return False
        reason = answer.get("error") or answer.get("message")
        return isinstance(reason, str) and bool(reason.strip())
    return bool(body.strip())


# -- sending ------------------------------------------------------------------------------------


async def send(
    session: aiohttp.ClientSession, base: str, case: Case
) -> tuple[int, dict[str, str], bytes]:
    if case.raw is not None:
        return await send_raw(base, case.raw)
    url = URL(base + case.path, encoded=True)
    try:
        async with session.request(
            case.method,
            url,
            data=case.body,
            headers=case.headers,
            allow_redirects=False,
            skip_auto_headers=("Content-Type",) if "Content-Type" not in case.headers else (),
        ) as response:
            body = await response.read()
            return response.status, {k.lower(): v for k, v in response.headers.items()}, body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return 0, {}, repr(exc).encode()


async def send_raw(base: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = urlsplit(base).hostname or "127.0.0.1", urlsplit(base).port or 80
    try:
        async with asyncio.timeout(30):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(raw)
            await writer.drain()
            answer = await reader.read()
            writer.close()
    except (OSError, TimeoutError) as exc:
        return 0, {}, repr(exc).encode()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        return 0, {}, answer[:300]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


# Each service is fuzzed in a lane of its own, with its own connections, so that a slow answer
# (a console query at its time limit) holds up only its own lane.
LANES = {"beacon": 6, "links": 3, "calls": 3, "email": 2, "helpdesk": 2, "console": 2}


def lane_cases(total: int) -> dict[str, int]:
    """How many of ``total`` cases each lane gets, in WEIGHTS' proportions."""
    shares = {
        lane: sum(w for n, w in WEIGHTS.items() if n.startswith(lane + " ")) for lane in LANES
    }
    whole = sum(shares.values())
    counts = {lane: total * share // whole for lane, share in shares.items()}
    counts["beacon"] += total - sum(counts.values())
    return counts


async def run_cases(
    seed: int, total: int, bases: dict[str, str], ports: dict[str, int], work: Path
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(force_close=True, limit=sum(LANES.values()) * 2)
    started = time.monotonic()
    done = 0

    async def lane(session: aiohttp.ClientSession, index: int, service: str, count: int) -> None:
        nonlocal done
        cases = Gen(seed * 100 + index, ports, work).cases(count, service)

        async def worker() -> None:
            nonlocal done
            for case in cases:  # shared by the lane's workers: each case is taken once
                for _ in range(case.repeat):
                    status, headers, body = await send(session, bases[service], case)
                    failure = judge(case, status, headers, body)
                    outcomes.append(Outcome(case.endpoint, case.kind, status, failure))
                done += 1
                if done % 10_000 == 0:
                    say(f"  {done:>7} cases, {time.monotonic() - started:.0f} s")

        await asyncio.gather(*(worker() for _ in range(LANES[service])))
        say(f"  {service} lane done: {count:,} cases, {time.monotonic() - started:.0f} s")

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        counts = lane_cases(total)
        await asyncio.gather(
            *(lane(session, i, name, counts[name]) for i, name in enumerate(LANES))
        )
    return outcomes


# -- the product under test ---------------------------------------------------------------------


def free_port() -> int:
    from tracker.cli.kafka_local import free_port as pick

    return pick()


@dataclass
class Service:
    name: str
    args: list[str]
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        assert self.process is not None
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/healthz", timeout=5) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False


def environment(bootstrap: str, work: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    suffix = uuid.uuid4().hex[:8]
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "TRACKER_DATA_DIR": str(work / "data"),
            "TRACKER_KAFKA_BOOTSTRAP": bootstrap,
            "TRACKER_TOPIC_PREFIX": f"fuzz{suffix}.",
            "TRACKER_WORKER_ID": f"fuzz-{suffix}",
            "TRACKER_CLICKHOUSE_URL": f"chdb://{work / 'clickhouse'}",
            "TRACKER_CONSOLE_PORT": str(ports["console"]),
            "TRACKER_BEACON_PORT": str(ports["beacon"]),
            "TRACKER_LINKS_PORT": str(ports["links"]),
            "TRACKER_CALLS_PORT": str(ports["calls"]),
            "TRACKER_EMAIL_PORT": str(ports["email"]),
            "TRACKER_HELPDESK_PORT": str(ports["helpdesk"]),
            "TRACKER_HASH_SALT": "fuzz-salt",
            "TRACKER_API_TOKEN": TOKEN,
            "TRACKER_LINKS_API_RATE": "1000000",
            "TRACKER_LINKS_API_BURST": "1000000",
            "TRACKER_GENERIC_WEBHOOK_SECRET": GENERIC_SECRET,
            "TRACKER_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "TRACKER_MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY,
            "TRACKER_POSTMARK_WEBHOOK_USERNAME": POSTMARK[0],
            "TRACKER_POSTMARK_WEBHOOK_PASSWORD": POSTMARK[1],
            "TRACKER_HELPDESK_WEBHOOK_SECRET": HELPDESK_SECRET,
            "TRACKER_ZENDESK_WEBHOOK_SECRET": ZENDESK_SECRET,
            "TRACKER_CALL_NUMBER_POOLS": orjson.dumps(POOLS).decode(),
            "TRACKER_QUERY_MAX_SECONDS": "2",
            "TRACKER_BODY_READ_TIMEOUT_SECONDS": "5",
            "TRACKER_LOG_LEVEL": "WARNING",
        }
    )
    return env


def start(service: Service, env: dict[str, str], work: Path, timeout: float = 120) -> None:
    log = (work / f"{service.name}.log").open("ab")
    service.process = subprocess.Popen(
        [sys.executable, "-m", "tracker", *service.args],
        env=env,
        cwd=work,  # a relative INTO OUTFILE would land here
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            tail = (work / f"{service.name}.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"{service.name} exited early:\n{tail}")
        try:
            with urllib.request.urlopen(service.base + "/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{service.name} was not ready within {timeout:.0f} s")


def stop(service: Service) -> None:
    process, service.process = service.process, None
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def console_query(console: str, sql: str) -> bytes:
    request = urllib.request.Request(
        console + "/api/query",
        data=orjson.dumps({"sql": sql, "format": "json"}),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        body: bytes = answer.read()
        return body


def rows(console: str, sql: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in console_query(console, sql).splitlines() if line]


def seed_links(links: str) -> None:
    for slug, target in SEEDED_LINKS.items():
        link: dict[str, Any] = {"slug": slug, "target": target}
        if slug == "fz-rules":
            link["rules"] = [{"target": "https://example.com/mobile", "devices": ["mobile"]}]
        request = urllib.request.Request(
            links + "/api/links",
            data=orjson.dumps(link),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 201, answer.read()


# What no touchpoint row may hold: each names a promise of the touchpoint schema
# (schemas/touchpoint/1-0-0.json) and counts the rows that break it.
INVALID_ROWS = {
    "type outside ^[a-z][a-z0-9_]{0,63}$": "NOT match(type, '^[a-z][a-z0-9_]{0,63}$')",
    "channel outside ^[a-z][a-z0-9_]{0,31}$": "channel != '' AND NOT match(channel, '^[a-z][a-z0-9_]{0,31}$')",
    # The five a client may send, and the one the worker gives helpdesk tickets (docs/touchpoint.md).
    "source not one of the six": "source NOT IN ('web_beacon', 'shortlink', 'call_webhook', 'email_webhook', 'server', 'support_webhook')",
    "the all-zero event_id": "event_id = toUUID('00000000-0000-0000-0000-000000000000')",
    "ts before 1970 or over a day ahead": "ts < toDateTime64('1970-01-01 00:00:00', 3, 'UTC') OR ts > now64(3) + INTERVAL 25 HOUR",
    "received_ts not during this run": "received_ts < toDateTime64({started}, 3, 'UTC') - INTERVAL 1 MINUTE OR received_ts > now64(3)",
    "invalid UTF-8 in a text column": "NOT (isValidUTF8(name) AND isValidUTF8(page_url) AND isValidUTF8(referrer) AND isValidUTF8(page_title) AND isValidUTF8(user_agent) AND isValidUTF8(anonymous_id) AND isValidUTF8(user_id) AND isValidUTF8(session_id) AND isValidUTF8(click_id) AND isValidUTF8(survey_comment) AND arrayAll(x -> isValidUTF8(x), mapKeys(properties)) AND arrayAll(x -> isValidUTF8(x), mapValues(properties)))",
    "a text past its schema length": "lengthUTF8(name) > 256 OR lengthUTF8(page_url) > 4096 OR lengthUTF8(referrer) > 4096 OR lengthUTF8(user_agent) > 1024 OR lengthUTF8(anonymous_id) > 128 OR lengthUTF8(session_id) > 128 OR lengthUTF8(click_id) > 128 OR lengthUTF8(user_id) > 256",
    "properties past 50 keys, 128-character names or 1024-character values": "length(properties) > 50 OR arrayExists(k -> lengthUTF8(k) > 128, mapKeys(properties)) OR arrayExists(v -> lengthUTF8(v) > 1024, mapValues(properties))",
    "an email or phone hash that is not a salted SHA-256": "(email_hash != '' AND NOT match(email_hash, '^[0-9a-f]{64}$')) OR (phone_hash != '' AND NOT match(phone_hash, '^[0-9a-f]{64}$'))",
    "value outside +-10^12, or a currency not ^[A-Z]{3}$": "(value IS NOT NULL AND abs(value) > 1e12) OR (currency != '' AND NOT match(currency, '^[A-Z]{3}$'))",
}  # fmt: skip


def invalid_rows(console: str, started_ts: float) -> dict[str, int]:
    stamp = f"'{datetime.fromtimestamp(started_ts, UTC).strftime('%Y-%m-%d %H:%M:%S')}'"
    columns = ", ".join(
        f"countIf({condition.replace('{started}', stamp)}) AS c{i}"
        for i, condition in enumerate(INVALID_ROWS.values())
    )
    (answer,) = rows(console, f"SELECT {columns} FROM touchpoints")
    return {name: int(answer[f"c{i}"]) for i, name in enumerate(INVALID_ROWS)}


def wait_idle(console: str, limit: float = 240) -> int:
    """The touchpoints count once it has not moved for 8 s (the worker drained its topics)."""
    deadline = time.monotonic() + limit
    last, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        (answer,) = rows(console, "SELECT count() AS n FROM touchpoints")
        count = int(answer["n"])
        if count != last:
            last, still_since = count, time.monotonic()
        elif time.monotonic() - still_since >= 8:
            return count
        time.sleep(1)
    return last


# -- the report ---------------------------------------------------------------------------------


def summarize(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for outcome in outcomes:
        status = outcome.status
        bucket = "no answer" if status == 0 else "503" if status == 503 else f"{status // 100}xx"
        table[outcome.endpoint]["requests"] += 1
        table[outcome.endpoint][bucket] += 1
        if outcome.failure:
            table[outcome.endpoint]["failures"] += 1
    return {name: dict(counts) for name, counts in table.items()}


def print_table(table: dict[str, dict[str, int]]) -> None:
    columns = ["requests", "2xx", "3xx", "4xx", "503", "5xx", "no answer", "failures"]
    say(f"{'endpoint':<40}" + "".join(f"{c:>10}" for c in columns))
    for name in [*WEIGHTS, *sorted(set(table) - set(WEIGHTS))]:
        if name in table:
            counts = table[name]
            say(f"{name:<40}" + "".join(f"{counts.get(c, 0):>10,}" for c in columns))
    totals = Counter[str]()
    for counts in table.values():
        totals.update(counts)
    say(f"{'total':<40}" + "".join(f"{totals.get(c, 0):>10,}" for c in columns))


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="tracker-fuzz-"))
    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        from tracker.cli.kafka_local import LocalKafka

        broker = LocalKafka(work / "kafka", port=free_port())
        broker.start()
        bootstrap = broker.bootstrap
    ports = {
        name: free_port() for name in ("console", "beacon", "links", "calls", "email", "helpdesk")
    }
    env = environment(bootstrap, work, ports)
    services = [
        Service("worker", ["worker"], ports["console"]),
        Service("beacon", ["serve", "beacon"], ports["beacon"]),
        Service("links", ["serve", "links"], ports["links"]),
        Service("calls", ["serve", "calls"], ports["calls"]),
        Service("email", ["serve", "email"], ports["email"]),
        Service("helpdesk", ["serve", "helpdesk"], ports["helpdesk"]),
    ]
    by_name = {s.name: s for s in services}
    failures: list[str] = []
    try:
        for service in services:
            start(service, env, work)
        seed_links(by_name["links"].base)
        rss_start = {s.name: s.rss_mb() for s in services}
        bases = {s.name: s.base for s in services} | {"console": by_name["worker"].base}
        say(f"fuzzing {args.cases:,} cases, seed {args.seed}")
        started_ts, started = time.time(), time.monotonic()
        outcomes = asyncio.run(run_cases(args.seed, args.cases, bases, ports, work))
        elapsed = time.monotonic() - started
        table = summarize(outcomes)
        say(f"\n{len(outcomes):,} requests for {args.cases:,} cases in {elapsed:.0f} s\n")
        print_table(table)

        seen: Counter[str] = Counter()
        for outcome in outcomes:
            if outcome.failure and seen[outcome.endpoint + outcome.kind] < 3:
                seen[outcome.endpoint + outcome.kind] += 1
                failures.append(f"{outcome.endpoint} [{outcome.kind}]: {outcome.failure}")
        failed_requests = sum(1 for o in outcomes if o.failure)

        say("\nafter the run:")
        for service in services:
            alive = service.process is not None and service.process.poll() is None
            healthy = alive and service.healthy()
            rss_end = service.rss_mb()
            growth = rss_end - rss_start[service.name]
            say(
                f"  {service.name:<7} /healthz {'200' if healthy else 'NO ANSWER'}; "
                f"RSS {rss_start[service.name]:.0f} MB -> {rss_end:.0f} MB ({growth:+.0f} MB)"
            )
            if not healthy:
                failures.append(f"{service.name} does not answer /healthz after the run")
            if service.name == "worker":  # it holds chDB and every customer's state too
                if rss_end > args.worker_rss_mb:
                    failures.append(f"the worker holds {rss_end:.0f} MB (> {args.worker_rss_mb})")
            elif growth > args.rss_growth_mb:
                failures.append(f"{service.name} grew by {growth:.0f} MB (> {args.rss_growth_mb})")

        console = by_name["worker"].base
        stored = wait_idle(console)
        invalid = invalid_rows(console, started_ts)
        say(f"  touchpoints stored: {stored:,}; invalid rows: {sum(invalid.values())}")
        for name, count in invalid.items():
            if count:
                failures.append(f"{count} touchpoints rows with {name}")
        tables = {r["name"] for r in rows(console, "SHOW TABLES")}
        for table_name in ("touchpoints", "links", "dead_letters", "calls"):
            if table_name not in tables:
                failures.append(f"the {table_name} table is gone")
        for written in (work / "outfile-marker.txt", work / "fz-marker.txt"):
            if written.exists():
                failures.append(f"the console wrote {written.name}")
        say(f"  tables intact: {sorted(tables & {'touchpoints', 'links', 'dead_letters', 'calls'})}")  # fmt: skip
        say(f"  files written through the console: {sum(1 for _ in work.glob('*marker*'))}")

        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_bytes(
            orjson.dumps(
                {
                    "cases": args.cases,
                    "seed": args.seed,
                    "requests": len(outcomes),
                    "seconds": round(elapsed, 1),
                    "endpoints": table,
                    "failed_requests": failed_requests,
                    "failures": failures,
                    "rss_mb": {
                        s.name: [round(rss_start[s.name]), round(s.rss_mb())] for s in services
                    },
                    "touchpoints": stored,
                    "invalid_rows": invalid,
                },
                option=orjson.OPT_INDENT_2,
            )
        )
    finally:
        for service in reversed(services):
            stop(service)
        if broker is not None:
            broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        say(f"\nFAILED: {len(failures)} distinct failures ({failed_requests} requests)")
        for failure in failures:
            say(f"  - {failure}")
        return 1
    say("\nOK: no 5xx but 503 with Retry-After, every refusal with a reason, nothing crashed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bootstrap", help="a running Kafka broker; default: start one")
    parser.add_argument("--rss-growth-mb", type=float, default=300.0, help="per collector")
    parser.add_argument(
        "--worker-rss-mb", type=float, default=2048.0, help="the worker, at the end"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return run(args)
    return 130


if __name__ == "__main__":
    sys.exit(main())
