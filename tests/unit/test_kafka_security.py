"""Kafka security settings: every client gets the cluster's TLS and SASL options, and a setting
that cannot work is refused at start with the variable to fix."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from agents.worker import broker_credentials
from tracker.errors import ConfigError
from tracker.kafka.clients import connection
from tracker.settings import Settings

SASL = {
    "TRACKER_KAFKA_BOOTSTRAP": "kafka.example.com:9096",
    "TRACKER_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
    "TRACKER_KAFKA_SASL_MECHANISM": "scram-sha-512",
    "TRACKER_KAFKA_SASL_USERNAME": "tracker",
    "TRACKER_KAFKA_SASL_PASSWORD": "s3cret",
}


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path), **env})


def test_a_plaintext_cluster_gets_the_bootstrap_servers_alone(tmp_path: Path) -> None:
    plain = settings(tmp_path, TRACKER_KAFKA_BOOTSTRAP="kafka:9092")
    assert connection(plain) == {"bootstrap_servers": "kafka:9092"}
    assert broker_credentials(plain) is None


def test_sasl_over_tls_reaches_every_client_and_faust(tmp_path: Path) -> None:
    chosen = settings(tmp_path, **SASL)
    options = connection(chosen)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("tracker", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    faust_side = broker_credentials(chosen)
    assert isinstance(faust_side, faust.SASLCredentials)
    assert (faust_side.protocol.value, faust_side.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-512")
    assert "s3cret" not in repr(chosen)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"TRACKER_KAFKA_SECURITY_PROTOCOL": "kerberos"}, "TRACKER_KAFKA_SECURITY_PROTOCOL"),
        ({**SASL, "TRACKER_KAFKA_SASL_MECHANISM": "GSSAPI"}, "TRACKER_KAFKA_SASL_MECHANISM"),
        ({**SASL, "TRACKER_KAFKA_SASL_PASSWORD": ""}, "TRACKER_KAFKA_SASL_PASSWORD"),
        ({"TRACKER_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "TRACKER_KAFKA_SSL_CAFILE"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_with_its_name(
    tmp_path: Path, env: dict[str, str], names: str
) -> None:
    with pytest.raises(ConfigError, match=names):
        settings(tmp_path, **env)
