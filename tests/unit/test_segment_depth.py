"""A Segment call nested past orjson's own limit was a 500 (found by bench/fuzz.py): it is the
sender's 400 now, in Segment's shape, as at /v1/events."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from collectors.beacon import create_app
from tracker.kafka.producer import MemoryPublisher
from tracker.settings import Settings


@pytest.mark.parametrize("call", ["track", "identify", "batch"])
@pytest.mark.parametrize("depth", [40, 1000])
async def test_a_message_nested_too_deep_is_refused_with_a_reason(
    tmp_path: Path, call: str, depth: int
) -> None:
    publisher = MemoryPublisher()
    app = create_app(Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path)}), publisher)
    body = b'{"properties":' * depth + b"1" + b"}" * depth
    async with TestClient(TestServer(app)) as client:
        answer = await client.post(f"/v1/{call}", data=body)
        assert answer.status == 400
        refusal = await answer.json()
        assert refusal["code"] == "invalid_request" and "deeper than 32" in refusal["message"]


async def test_a_message_with_nested_properties_still_goes_through(tmp_path: Path) -> None:
    publisher = MemoryPublisher()
    app = create_app(Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path)}), publisher)
    message = {
        "type": "track",
        "event": "Signed Up",
        "anonymousId": "a-1",
        "messageId": "m-1",
        "properties": {"plan": {"name": "pro", "seats": {"count": 3}}},
    }
    async with TestClient(TestServer(app)) as client:
        answer = await client.post("/v1/track", json=message)
        assert answer.status == 200, await answer.text()
