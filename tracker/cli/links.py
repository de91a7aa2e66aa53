"""``tracker links ...``: manage short links through the running links service, and count clicks."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from tracker.cli.client import run_query
from tracker.errors import TrackerError
from tracker.settings import Settings

__all__ = ["STATS_SQL", "add_links_commands"]

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# Clicks, human clicks and unique clickers per link, from the touchpoints the service recorded.
# A clicker is the anonymous id when the click carries one, else a hash of truncated IP and UA.
STATS_SQL = """
SELECT
    properties['slug'] AS slug,
    count() AS requests,
    countIf(properties['outcome'] = 'redirect') AS clicks,
    countIf(properties['outcome'] = 'redirect' AND NOT is_bot) AS human_clicks,
    countIf(is_bot) AS bot_requests,
    countIf(properties['qr'] = 'true' AND NOT is_bot) AS qr_scans,
    uniqExactIf(
        if(anonymous_id != '', anonymous_id, hex(cityHash64(ip, user_agent))),
        properties['outcome'] = 'redirect' AND NOT is_bot
    ) AS unique_clickers
FROM touchpoints
WHERE source = 'shortlink' {where}
GROUP BY slug
ORDER BY requests DESC, slug
"""


def add_links_commands(commands: Any) -> None:
    links = commands.add_parser(
        "links", help="manage short links on the running links service, and count their clicks"
    )
    links.add_argument(
        "--url", help="the links service (default http://127.0.0.1:$TRACKER_LINKS_PORT)"
    )
    actions = links.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a link; prints it as JSON")
    create.add_argument("target", help="an http(s) URL")
    create.add_argument("--slug", help="custom slug; a random 7-character one if left out")
    _link_options(create)
    create.set_defaults(run=_create)

    listing = actions.add_parser("list", help="slug, short URL, target, clicks; tab-separated")
    listing.add_argument("--tag")
    listing.add_argument("--campaign")
    listing.set_defaults(run=_list)

    show = actions.add_parser("show", help="one link as JSON")
    show.add_argument("slug")
    show.set_defaults(run=_show)

    update = actions.add_parser("update", help="change a link; only the options given change")
    update.add_argument("slug")
    update.add_argument("--target")
    _link_options(update)
    update.set_defaults(run=_update)

    for name, disabled in (("disable", True), ("enable", False)):
        toggle = actions.add_parser(name, help=f"{name} a link")
        toggle.add_argument("slug")
        toggle.set_defaults(run=_toggle, disabled=disabled)

    delete = actions.add_parser("delete", help="delete a link")
    delete.add_argument("slug")
    delete.set_defaults(run=_delete)

    qr = actions.add_parser(
        "qr", help="write a link's QR code (it encodes the short URL with ?qr=1)"
    )
    qr.add_argument("slug")
    qr.add_argument("output", type=Path, help="file to write; .svg or .png")
    qr.set_defaults(run=_qr)

    stats = actions.add_parser(
        "stats",
        help="clicks, human clicks, bot requests, QR scans and unique clickers per link, from ClickHouse",
    )
    stats.add_argument("slug", nargs="?")
    stats.add_argument("--format", default="tsv-header")
    stats.set_defaults(run=_stats)


def _link_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tag", action="append", dest="tags", help="repeat for several")
    parser.add_argument("--campaign")
    parser.add_argument("--channel", help="e.g. email, social, sms, paid")
    for field in ("source", "medium", "campaign", "term", "content"):
        parser.add_argument(f"--utm-{field}", dest=f"utm_{field}")
    parser.add_argument("--status-code", type=int, choices=[301, 302, 307, 308])
    parser.add_argument("--max-clicks", type=int)
    parser.add_argument("--valid-since", help="RFC 3339, e.g. 2026-12-01T00:00:00Z")
    parser.add_argument("--valid-until", help="RFC 3339, e.g. 2026-12-31T23:59:59Z")
    parser.add_argument("--fallback-url", help="where disabled, expired or exhausted clicks go")
    parser.add_argument(
        "--json", dest="extra", help="more fields as JSON, e.g. '{\"rules\": [...]}'"
    )


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in (
        "target",
        "slug",
        "tags",
        "campaign",
        "channel",
        "status_code",
        "max_clicks",
        "valid_since",
        "valid_until",
        "fallback_url",
    ):
        value = getattr(args, name, None)
        if value is not None:
            body[name] = value
    utm = {
        f: getattr(args, f"utm_{f}")
        for f in ("source", "medium", "campaign", "term", "content")
        if getattr(args, f"utm_{f}", None) is not None
    }
    if utm:
        body["utm"] = utm
    if args.extra:
        try:
            extra = orjson.loads(args.extra)
        except orjson.JSONDecodeError as exc:
            raise TrackerError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise TrackerError("--json must be a JSON object")
        body.update(extra)
    return body


def _create(settings: Settings, args: argparse.Namespace) -> int:
    _write_json(_call(settings, args, "POST", "/api/links", _body(args)))
    return 0


def _list(settings: Settings, args: argparse.Namespace) -> int:
    query = "&".join(
        f"{name}={urllib.parse.quote(value)}"
        for name, value in (("tag", args.tag), ("campaign", args.campaign))
        if value
    )
    answer = _call(settings, args, "GET", "/api/links" + (f"?{query}" if query else ""))
    for link in answer["links"]:
        sys.stdout.write(
            f"{link['slug']}\t{link['short_url']}\t{link['target']}\t{link['clicks']}\n"
        )
    return 0


def _show(settings: Settings, args: argparse.Namespace) -> int:
    _write_json(_call(settings, args, "GET", f"/api/links/{_slug(args.slug)}"))
    return 0


def _update(settings: Settings, args: argparse.Namespace) -> int:
    body = _body(args)
    if not body:
        raise TrackerError("nothing to change; give --target or another option")
    _write_json(_call(settings, args, "PATCH", f"/api/links/{_slug(args.slug)}", body))
    return 0


def _toggle(settings: Settings, args: argparse.Namespace) -> int:
    body = {"disabled": args.disabled}
    _write_json(_call(settings, args, "PATCH", f"/api/links/{_slug(args.slug)}", body))
    return 0


def _delete(settings: Settings, args: argparse.Namespace) -> int:
    _call(settings, args, "DELETE", f"/api/links/{_slug(args.slug)}")
    sys.stdout.write(f"deleted {args.slug}\n")
    return 0


def _qr(settings: Settings, args: argparse.Namespace) -> int:
    kind = args.output.suffix.lower().lstrip(".")
    if kind not in ("svg", "png"):
        raise TrackerError("the output file must end in .svg or .png")
    data = _call(settings, args, "GET", f"/api/links/{_slug(args.slug)}/qr.{kind}")
    args.output.write_bytes(data)
    sys.stdout.write(f"wrote {args.output}\n")
    return 0


def _stats(settings: Settings, args: argparse.Namespace) -> int:
    where = f"AND properties['slug'] = '{_slug(args.slug)}'" if args.slug else ""
    sys.stdout.write(run_query(settings, STATS_SQL.format(where=where), args.format))
    return 0


def _slug(slug: str) -> str:
    if not _SLUG.match(slug):
        raise TrackerError(f"{slug!r} is not a slug: letters, digits, '-' and '_' only")
    return slug


def _call(
    settings: Settings, args: argparse.Namespace, method: str, path: str, body: Any = None
) -> Any:
    base = (args.url or f"http://127.0.0.1:{settings.links_port}").rstrip("/")
    request = urllib.request.Request(
        base + path,
        data=orjson.dumps(body) if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    if settings.api_token:
        request.add_header("Authorization", f"Bearer {settings.api_token.value}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw: bytes = response.read()
            if response.headers.get("Content-Type", "").startswith("application/json"):
                return orjson.loads(raw)
            return raw
    except urllib.error.HTTPError as exc:
        detail: Any = exc.read().decode(errors="replace")
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
            detail = orjson.loads(detail)["error"]
        raise TrackerError(f"links service answered {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise TrackerError(
            f"no links service answers at {base} ({exc.reason}); start one with "
            "`tracker up` or `tracker serve links`, or pass --url"
        ) from None


def _write_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
