from __future__ import annotations

from pathlib import Path

import pytest

from tracker.errors import ConfigError, TrackerError
from tracker.privacy import (
    InvalidIdentifier,
    hash_identifier,
    normalize_email,
    normalize_phone,
    truncate_ip,
)
from tracker.settings import Settings


@pytest.mark.parametrize(
    ("raw", "truncated"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),
        ("::ffff:198.51.100.9", "198.51.100.0"),
        ("not an ip", ""),
    ],
)
def test_ips_are_truncated_to_the_network(raw: str, truncated: str) -> None:
    assert truncate_ip(raw) == truncated


def test_phone_numbers_normalize_to_e164_before_hashing() -> None:
    assert normalize_phone("+44 20 7946 0958", "US") == "+442079460958"
    assert normalize_phone("(415) 555-0100", "US") == "+14155550100"
    assert normalize_phone("020 7946 0958", "GB") == "+442079460958"
    with pytest.raises(InvalidIdentifier):
        normalize_phone("call me", "US")


def test_an_invalid_identifier_is_a_tracker_error() -> None:
    """Callers that handle Tracker's own errors handle a bad email or phone with them."""
    with pytest.raises(TrackerError):
        normalize_email("not-an-address")


def test_hashes_depend_on_the_salt_and_the_kind() -> None:
    assert hash_identifier("email", "a@b.co", "s1") == hash_identifier("email", "a@b.co", "s1")
    assert hash_identifier("email", "a@b.co", "s1") != hash_identifier("email", "a@b.co", "s2")
    assert hash_identifier("email", "x", "s") != hash_identifier("phone", "x", "s")


def test_defaults_run_everything_locally(tmp_path: Path) -> None:
    settings = Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path)})
    assert settings.uses_local_kafka and settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.clickhouse_url == f"chdb://{tmp_path}/clickhouse"
    assert (
        settings.console_port,
        settings.beacon_port,
        settings.links_port,
        settings.calls_port,
    ) == (
        8000,
        8001,
        8002,
        8003,
    )


def test_local_salt_is_made_once_and_kept(tmp_path: Path) -> None:
    assert not Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path)}).hash_salt
    assert not (tmp_path / "hash_salt").exists()  # reading settings writes nothing

    first = Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path)}).with_hash_salt().hash_salt
    second = Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path)}).hash_salt
    assert first.value == second.value and len(first.value) == 64


def test_secrets_never_show_in_reprs(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_API_TOKEN": "hunter2",
            "TRACKER_HASH_SALT": "pepper",
        }
    )
    assert "hunter2" not in repr(settings) and "pepper" not in repr(settings)
    assert settings.api_token.value == "hunter2"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "TRACKER_BEACON_PORT",
            "eighty",
            "TRACKER_BEACON_PORT must be a whole number, got 'eighty'",
        ),
        (
            "TRACKER_BEACON_PORT",
            "70000",
            "TRACKER_BEACON_PORT must be a TCP port (0-65535), got 70000",
        ),
        (
            "TRACKER_TRUST_FORWARDED_FOR",
            "maybe",
            "TRACKER_TRUST_FORWARDED_FOR must be true or false, got 'maybe'",
        ),
        (
            "TRACKER_CLICKHOUSE_DATABASE",
            "drop;table",
            "TRACKER_CLICKHOUSE_DATABASE must be letters, digits and underscores, got 'drop;table'",
        ),
    ],
)
def test_bad_settings_name_the_variable(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path), name: value})
    assert str(caught.value) == message
