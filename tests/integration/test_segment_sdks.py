"""Segment's and RudderStack's own libraries, pointed at a running beacon and worker.

Each library sends one visit: a page and a track under an anonymous id, an identify with an
email, an alias from the anonymous id to the user id, and an order under the user id. The rows
must land in ClickHouse as a trusted server source's (never bots), and the visit must be one
customer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import Pipeline, component_env
from tracker.cli.kafka_local import LocalKafka
from tracker.privacy import hash_identifier

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WRITE_KEY = "backend-" + uuid.uuid4().hex
# A crawler's user agent on a page the server reports: a server source is never a bot.
BOT_AGENT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.fixture
def segment_pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    sources = [{"name": "backend", "write_key": WRITE_KEY, "kind": "server"}]
    env = component_env(kafka.bootstrap, tmp_path, TRACKER_SOURCES=orjson.dumps(sources).decode())
    running = Pipeline(env, tmp_path).start()
    yield running
    running.stop()


def send_with_segment_python(beacon: str, anonymous_id: str, user_id: str, email: str) -> None:
    from segment.analytics import Client

    failures: list[str] = []
    # The default, batching client: its consumer thread posts /v1/batch.
    client = Client(
        WRITE_KEY,
        host=beacon,
        on_error=lambda error, _batch: failures.append(str(error)),
        max_retries=2,
    )
    client.page(
        anonymous_id=anonymous_id,
        name="Pricing",
        properties={"url": "https://shop.example/pricing?utm_source=news&utm_medium=email"},
        context={"userAgent": BOT_AGENT},
    )
    client.track(anonymous_id=anonymous_id, event="Product Viewed", properties={"sku": "kettle-1"})
    client.identify(user_id=user_id, traits={"email": email})
    client.alias(previous_id=anonymous_id, user_id=user_id)
    client.track(
        user_id=user_id, event="Order Completed", properties={"revenue": 49.9, "currency": "eur"}
    )
    client.flush()
    client.join()
    assert not failures, failures


def send_with_rudderstack_python(beacon: str, anonymous_id: str, user_id: str, email: str) -> None:
    from rudderstack.analytics.client import Client

    # Blocking mode, gzip on (RudderStack's default): each call is its own /v1/batch request.
    client = Client(WRITE_KEY, host=beacon, sync_mode=True, gzip=True)
    client.page(
        anonymous_id=anonymous_id,
        name="Pricing",
        properties={"url": "https://shop.example/pricing?utm_source=news&utm_medium=email"},
        context={"userAgent": BOT_AGENT},
    )
    client.track(anonymous_id=anonymous_id, event="Product Viewed", properties={"sku": "kettle-1"})
    client.identify(user_id=user_id, traits={"email": email})
    client.alias(previous_id=anonymous_id, user_id=user_id)
    client.track(
        user_id=user_id, event="Order Completed", properties={"revenue": 49.9, "currency": "eur"}
    )


def send_with_segment_node(beacon: str, anonymous_id: str, user_id: str, email: str) -> None:
    npm = shutil.which("npm")
    node = shutil.which("node")
    if not npm or not node:
        pytest.fail("node and npm are needed for Segment's Node library; install Node.js 18+")
    if not (ROOT / "node_modules" / "@segment" / "analytics-node").exists():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"npm ci failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    env = {
        **os.environ,
        "BEACON_URL": beacon,
        "WRITE_KEY": WRITE_KEY,
        "ANONYMOUS_ID": anonymous_id,
        "USER_ID": user_id,
        "EMAIL": email,
    }
    done = subprocess.run(
        [node, str(ROOT / "tests" / "integration" / "sdk" / "segment_node.mjs")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"the Node library failed: {done.stdout}{done.stderr}"


Sender = Callable[[str, str, str, str], None]


@pytest.mark.parametrize(
    "send",
    [send_with_segment_python, send_with_segment_node, send_with_rudderstack_python],
    ids=["segment-python", "segment-node", "rudderstack-python"],
)
def test_a_segment_library_visit_lands_as_one_customer(
    segment_pipeline: Pipeline, send: Sender
) -> None:
    suffix = uuid.uuid4().hex[:8]
    anonymous_id, user_id, email = f"anon-{suffix}", f"user-{suffix}", f"ada-{suffix}@example.com"

    send(segment_pipeline.beacon_url, anonymous_id, user_id, email)

    segment_pipeline.wait_until_handled()
    where = f"anonymous_id = '{anonymous_id}' OR user_id = '{user_id}'"
    rows = segment_pipeline.query(
        "SELECT type, name, source, is_bot, value, currency, campaign_source, length(email_hash) "
        f"FROM touchpoints WHERE {where} ORDER BY ts, type FORMAT TSV"
    )
    found = sorted(tuple(line.split("\t")) for line in rows.strip().splitlines())
    assert found == sorted(
        [
            ("page_view", "Pricing", "server", "false", "\\N", "", "news", "0"),
            ("product_viewed", "Product Viewed", "server", "false", "\\N", "", "", "0"),
            ("identify", "identify", "server", "false", "\\N", "", "", "64"),
            ("alias", "alias", "server", "false", "\\N", "", "", "0"),
            ("order_completed", "Order Completed", "server", "false", "49.9", "EUR", "", "0"),
        ]
    ), rows
    email_hash = hash_identifier("email", email, "test-salt")
    assert email_hash in segment_pipeline.query(
        f"SELECT email_hash FROM touchpoints WHERE user_id = '{user_id}' AND type = 'identify'"
    )
    # One customer across the anonymous and the identified events, through the alias.
    customers = segment_pipeline.query(
        "SELECT uniqExact(current_customer_id), countIf(current_customer_id = '') "
        f"FROM customer_touchpoints WHERE {where}"
    )
    assert customers.strip() == "1\t0"


def test_a_wrong_write_key_is_refused_and_nothing_is_stored(segment_pipeline: Pipeline) -> None:
    from segment.analytics import Client
    from segment.analytics.request import APIError

    client = Client("not-a-key-of-this-beacon", host=segment_pipeline.beacon_url, sync_mode=True)
    with pytest.raises(APIError) as refused:
        client.track(user_id="u-refused", event="Signed Up")
    assert refused.value.status == 401
    assert "write key" in refused.value.message
    segment_pipeline.wait_until_handled()
    assert (
        segment_pipeline.query(
            "SELECT count() FROM touchpoints WHERE user_id = 'u-refused'"
        ).strip()
        == "0"
    )
