"""Every HTTP surface has an OpenAPI 3.1 document, and every route an app serves is in it: a
client (or schemathesis) reading the document sees the whole surface, nothing undocumented."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
import yaml
from aiohttp import web
from schemathesis.core.result import Ok

from collectors.beacon import create_app as create_beacon
from collectors.calls import create_app as create_calls
from collectors.email import create_app as create_email
from collectors.helpdesk import create_app as create_helpdesk
from collectors.links import create_app as create_links
from collectors.links._api import OPENAPI as LINKS_OPENAPI
from tracker.console import create_console
from tracker.kafka.producer import MemoryPublisher
from tracker.settings import Settings
from tracker.store import ClickHouseStore

METHODS = {"get", "post", "put", "patch", "delete"}
# The links service's catch-all under /api only ever answers 404 "no such endpoint".
NOT_AN_ENDPOINT = {("*", "/api/{rest}")}


def document(name: str) -> dict[str, Any]:
    text = resources.files("schemas").joinpath("openapi", f"{name}.yaml").read_text()
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


async def _forget(_: str) -> dict[str, Any]:
    return {}


def apps(tmp_path: Path) -> dict[str, tuple[web.Application, dict[str, Any]]]:
    settings = Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path)})
    store = cast(ClickHouseStore, object())
    return {
        "beacon": (create_beacon(settings, MemoryPublisher()), document("beacon")),
        "calls": (create_calls(settings, MemoryPublisher()), document("calls")),
        "email": (create_email(settings, MemoryPublisher()), document("email")),
        "helpdesk": (create_helpdesk(settings, MemoryPublisher()), document("helpdesk")),
        "console": (create_console(settings, store, lambda: True, _forget), document("console")),
        "links": (create_links(settings, MemoryPublisher()), LINKS_OPENAPI),
    }


def served(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route, with aiohttp's {name:regex} as {name}."""
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds one to every GET
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        routes.add((route.method.lower() if route.method != "*" else "*", path))
    return {(m, re.sub(r"\{(\w+):[^}]*\}", r"{\1}", p)) for m, p in routes}


def documented(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m, path) for path, item in spec["paths"].items() for m in item if m in METHODS}


@pytest.mark.parametrize("surface", ["beacon", "calls", "email", "helpdesk", "console", "links"])
def test_every_route_is_documented_and_every_documented_route_exists(
    tmp_path: Path, surface: str
) -> None:
    app, spec = apps(tmp_path)[surface]
    routes = served(app) - NOT_AN_ENDPOINT
    assert routes - documented(spec) == set(), "routes missing from the OpenAPI document"
    assert documented(spec) - routes == set(), "documented routes the app does not serve"


@pytest.mark.parametrize("surface", ["beacon", "calls", "email", "helpdesk", "console", "links"])
def test_each_document_is_openapi_3_1_that_schemathesis_reads(tmp_path: Path, surface: str) -> None:
    _, spec = apps(tmp_path)[surface]
    assert spec["openapi"] == "3.1.0"
    schema = schemathesis.openapi.from_dict(spec)
    operations = list(schema.get_all_operations())
    assert all(isinstance(operation, Ok) for operation in operations), operations
    assert len(operations) == len(documented(spec))
