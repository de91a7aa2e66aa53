"""Benchmark of the calls collector: signed webhooks per second and p99, beside a no-op baseline.

    python bench/calls.py [--duration 10] [--connections 32]

Each case runs the server in its own process (one core) and loads it with wrk from another:

- ``baseline``: a bare aiohttp app whose handler reads the body and answers ``{"accepted": 1}``.
- ``twilio``: ``POST /v1/calls/twilio``, a form-encoded status callback with X-Twilio-Signature.
- ``generic``: ``POST /v1/calls/generic``, a JSON callback signed as Standard Webhooks.

The collectors run the real app (signature check, normalization, phone hashing, metrics) with an
in-memory publisher that drops what it gets, so the figures are the collector's own cost; with
Kafka, each answer also waits for the broker's acknowledgement.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import orjson

PUBLIC = "https://calls.example.com"
TWILIO_TOKEN = "bench-twilio-token-0123456789abcd"
GENERIC_SECRET = "whsec_" + base64.b64encode(b"bench-generic-secret-32-bytes!!!").decode()
TWILIO_CALLBACK = {
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "ApiVersion": "2010-04-01",
    "CallSid": "CAbench0000000000000000000000000a",
    "CallStatus": "completed",
    "CallDuration": "42",
    "Direction": "inbound",
    "From": "+14155550132",
    "To": "+18005550100",
    "SequenceNumber": "3",
    "Timestamp": "Sun, 22 Nov 2026 10:05:42 +0000",
}
GENERIC_CALLBACK = {
    "call_id": "bench-call",
    "status": "completed",
    "timestamp": "2026-11-22T10:10:00Z",
    "direction": "inbound",
    "from": "+14155550132",
    "to": "+18005550100",
    "talk_seconds": 580,
}


def serve(kind: str, port: int) -> None:
    """The server side of one case; runs in a child process until killed."""
    from aiohttp import web

    if kind == "baseline":

        async def noop(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"accepted": 1})

        app = web.Application()
        app.router.add_post("/noop", noop)
    else:
        from collectors.calls import create_app
        from collectors.calls.records import CallCallback
        from tracker.deadletter import DeadLetter
        from tracker.kafka.producer import MemoryPublisher
        from tracker.settings import Settings

        class DroppingPublisher(MemoryPublisher):
            async def publish_calls(
                self, callbacks: Sequence[CallCallback], dead_letters: Sequence[DeadLetter] = ()
            ) -> None:
                return None

        settings = Settings.from_env(
            {
                "TRACKER_DATA_DIR": tempfile.mkdtemp(prefix="tracker-bench-"),
                "TRACKER_HASH_SALT": "bench-salt",
                "TRACKER_CALLS_PUBLIC_URL": PUBLIC,
                "TRACKER_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
                "TRACKER_GENERIC_WEBHOOK_SECRET": GENERIC_SECRET,
                "TRACKER_RATE_LIMITS": "off",  # one client at full speed
            }
        )
        app = create_app(settings, DroppingPublisher())
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def twilio_request() -> tuple[str, bytes, dict[str, str]]:
    path = "/v1/calls/twilio"
    signed = PUBLIC + path + "".join(k + TWILIO_CALLBACK[k] for k in sorted(TWILIO_CALLBACK))
    digest = hmac.new(TWILIO_TOKEN.encode(), signed.encode(), hashlib.sha1).digest()
    return (
        path,
        urlencode(TWILIO_CALLBACK).encode(),
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": base64.b64encode(digest).decode(),
        },
    )


def generic_request() -> tuple[str, bytes, dict[str, str]]:
    body = orjson.dumps(GENERIC_CALLBACK)
    msg_id, stamp = "msg_bench", str(int(datetime.now(UTC).timestamp()))
    key = base64.b64decode(GENERIC_SECRET.removeprefix("whsec_"))
    signature = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return (
        "/v1/calls/generic",
        body,
        {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": stamp,
            "webhook-signature": "v1," + base64.b64encode(signature).decode(),
        },
    )


def baseline_request() -> tuple[str, bytes, dict[str, str]]:
    return "/noop", orjson.dumps(GENERIC_CALLBACK), {"Content-Type": "application/json"}


def lua_script(body: bytes, headers: dict[str, str]) -> str:
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ['wrk.method = "POST"', f"wrk.body = {quoted(body.decode())}"]
    lines += [f"wrk.headers[{quoted(k)}] = {quoted(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_case(kind: str, duration: int, connections: int) -> dict[str, float]:
    path, body, headers = {
        "baseline": baseline_request,
        "twilio": twilio_request,
        "generic": generic_request,
    }[kind]()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        url = f"http://127.0.0.1:{port}{path}"
        _wait_until_up(url, body, headers)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(lua_script(body, headers))
        result = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{duration}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        Path(script.name).unlink()
        return _parse_wrk(result.stdout)
    finally:
        server.terminate()
        server.wait(10)


def _wait_until_up(url: str, body: bytes, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
                raise RuntimeError(f"{url} answered {response.status}")
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up with a 200")


def _parse_wrk(output: str) -> dict[str, float]:
    def milliseconds(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if not (rate and p50 and p99):
        raise RuntimeError(f"could not read wrk's output:\n{output}")
    return {
        "rps": float(rate.group(1)),
        "p50_ms": milliseconds(p50.group(1)),
        "p99_ms": milliseconds(p99.group(1)),
        "errors": float(non_2xx.group(1)) if non_2xx else 0.0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per case")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--serve", choices=["baseline", "twilio", "generic"], help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if shutil.which("wrk") is None:
        sys.stderr.write("bench/calls.py needs wrk (apt-get install -y wrk)\n")
        return 1
    results = {
        kind: run_case(kind, args.duration, args.connections)
        for kind in ("baseline", "twilio", "generic")
    }
    base = results["baseline"]["rps"]
    sys.stdout.write(
        f"calls collector, {args.connections} connections, {args.duration} s per case, "
        "one server process each\n"
        f"{'case':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'vs baseline':>13}{'non-2xx':>9}\n"
    )
    for kind, figures in results.items():
        sys.stdout.write(
            f"{kind:<10}{figures['rps']:>10.0f}{figures['p50_ms']:>10.2f}{figures['p99_ms']:>10.2f}"
            f"{figures['rps'] / base:>12.0%} {figures['errors']:>8.0f}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
