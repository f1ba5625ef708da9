"""Configuration: YAML file under `OMNICHANNEL_*` variables, secrets refused or masked."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import structlog

from omnichannel.logging import configure_logging
from omnichannel.settings import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "omnichannel.yaml"
    path.write_text(text)
    return path


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "port: 9000\ntracking_prefix: AMB\nmax_body_bytes: 2048\n")
    monkeypatch.setenv("OMNICHANNEL_PORT", "9100")
    settings = load_settings(path)
    assert settings.port == 9100
    assert settings.max_body_bytes == 2048


def test_config_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNICHANNEL_CONFIG", str(write(tmp_path, "tracking_prefix: TUAL\n")))
    assert load_settings().tracking_prefix == "TUAL"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("port: [1\n", "omnichannel.yaml"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("no_such_setting: 1\n", "no_such_setting"),
        ("tracking_prefix: amb-lower\n", "tracking_prefix"),
        ("api_token: change-me\n", "example value"),
        ("auto_ack_texts: {id: 'nomor {nomor}'}\n", "auto_ack_texts.id"),
        ("language: fr\n", "no text for language 'fr'"),
        ("too_large_texts: {id: 'batas {limit_mb} MB'}\n", "too_large_texts.id"),
        ("language: en\ntoo_large_texts: {id: 'batas {limit}'}\n",
         "too_large_texts has no text for language 'en'"),
    ],
)
def test_invalid_configuration_is_refused(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(tmp_path / "absent.yaml")


def test_secrets_stay_out_of_reprs_and_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "s3cr3t-token-value-0123456789"
    monkeypatch.setenv("OMNICHANNEL_API_TOKEN", secret)
    settings = load_settings(write(tmp_path, "{}\n"))
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == secret
    assert secret not in repr(settings) and secret not in str(settings.model_dump())
    configure_logging("info", "json")
    structlog.get_logger("test").info("configured", token=secret, settings=repr(settings))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["event"] == "configured" and record["token"] == "***"
    assert secret not in line
    logging.getLogger().handlers[:] = [logging.StreamHandler(io.StringIO())]
