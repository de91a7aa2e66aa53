"""Short-link redirects per second and latency, against a bare aiohttp redirect on the same stack.

    python bench/links.py [--seconds 10] [--connections 16] [--rate-fraction 0.5]

It starts a local Kafka broker, the links service (``python -m tracker serve links``: click
logging on, every click produced to Kafka) and, as the baseline, a bare aiohttp app in one process
whose only handler answers 302 with a fixed Location. Both run one process, one event loop, no
access log, on uvloop as ``tracker serve`` does: the same HTTP stack. A second bare app on
asyncio's own loop is measured at maximum load for reference; it is not a bar. wrk (1 thread, 16
connections, keep-alive, redirects not followed) measures:

1. maximum load: as fast as wrk can send, for each server;
2. fixed load: the same offered rate for both, a fraction of the lower maximum, set with a wrk
   Lua ``delay()`` per connection (each connection sends one request every connections/rate
   seconds), so latency is compared at equal offered load rather than at saturation.

Each measurement runs ``--rounds`` times (2), alternating the servers; each side's best round
counts (highest req/s; lowest p99 at the fixed load) and the JSON keeps every round. Each run also
records the server's CPU time per request (from /proc), which other jobs on the machine disturb
much less than req/s.

The bars: links >= 80% of the baseline's redirects/s at maximum load, and links p99 <= 1.5x the
baseline's p99 at the fixed load. Results go to stdout, a JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN = "bench-token"
SLUG = "bench"


def baseline_server(port: int, loop: str = "uvloop") -> None:
    """The baseline: aiohttp, one process, one handler, a fixed redirect."""
    from aiohttp import web

    if loop == "uvloop":
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def redirect(_: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "https://shop.example/landing"})

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_get("/{slug}", redirect)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def wait_ready(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout}s")


def wrk(
    url: str, seconds: int, connections: int, rate: float | None, workdir: Path
) -> dict[str, float]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if rate:
        script = workdir / "fixed_rate.lua"
        per_connection_ms = connections / rate * 1000.0
        script.write_text(f"function delay()\n  return {per_connection_ms:.3f}\nend\n")
        args += ["-s", str(script)]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    return _parse_wrk(out)


def _parse_wrk(out: str) -> dict[str, float]:
    def ms(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    result: dict[str, float] = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    }
    for pct in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.MULTILINE)
        if match:
            result[f"p{pct}_ms"] = ms(match.group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["bad_responses"] = float(errors.group(1)) if errors else 0.0
    socket_errors = re.search(r"Socket errors: (.*)", out)
    result["socket_errors"] = 1.0 if socket_errors else 0.0
    return result


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate-fraction", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-loop", default="uvloop", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server(args.baseline_server, args.baseline_loop)
        return 0
    if shutil.which("wrk") is None:
        sys.stderr.write("wrk is missing: apt-get install -y wrk\n")
        return 2

    from tracker.cli.kafka_local import LocalKafka, free_port

    out = sys.stdout.write
    workdir = Path(tempfile.mkdtemp(prefix="bench-links-"))
    broker = LocalKafka(workdir / "kafka", free_port())
    processes: list[subprocess.Popen[bytes]] = []
    try:
        broker.start()
        links_port, baseline_port, asyncio_port = free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
        env.update(
            TRACKER_DATA_DIR=str(workdir / "data"),
            TRACKER_KAFKA_BOOTSTRAP=broker.bootstrap,
            TRACKER_LINKS_PORT=str(links_port),
            TRACKER_API_TOKEN=TOKEN,
            TRACKER_HASH_SALT="bench",
            TRACKER_LOG_LEVEL="WARNING",
            TRACKER_RATE_LIMITS="off",  # one client at full speed: the service's own figure
        )
        log = (workdir / "links.log").open("wb")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "tracker", "serve", "links"], env=env, stdout=log, stderr=log
            )
        )
        processes.append(
            subprocess.Popen([sys.executable, __file__, "--baseline-server", str(baseline_port)])
        )
        processes.append(
            subprocess.Popen(
                [
                    *(sys.executable, __file__, "--baseline-server", str(asyncio_port)),
                    *("--baseline-loop", "asyncio"),
                ]
            )
        )
        links = f"http://127.0.0.1:{links_port}"
        baseline = f"http://127.0.0.1:{baseline_port}"
        baseline_asyncio = f"http://127.0.0.1:{asyncio_port}"
        for url in (links, baseline, baseline_asyncio):
            wait_ready(url + "/readyz")
        request = urllib.request.Request(
            links + "/api/links",
            data=json.dumps(
                {
                    "target": "https://shop.example/landing",
                    "slug": SLUG,
                    "utm": {"source": "bench", "medium": "email"},
                }
            ).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()

        results: dict[str, Any] = {}
        servers = {
            "links": (links, processes[0].pid),
            "baseline": (baseline, processes[1].pid),
            "baseline_asyncio": (baseline_asyncio, processes[2].pid),
        }

        def measure(name: str, rate: float | None) -> dict[str, float]:
            base, pid = servers[name]
            before = cpu_seconds(pid)
            result = wrk(f"{base}/{SLUG}", args.seconds, args.connections, rate, workdir)
            result["cpu_us_per_request"] = (cpu_seconds(pid) - before) / result["requests"] * 1e6
            return result

        # Other jobs may share the machine: alternate the sides, and keep each side's best round.
        for base, _ in servers.values():
            wrk(f"{base}/{SLUG}", 2, args.connections, None, workdir)  # warm-up
        for name in servers:
            results[f"{name}_max_rounds"] = []
        for _ in range(args.rounds):
            for name in servers:
                results[f"{name}_max_rounds"].append(measure(name, None))
        for name in servers:
            results[f"{name}_max"] = max(results[f"{name}_max_rounds"], key=lambda r: r["rps"])
        rate = args.rate_fraction * min(results["baseline_max"]["rps"], results["links_max"]["rps"])
        for name in ("baseline", "links"):
            results[f"{name}_fixed_rounds"] = []
        for _ in range(args.rounds):
            for name in ("baseline", "links"):
                results[f"{name}_fixed_rounds"].append(measure(name, rate))
        for name in ("baseline", "links"):
            results[f"{name}_fixed"] = min(
                results[f"{name}_fixed_rounds"], key=lambda r: r["p99_ms"]
            )

        # Every click the links service answered must reach Kafka: wait for its queue to empty.
        deadline = time.monotonic() + 60
        while (
            metric(links + "/metrics", "tracker_link_click_queue") > 0
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        results["links_clicks_recorded"] = metric(
            links + "/metrics", 'tracker_link_clicks_total{outcome="redirect"}'
        )
        results["links_click_queue_left"] = metric(links + "/metrics", "tracker_link_click_queue")
        results["links_clicks_dropped"] = metric(
            links + "/metrics", "tracker_link_clicks_dropped_total"
        )
        results["fixed_rate"] = rate
        results["throughput_ratio"] = results["links_max"]["rps"] / results["baseline_max"]["rps"]
        results["p99_ratio_fixed"] = (
            results["links_fixed"]["p99_ms"] / results["baseline_fixed"]["p99_ms"]
        )
        results["p99_ratio_max"] = (
            results["links_max"]["p99_ms"] / results["baseline_max"]["p99_ms"]
        )
        results["throughput_ratio_vs_asyncio_loop"] = (
            results["links_max"]["rps"] / results["baseline_asyncio_max"]["rps"]
        )

        out(
            f"wrk 1 thread, {args.connections} connections, {args.seconds}s per run, "
            f"best of {args.rounds} alternating rounds per side\n"
        )
        out(f"{'run':<22}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/req':>12}{'non-3xx':>9}\n")
        keys = ("baseline_max", "links_max", "baseline_fixed", "links_fixed")
        for key in (*keys, "baseline_asyncio_max"):
            r = results[key]
            out(
                f"{key:<22}{r['rps']:>10.0f}{r.get('p50_ms', 0):>9.2f}{r.get('p99_ms', 0):>9.2f}"
                f"{r['cpu_us_per_request']:>12.1f}{r['bad_responses']:>9.0f}\n"
            )
        out(f"fixed offered rate: {rate:.0f} req/s\n")
        out(
            f"throughput: links/baseline = {results['throughput_ratio']:.2f} (bar >= 0.80) "
            f"{'PASS' if results['throughput_ratio'] >= 0.8 else 'FAIL'}\n"
        )
        out(
            f"p99 at fixed rate: links/baseline = {results['p99_ratio_fixed']:.2f} (bar <= 1.5) "
            f"{'PASS' if results['p99_ratio_fixed'] <= 1.5 else 'FAIL'}\n"
        )
        out(f"p99 at max load: links/baseline = {results['p99_ratio_max']:.2f}\n")
        out(
            "throughput vs a bare handler on asyncio's own loop (reference, no bar): "
            f"{results['throughput_ratio_vs_asyncio_loop']:.2f}\n"
        )
        out(
            f"clicks recorded {results['links_clicks_recorded']:.0f}, still queued "
            f"{results['links_click_queue_left']:.0f}, dropped {results['links_clicks_dropped']:.0f}\n"
        )
        out(json.dumps(results) + "\n")
        return 0
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
