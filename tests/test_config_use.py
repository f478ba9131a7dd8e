"""Settings of the use-don't-reveal building blocks (BROKER_*, INTAKE_*): defaults, forms, one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import ConfigError, Settings


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.broker_timeout == 30.0
    assert s.broker_max_response_bytes == 1024 * 1024
    assert s.broker_max_request_bytes == 1024 * 1024
    assert s.broker_cacert == ""
    assert s.intake_ttl == 600.0
    assert s.intake_secret is None
    assert s.intake_public_url == ""


def test_values(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    s = Settings.from_env({"BROKER_TIMEOUT": "2.5s", "BROKER_MAX_RESPONSE_BYTES": "4096", "BROKER_CACERT": str(ca),
                           "INTAKE_TTL": "1h", "INTAKE_SECRET": "i" * 32,
                           "INTAKE_PUBLIC_URL": "https://bridge.example.com/vmb/"})
    assert (s.broker_timeout, s.broker_max_response_bytes, s.intake_ttl) == (2.5, 4096, 3600.0)
    assert s.intake_public_url == "https://bridge.example.com/vmb"
    assert "i" * 32 not in repr(s)


@pytest.mark.parametrize(("env", "variable"), [
    ({"BROKER_TIMEOUT": "0"}, "BROKER_TIMEOUT"),
    ({"BROKER_TIMEOUT": "11m"}, "BROKER_TIMEOUT"),
    ({"BROKER_TIMEOUT": "soon"}, "BROKER_TIMEOUT"),
    ({"BROKER_MAX_RESPONSE_BYTES": "100"}, "BROKER_MAX_RESPONSE_BYTES"),
    ({"BROKER_MAX_REQUEST_BYTES": str(65 * 1024 * 1024)}, "BROKER_MAX_REQUEST_BYTES"),
    ({"BROKER_CACERT": "/nonexistent/ca.pem"}, "BROKER_CACERT"),
    ({"INTAKE_TTL": "10s"}, "INTAKE_TTL"),
    ({"INTAKE_TTL": "2d"}, "INTAKE_TTL"),
    ({"INTAKE_SECRET": "short"}, "INTAKE_SECRET"),
    ({"INTAKE_PUBLIC_URL": "bridge.example.com"}, "INTAKE_PUBLIC_URL"),
    ({"INTAKE_PUBLIC_URL": "https://user@bridge.example.com"}, "INTAKE_PUBLIC_URL"),
    ({"INTAKE_PUBLIC_URL": "https://bridge.example.com/?x=1"}, "INTAKE_PUBLIC_URL"),
])
def test_bad_values_stop_start_up_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(f"invalid setting {variable}:")
    assert "\n" not in str(info.value)
    assert "short" not in str(info.value)


def test_intake_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "intake"
    path.write_text("f" * 40 + "\n")
    assert Settings.from_env({"INTAKE_SECRET_FILE": str(path)}).intake_secret is not None
    with pytest.raises(ConfigError, match="INTAKE_SECRET_FILE: set only one"):
        Settings.from_env({"INTAKE_SECRET_FILE": str(path), "INTAKE_SECRET": "g" * 40})


def test_fingerprint_key_and_wrap_max_ttl() -> None:
    s = Settings.from_env({})
    assert (s.fingerprint_key, s.fingerprint_key_name, s.wrap_max_ttl) == ("", "mcp-bridge-fingerprint", 300.0)
    s = Settings.from_env({"DEFAULT_PREFIX": "team", "WRAP_MAX_TTL": "1h"})
    assert (s.fingerprint_key_name, s.wrap_max_ttl) == ("team-bridge-fingerprint", 3600.0)
    assert Settings.from_env({"FINGERPRINT_KEY": "fp_key-2"}).fingerprint_key_name == "fp_key-2"
    assert Settings.from_env({"WRAP_MAX_TTL": "90.7"}).wrap_max_ttl == 90.0  # whole seconds


@pytest.mark.parametrize(("env", "variable"), [
    ({"FINGERPRINT_KEY": "mcp.alice.key"}, "FINGERPRINT_KEY"),  # a '.' could name an agent's key
    ({"FINGERPRINT_KEY": "Upper"}, "FINGERPRINT_KEY"),
    ({"FINGERPRINT_KEY": "a/b"}, "FINGERPRINT_KEY"),
    ({"WRAP_MAX_TTL": "0"}, "WRAP_MAX_TTL"),
    ({"WRAP_MAX_TTL": "25h"}, "WRAP_MAX_TTL"),
    ({"WRAP_MAX_TTL": "later"}, "WRAP_MAX_TTL"),
])
def test_bad_issue12_values(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(f"invalid setting {variable}:")
