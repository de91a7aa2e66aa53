"""schemathesis against every HTTP surface, each from its OpenAPI document (schemas/openapi/ and
the links service's own), on the real services and a real Kafka broker.

For every documented operation schemathesis generates requests that fit the document and
requests that do not, from a fixed seed. Every answer must be documented (status, content type
and body schema), nothing may answer 5xx but a 503 with Retry-After, and every 4xx says why.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from importlib import resources
from typing import Any

import orjson
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    CheckContext,
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from collectors.links._api import OPENAPI as LINKS_OPENAPI
from tests.conftest import Component, Pipeline, component_env
from tracker.cli.kafka_local import LocalKafka

pytestmark = pytest.mark.integration

TOKEN = "schemathesis-token"
EXAMPLES = 20  # per operation and generation mode
POOLS = {"spring": {"numbers": ["+18005550101"], "fallback": "+18005550100"}}


@pytest.fixture(scope="module")
def services(
    kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    data_dir = tmp_path_factory.mktemp("schemathesis")
    env = component_env(
        kafka.bootstrap,
        data_dir,
        TRACKER_API_TOKEN=TOKEN,
        TRACKER_LINKS_API_RATE="1000000",
        TRACKER_LINKS_API_BURST="1000000",
        TRACKER_GENERIC_WEBHOOK_SECRET="whsec_" + base64.b64encode(b"s" * 32).decode(),
        TRACKER_MAILGUN_WEBHOOK_SIGNING_KEY="mailgun-key",
        TRACKER_HELPDESK_WEBHOOK_SECRET="whsec_" + base64.b64encode(b"h" * 32).decode(),
        TRACKER_CALL_NUMBER_POOLS=orjson.dumps(POOLS).decode(),
        TRACKER_QUERY_MAX_SECONDS="2",
        TRACKER_BODY_READ_TIMEOUT_SECONDS="2",
    )
    pipeline = Pipeline(env, data_dir)
    started: list[Component] = []
    try:
        for component in (
            pipeline.worker(),
            pipeline.beacon(),
            pipeline.links(),
            pipeline.calls(),
            pipeline.email(),
            pipeline.helpdesk(),
        ):
            started.append(component.start())
        yield {
            "console": pipeline.console_url,
            "beacon": pipeline.beacon_url,
            "links": f"http://127.0.0.1:{env['TRACKER_LINKS_PORT']}",
            "calls": pipeline.calls_url,
            "email": pipeline.email_url,
            "helpdesk": pipeline.helpdesk_url,
        }
    finally:
        for component in reversed(started):
            component.stop()


def document(surface: str) -> dict[str, Any]:
    if surface == "links":
        return LINKS_OPENAPI
    text = resources.files("schemas").joinpath("openapi", f"{surface}.yaml").read_text()
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def no_fault_of_ours(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """Nothing answers 5xx but a 503 with Retry-After; every 4xx carries a reason."""
    status = response.status_code
    if status >= 500:
        assert status == 503, f"answered {status}: {response.text[:300]}"
        retry = response.headers.get("retry-after", [""])
        retry = retry[0] if isinstance(retry, list) else retry
        assert retry.isdigit() and int(retry) >= 1, "a 503 without Retry-After"
    if 400 <= status < 500:
        assert response.content.strip(), f"a {status} without a reason"
        if "application/json" in str(response.headers.get("content-type", "")):
            answer = orjson.loads(response.content)
            reason = answer.get("error") or answer.get("message")
            assert isinstance(reason, str) and reason.strip(), f"a {status} without a reason"
    return None


CHECKS = [
    no_fault_of_ours,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("surface", ["beacon", "links", "calls", "email", "helpdesk", "console"])
def test_every_operation_answers_as_its_document_says(
    services: dict[str, str], surface: str
) -> None:
    schema = schemathesis.openapi.from_dict(document(surface))
    headers = {"Authorization": f"Bearer {TOKEN}"} if surface in ("links", "console") else {}
    tried = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok)
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def answers_as_documented(case: Any) -> None:
                nonlocal tried
                tried += 1
                response = case.call(base_url=services[surface], headers=headers, timeout=30)
                case.validate_response(response, checks=CHECKS)

            try:
                answers_as_documented()
            except Unsatisfiable:
                # Nothing in the operation can be made invalid (no parameters, no body).
                assert mode == GenerationMode.NEGATIVE
    assert tried >= 2 * len(list(schema.get_all_operations()))  # each was tried
