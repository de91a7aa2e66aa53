"""The ``tracker`` command. It configures logging once, reads settings once, and dispatches."""

from __future__ import annotations

import argparse
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

import orjson

from tracker.cli.client import console_request, run_query
from tracker.console import QUERY_FORMATS
from tracker.errors import TrackerError
from tracker.logs import configure_logging
from tracker.settings import Settings

__all__ = ["main"]

log = logging.getLogger("tracker")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except TrackerError as exc:
        sys.stderr.write(f"tracker: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_repeat_seconds)
    try:
        result: int = args.run(settings, args)
        return result
    except TrackerError as exc:
        sys.stderr.write(f"tracker: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:
        # Non-zero, so an orchestrator restarts the role; logged as JSON like everything else.
        log.exception("fatal error", extra={"command": args.command})
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracker", description="Customer touchpoint pipeline.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run the whole pipeline on this machine")
    up.set_defaults(run=_up)

    worker = commands.add_parser("worker", help="run one Faust worker (with the console)")
    worker.add_argument(
        "--role",
        choices=["all", "stitch", "write"],
        help="all (the default, or TRACKER_WORKER_ROLE): everything in one process; stitch: "
        "ingest, identity and journey, handing their records to the writer through Kafka; "
        "write: owns ClickHouse and the console and stores the stitch workers' records",
    )
    worker.set_defaults(run=_worker)

    serve = commands.add_parser("serve", help="run one collector")
    serve.add_argument("collector", choices=["beacon", "links", "calls", "email", "helpdesk"])
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply ClickHouse migrations (idempotent)")
    migrate.set_defaults(run=_migrate)

    query = commands.add_parser("query", help="run read-only SQL; tab-separated rows, no header")
    query.add_argument("sql")
    query.add_argument("--format", choices=sorted(QUERY_FORMATS), default="tsv")
    query.set_defaults(run=_query)

    demo = commands.add_parser(
        "demo", help="send a synthetic multi-channel load to a running instance"
    )
    demo.add_argument("--customers", type=int, default=200)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--wait", type=float, default=60.0, help="seconds to wait for events to land")
    demo.set_defaults(run=_demo)

    forget = commands.add_parser(
        "forget", help="erase what is stored under an identifier, and never store it again"
    )
    forget.add_argument(
        "identifier", help="kind:value, kind one of user, anon, email, phone, click"
    )
    forget.set_defaults(run=_forget)

    from tracker.cli.journey import add_journey_commands
    from tracker.cli.links import add_links_commands
    from tracker.cli.report import add_report_commands

    add_journey_commands(commands)
    add_links_commands(commands)
    add_report_commands(commands)

    check = commands.add_parser("check", help="exit 0 when the running instance is ready")
    check.set_defaults(run=_check)
    return parser


def _up(settings: Settings, _: argparse.Namespace) -> int:
    from tracker.cli.runtime import run_up

    return run_up(settings.with_hash_salt())


def _use_uvloop() -> None:
    """The services spend much of their time in the event loop itself; uvloop's is faster."""
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from agents.worker import run_worker

    _use_uvloop()
    if args.role:
        settings = settings.with_overrides(worker_role=args.role)
    run_worker(settings.with_hash_salt())
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from tracker.kafka.producer import KafkaPublisher

    settings = settings.with_hash_salt()
    _use_uvloop()
    publisher = KafkaPublisher(settings)
    if args.collector == "links":
        from collectors.links import LinkState, LinkTable
        from collectors.links import create_app as create_links_app

        app = create_links_app(settings, publisher, LinkState(settings, LinkTable()))
        port = settings.links_port
    elif args.collector == "calls":
        from collectors.calls import create_app as create_calls_app

        app, port = create_calls_app(settings, publisher), settings.calls_port
    elif args.collector == "email":
        from collectors.email import create_app as create_email_app

        app, port = create_email_app(settings, publisher), settings.email_port
    elif args.collector == "helpdesk":
        from collectors.helpdesk import create_app as create_helpdesk_app

        app, port = create_helpdesk_app(settings, publisher), settings.helpdesk_port
    else:
        from collectors.beacon import NumberReservations, create_app

        numbers = NumberReservations(settings) if settings.call_number_pools else None
        app, port = create_app(settings, publisher, numbers), settings.beacon_port
    from tracker.shutdown import ShutdownDeadline

    deadline = ShutdownDeadline(settings.shutdown_grace_seconds)

    async def arm_deadline(_: web.Application) -> None:
        deadline.arm()

    app.on_shutdown.insert(0, arm_deadline)
    log.info(f"{args.collector} listening", extra={"host": settings.host, "port": port})
    web.run_app(
        app,
        host=settings.host,
        port=port,
        access_log=None,
        print=None,
        # Open requests may finish in a third of the grace period; flushing takes the rest.
        shutdown_timeout=settings.shutdown_grace_seconds / 3,
    )
    return 0


def _migrate(settings: Settings, _: argparse.Namespace) -> int:
    from tracker.store import ClickHouseStore

    store = ClickHouseStore(
        settings.clickhouse_url, settings.clickhouse_database, settings.clickhouse_cluster
    )
    try:
        applied = store.run_sync(store.migrate_sync)
    finally:
        store.close()
    sys.stdout.write(
        f"applied {len(applied)} migration(s): {applied}\n" if applied else "up to date\n"
    )
    return 0


def _query(settings: Settings, args: argparse.Namespace) -> int:
    output = run_query(settings, args.sql, args.format)
    sys.stdout.write(output)
    return 0


def _forget(settings: Settings, args: argparse.Namespace) -> int:
    answer = orjson.loads(
        console_request(settings, "/api/forget", {"identifier": args.identifier}, "forget")
    )
    sys.stdout.write(
        f"forgotten: {answer['touchpoints']} touchpoints and {answer['dead_letters']} dead letters "
        "deleted; events carrying it will not be stored again\n"
    )
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.cli.demo import run_demo

    sys.stdout.write(run_demo(settings, customers=args.customers, seed=args.seed, wait=args.wait))
    return 0


def _check(settings: Settings, _: argparse.Namespace) -> int:
    """One line per component: ``ready``, or ``not ready: why`` from its /readyz. Exits 1 unless
    every component is ready."""
    targets = {
        "console": f"http://127.0.0.1:{settings.console_port}/readyz",
        "beacon": f"http://127.0.0.1:{settings.beacon_port}/readyz",
        "links": f"http://127.0.0.1:{settings.links_port}/readyz",
        "calls": f"http://127.0.0.1:{settings.calls_port}/readyz",
        "email": f"http://127.0.0.1:{settings.email_port}/readyz",
        "helpdesk": f"http://127.0.0.1:{settings.helpdesk_port}/readyz",
    }
    healthy = True
    for name, url in targets.items():
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                status = "ready" if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            status = f"not ready: {_reasons(exc.code, exc.read())}"
        except (urllib.error.URLError, OSError) as exc:
            status = f"unreachable ({getattr(exc, 'reason', exc)})"
        healthy = healthy and status == "ready"
        sys.stdout.write(f"{name}\t{status}\n")
    return 0 if healthy else 1


def _reasons(code: int, body: bytes) -> str:
    try:
        reasons = orjson.loads(body).get("reasons") or []
    except (orjson.JSONDecodeError, AttributeError):
        reasons = []
    return "; ".join(str(r) for r in reasons) or f"HTTP {code}"
