"""The links API's bounds: what a client may send is refused with a reason, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.links import LinkTable, create_app, parse_link
from collectors.links._model import (
    CLICK_ID_PARAM,
    MAX_TEXT_LENGTH,
    MAX_URL_LENGTH,
    validate_slug,
    validate_target,
)
from tracker.errors import ValidationError
from tracker.kafka.producer import MemoryPublisher
from tracker.settings import Settings

TOKEN = "bounds-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    env = {
        "TRACKER_DATA_DIR": str(tmp_path),
        "TRACKER_HASH_SALT": "unit-salt",
        "TRACKER_LINKS_BASE_URL": "https://go.example",
        "TRACKER_API_TOKEN": TOKEN,
    }
    app = create_app(Settings.from_env(env), MemoryPublisher())
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def refused(body: dict[str, Any], slug: str = "bounded") -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        parse_link(body, slug=slug)
    return {e.field: e.reason for e in caught.value.errors}


@pytest.mark.parametrize("slug", ["sale\n", "sale\r", "sale\t", "sale ", "sale\x00", "sa\x7fle"])
def test_a_slug_with_a_control_or_space_character_is_refused(slug: str) -> None:
    assert validate_slug(slug) is not None
    assert "slug" in refused({"target": "https://shop.example/"}, slug=slug)


@pytest.mark.parametrize(
    "target",
    [
        "https://shop.example:65536/",
        "https://shop.example:99999999999/",
        "https://shop.example:-1/",
        "https://shop.example:http/",
        "https://shop.example:0/",
        "http://[::1/",
    ],
)
def test_a_target_whose_port_or_host_cannot_be_read_is_refused(target: str) -> None:
    assert "target" in refused({"target": target})
    assert "fallback_url" in refused({"target": "https://ok.example/", "fallback_url": target})


def test_the_highest_port_is_still_a_target() -> None:
    assert validate_target("https://shop.example:65535/") is None


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "9999-12-31T23:59:59Z",
        "1969-12-31T23:59:59Z",
        "2300-01-01T00:00:00Z",
        "2026-12-01T00:00:00",
        "not a time",
        "",
        12,
    ],
)
@pytest.mark.parametrize("name", ["valid_since", "valid_until"])
def test_validity_outside_the_supported_range_is_refused_with_a_reason(
    name: str, value: object
) -> None:
    reasons = refused({"target": "https://shop.example/", name: value})
    assert reasons[name]


def test_fallback_url_null_is_no_fallback() -> None:
    link = parse_link({"target": "https://shop.example/", "fallback_url": None}, slug="nofb")
    assert link.fallback_url == ""
    assert link.to_record()["fallback_url"] == ""
    changed = parse_link({"fallback_url": None}, existing=link)
    assert changed.fallback_url == ""


@pytest.mark.parametrize("fallback", [0, False, [], {}, 5])
def test_fallback_url_that_is_not_a_string_is_refused(fallback: object) -> None:
    assert "fallback_url" in refused({"target": "https://shop.example/", "fallback_url": fallback})


async def test_a_record_with_a_null_fallback_becomes_a_row_with_no_fallback() -> None:
    from agents.links import mirror_links
    from tracker.store.sink import MemorySink
    from tracker.store.tables import LINKS

    record = {**parse_link({"target": "https://a.example/"}, slug="m1").to_record()}
    record["fallback_url"] = None  # as links written before null was turned into "" hold it
    sink = MemorySink()
    await mirror_links(sink, [("m1", orjson.dumps(record), 1_800_000_000_000)])
    (row,) = sink.rows.values()
    assert LINKS.named(row)["fallback_url"] == ""


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"target": "https://shop.example/" + "a" * MAX_URL_LENGTH}, "target"),
        ({"campaign": "c" * (MAX_TEXT_LENGTH + 1)}, "campaign"),
        ({"utm": {"source": "s" * (MAX_TEXT_LENGTH + 1)}}, "utm"),
        ({"tags": ["t" * 65]}, "tags"),
        ({"tags": ["t"] * 33}, "tags"),
        ({"channel": "email\n"}, "channel"),
        ({"max_clicks": 10**13}, "max_clicks"),
        ({"rules": [{"target": "https://a.example/"}] * 33}, "rules"),
        (
            {"rules": [{"target": "https://a.example/", "devices": ["mobile"] * 4}]},
            "rules.0.devices",
        ),
        (
            {"rules": [{"target": "https://a.example/", "languages": ["fr"] * 33}]},
            "rules.0.languages",
        ),
        ({"rules": [{"target": "https://a.example/", "languages": ["fr\n"]}]}, "rules.0.languages"),
    ],
)
def test_every_string_list_and_number_of_the_body_is_bounded(
    body: dict[str, Any], field: str
) -> None:
    assert field in refused({"target": "https://shop.example/", **body})


@pytest.mark.parametrize(
    ("target", "utm"),
    [
        ("https://shop.example/page#section-2", {}),
        ("https://shop.example/page?color=red#section-2", {}),
        ("https://shop.example/page#section-2", {"source": "mail"}),
    ],
)
def test_the_click_id_goes_in_the_query_before_the_fragment(
    target: str, utm: dict[str, str]
) -> None:
    link = parse_link({"target": target, "utm": utm}, slug="frag")
    location = link.resolve(0.0, 0, click_id="abc123").location
    parts = urlsplit(location)
    assert parts.fragment == "section-2"
    assert parse_qs(parts.query)[CLICK_ID_PARAM] == ["abc123"]
    passed = link.resolve(0.0, 0, passed_query=[("ref", "x")], click_id="abc123").location
    assert urlsplit(passed).fragment == "section-2"
    assert parse_qs(urlsplit(passed).query)["ref"] == ["x"]


def test_an_invalid_slug_read_from_the_topic_never_redirects() -> None:
    table = LinkTable()
    record = parse_link({"target": "https://a.example/"}, slug="fine").to_record()
    table.apply_link("sale\n", orjson.dumps({**record, "slug": "sale\n"}))
    table.apply_link("fine", orjson.dumps(record))
    assert "sale\n" not in table.links
    assert "fine" in table.links


@settings(max_examples=300, derandomize=True)
@given(st.text(max_size=80))
def test_a_valid_slug_is_only_letters_digits_dash_and_underscore(slug: str) -> None:
    if validate_slug(slug) is None:
        assert slug.isascii() and slug.replace("-", "").replace("_", "").isalnum()
        assert 1 <= len(slug) <= 64


@settings(max_examples=500, derandomize=True)
@given(st.text(max_size=200))
def test_validate_target_never_raises(url: str) -> None:
    assert validate_target(url) is None or isinstance(validate_target(url), str)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = st.sampled_from(
    [
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
)


@settings(max_examples=500, derandomize=True)
@given(st.dictionaries(_FIELDS, _JSON, max_size=6))
def test_any_body_is_a_link_or_a_validation_error(body: dict[str, Any]) -> None:
    try:
        link = parse_link({"target": "https://shop.example/", **body}, slug="prop")
    except ValidationError as exc:
        assert exc.errors and all(e.reason for e in exc.errors)
        return
    assert isinstance(link.fallback_url, str)
    link.resolve(0.0, 0, click_id="abc")


async def test_api_answers_400_with_reasons_for_each_reproducing_body(
    client: TestClient[web.Request, web.Application],
) -> None:
    for body, field in [
        (
            {"target": "https://a.example/", "valid_since": "0001-01-01T00:00:00+14:00"},
            "valid_since",
        ),
        (
            {"target": "https://a.example/", "valid_until": "9999-12-31T23:59:59-14:00"},
            "valid_until",
        ),
        ({"target": "https://a.example/", "slug": "newline\n"}, "slug"),
        ({"target": "https://a.example:65536/"}, "target"),
    ]:
        response = await client.post("/api/links", json=body, headers=AUTH)
        assert response.status == 400, body
        answer = await response.json()
        assert field in {e["field"] for e in answer["errors"]}, answer
    created = await client.post(
        "/api/links", json={"target": "https://a.example/", "slug": "okay"}, headers=AUTH
    )
    assert created.status == 201
    patched = await client.patch(
        "/api/links/okay", json={"valid_until": "9999-12-31T23:59:59-14:00"}, headers=AUTH
    )
    assert patched.status == 400
    assert (await patched.json())["errors"][0]["field"] == "valid_until"
