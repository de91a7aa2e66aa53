"""Call settings: provider secrets stay secret, tracking numbers are read from JSON or a file."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tracker.errors import ConfigError
from tracker.settings import Settings


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_HASH_SALT": "s", **env})


def test_provider_secrets_never_show_in_the_settings_repr(tmp_path: Path) -> None:
    loaded = settings(
        tmp_path,
        TRACKER_TWILIO_AUTH_TOKEN="twilio-token-value",
        TRACKER_FREESWITCH_PASSWORD="freeswitch-password-value",
        TRACKER_GENERIC_WEBHOOK_SECRET="whsec_c2VjcmV0",
    )
    assert loaded.twilio_auth_token.value == "twilio-token-value"
    shown = repr(loaded)
    assert "twilio-token-value" not in shown and "freeswitch-password-value" not in shown
    assert "c2VjcmV0" not in shown


def test_tracking_numbers_from_a_file_are_normalized_to_e164(tmp_path: Path) -> None:
    path = tmp_path / "numbers.json"
    path.write_bytes(orjson.dumps({"(800) 555-0100": {"source": "billboard", "name": "autumn"}}))
    loaded = settings(tmp_path, TRACKER_CALL_TRACKING_NUMBERS=str(path))
    assert loaded.call_tracking_numbers == {
        "+18005550100": {"source": "billboard", "name": "autumn"}
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('["+18005550100"]', "must be a JSON object"),
        ('{"+18005550100": {"budget": "10"}}', "keys among source, medium, name, channel"),
        ('{"call me": {"source": "x"}}', "is not a phone number"),
        ("/nowhere/numbers.json", "cannot read"),
    ],
)
def test_bad_tracking_numbers_name_the_variable(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match="TRACKER_CALL_TRACKING_NUMBERS") as raised:
        settings(tmp_path, TRACKER_CALL_TRACKING_NUMBERS=value)
    assert message in str(raised.value)
