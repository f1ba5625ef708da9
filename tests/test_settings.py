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


WHATSAPP_TOKEN = "EAAGwhatsappAccessTokenValue0123456789"
WHATSAPP_SECRET = "0123456789abcdef0123456789abcdef"
WHATSAPP_VERIFY = "verify-token-for-meta-0123"


def test_whatsapp_numbers_from_the_environment_keep_their_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNICHANNEL_WHATSAPP_ACCOUNTS", json.dumps([
        {"account": "lapor_ambon", "phone_number_id": "106540352242922",
         "access_token": WHATSAPP_TOKEN}]))
    monkeypatch.setenv("OMNICHANNEL_WHATSAPP_APP_SECRET", WHATSAPP_SECRET)
    monkeypatch.setenv("OMNICHANNEL_WHATSAPP_VERIFY_TOKEN", WHATSAPP_VERIFY)
    settings = load_settings(write(tmp_path, "whatsapp_api_version: v25.0\n"))
    [account] = settings.whatsapp_accounts
    assert (account.account, account.phone_number_id) == ("lapor_ambon", "106540352242922")
    assert account.access_token.get_secret_value() == WHATSAPP_TOKEN
    assert settings.whatsapp_app_secret is not None
    assert settings.whatsapp_app_secret.get_secret_value() == WHATSAPP_SECRET
    assert settings.whatsapp_api_version == "v25.0"
    assert settings.whatsapp_api_url == "https://graph.facebook.com"
    shown = repr(settings) + str(settings.model_dump())
    for secret in (WHATSAPP_TOKEN, WHATSAPP_SECRET, WHATSAPP_VERIFY):
        assert secret not in shown


def test_whatsapp_defaults_to_a_current_graph_version_and_no_numbers(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "{}\n"))
    assert settings.whatsapp_accounts == [] and settings.whatsapp_app_secret is None
    assert settings.whatsapp_api_version == "v26.0"


def _number(account: str, phone_number_id: str) -> str:
    return (f"{{account: {account}, phone_number_id: '{phone_number_id}', "
            f"access_token: {WHATSAPP_TOKEN}}}")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("whatsapp_verify_token: token\n", "example value"),
        ("whatsapp_verify_token: too-short-123\n", "shorter than 16"),
        ("whatsapp_app_secret: change-me\n", "example value"),
        ("whatsapp_api_version: '26.0'\n", "whatsapp_api_version"),
        (f"whatsapp_accounts: [{_number('lapor', '1065')}, {_number('lapor', '1066')}]\n",
         "account must be unique"),
        (f"whatsapp_accounts: [{_number('ambon', '1065')}, {_number('maluku', '1065')}]\n",
         "phone_number_id must be unique"),
        (f"whatsapp_accounts: [{_number('lapor', '+62 911 1065')}]\n", "phone_number_id"),
        ("whatsapp_accounts: [{account: lapor, phone_number_id: '1065', access_token: x, "
         "webhook_secret: y}]\n", "webhook_secret"),
        ("whatsapp_accounts: [{account: lapor, phone_number_id: '1065'}]\n", "access_token"),
    ],
)
def test_invalid_whatsapp_configuration_is_refused(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(write(tmp_path, text))
TWILIO_SID = "AC" + "0123456789abcdef0123456789abcdef"
TWILIO_TOKEN = "fedcba9876543210fedcba9876543210"


def twilio_env(monkeypatch: pytest.MonkeyPatch, *accounts: dict[str, object]) -> None:
    monkeypatch.setenv("OMNICHANNEL_TWILIO_ACCOUNTS", json.dumps(list(accounts)))


def test_twilio_accounts_from_the_environment_with_numbers_as_e164(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    twilio_env(monkeypatch, {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN,
                             "numbers": ["+62 811-0000-0001", "whatsapp:+6281100000002"],
                             "messaging_service_sids": ["MG" + "a" * 32]})
    settings = load_settings(write(tmp_path, "twilio_api_url: http://127.0.0.1:9\n"))
    [account] = settings.twilio_accounts
    assert account.numbers == ["+6281100000001", "+6281100000002"]
    assert account.auth_token.get_secret_value() == TWILIO_TOKEN
    assert settings.twilio_api_url == "http://127.0.0.1:9"
    assert TWILIO_TOKEN not in repr(settings) and TWILIO_TOKEN not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("accounts", "says"),
    [
        ([{"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN},
          {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN[::-1]}],
         "account_sid is listed twice"),
        ([{"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "numbers": ["+6281100000001"]},
          {"account_sid": "AC" + "1" * 32, "auth_token": TWILIO_TOKEN,
           "numbers": ["whatsapp:+6281100000001"]}],
         r"\+6281100000001 is listed under two accounts"),
        ([{"account_sid": "SK" + "0" * 32, "auth_token": TWILIO_TOKEN}], "account_sid"),
        ([{"account_sid": TWILIO_SID, "auth_token": "token"}], "example value"),
        ([{"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "numbers": ["0811 0000 0001"]}],
         "international form"),
        ([{"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN,
           "messaging_service_sids": ["MG123"]}], "messaging service SID"),
        ([{"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "number": ["+6281100000001"]}],
         "number"),
    ],
)
def test_invalid_twilio_accounts_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accounts: list[dict[str, object]], says: str
) -> None:
    twilio_env(monkeypatch, *accounts)
    with pytest.raises(ConfigError, match=says) as refused:
        load_settings(write(tmp_path, "{}\n"))
    assert TWILIO_TOKEN not in str(refused.value)


def test_email_mailboxes_from_the_environment_and_the_relay_password_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNICHANNEL_EMAIL_MAILBOXES", json.dumps([
        {"address": "Lapor@Ambon.go.id"},
        {"address": "pupr@ambon.go.id", "account": "pupr", "opd": "dinas-pupr",
         "from_address": "balasan@ambon.go.id"}]))
    monkeypatch.setenv("OMNICHANNEL_EMAIL_RELAY_PASSWORD", "relay-password-0123456789")
    settings = load_settings(write(tmp_path, "email_relay_security: tls\n"))
    shared, pupr = settings.email_mailboxes
    assert (shared.address, shared.account) == ("lapor@ambon.go.id", "lapor@ambon.go.id")
    assert (pupr.account, pupr.opd, pupr.from_address) == ("pupr", "dinas-pupr",
                                                           "balasan@ambon.go.id")
    assert "relay-password" not in repr(settings)
    assert settings.email_relay_security == "tls"


@pytest.mark.parametrize(("text", "says"), [
    ("email_mailboxes: [{address: not-an-address}]\n", "email_mailboxes"),
    ("email_relay_security: ssl\n", "email_relay_security"),
    ("email_mailboxes: [{address: a@b.id, secret: x}]\n", "secret"),
])
def test_invalid_email_configuration_is_refused(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(write(tmp_path, text))
