"""Configuration: a YAML file overlaid by `OMNICHANNEL_*` environment variables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from omnichannel.phones import normalise_phone

#: Where `serve` looks for its configuration when no `--config` is given.
DEFAULT_CONFIG_PATH = Path("config/omnichannel.yaml")

#: Placeholder secrets copied from documentation are refused at start-up.
EXAMPLE_SECRETS = frozenset({"change-me", "changeme", "secret", "example", "xxx", "token"})


class ConfigError(Exception):
    """The configuration file or environment is invalid."""


DEFAULT_ACK_TEXTS = {
    "id": "Terima kasih, laporan Anda sudah kami terima dengan nomor {tracking_number} dan "
          "diteruskan ke {opd}. Simpan nomor ini untuk menanyakan perkembangannya.",
    "en": "Thank you, we have received your report as {tracking_number} and passed it to "
          "{opd}. Keep this number to ask how it is going.",
}


DEFAULT_TOO_LARGE_TEXTS = {
    "id": "Maaf, file yang Anda kirim terlalu besar untuk kami terima (batas {limit}). "
          "Laporan Anda tetap tercatat; kirim ulang file yang lebih kecil, misalnya foto "
          "alih-alih video.",
    "en": "Sorry, the file you sent is too large for us to receive (limit {limit}). "
          "Your report is still recorded; please send a smaller file, e.g. a photo instead "
          "of a video.",
}


class TelegramBot(BaseModel):
    """One Telegram bot: its account name here, its Bot API token and its webhook secret."""

    model_config = ConfigDict(extra="forbid")

    account: str = Field(min_length=1, max_length=200)
    token: SecretStr
    #: Telegram allows 1-256 characters of A-Z, a-z, 0-9, _ and -; we ask for 16 at least,
    #: and a different one for every bot (it tells the bots' webhooks apart).
    webhook_secret: SecretStr

    @field_validator("webhook_secret")
    @classmethod
    def _telegram_secret_alphabet(cls, value: SecretStr) -> SecretStr:
        if not re.fullmatch(r"[A-Za-z0-9_-]{16,256}", value.get_secret_value()):
            raise ValueError("must be 16-256 characters of A-Z, a-z, 0-9, _ and -")
        return value


class WhatsAppAccount(BaseModel):
    """One WhatsApp business phone number: its account name here, its id and token at Meta."""

    model_config = ConfigDict(extra="forbid")

    account: str = Field(min_length=1, max_length=200)
    #: The phone number's id in the Cloud API (not the phone number itself); webhooks name it.
    phone_number_id: str = Field(pattern=r"^[0-9]{1,32}$")
    #: A system user's access token with the whatsapp_business_messaging permission.
    access_token: SecretStr
def _refuse_example(value: SecretStr) -> SecretStr:
    """A secret copied from documentation, or too short to be a real one, is refused."""
    secret = value.get_secret_value()
    if secret.lower() in EXAMPLE_SECRETS or len(secret) < 16:
        raise ValueError("is an example value or shorter than 16 characters")
    return value


class TwilioAccount(BaseModel):
    """One Twilio account: its SID and auth token, and the numbers and messaging services we use."""

    model_config = ConfigDict(extra="forbid")

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    #: Signs Twilio's webhooks and authenticates our calls to its API.
    auth_token: SecretStr
    #: Our SMS numbers and WhatsApp senders (`+6281100000001`, `whatsapp:+6281100000002`),
    #: kept as E.164; a conversation's account is the number the citizen wrote to.
    numbers: list[str] = Field(default_factory=list)
    #: Messaging services (MG...) of the account: a number they receive on becomes ours too.
    messaging_service_sids: list[str] = Field(default_factory=list)

    @field_validator("auth_token")
    @classmethod
    def _real_token(cls, value: SecretStr) -> SecretStr:
        return _refuse_example(value)

    @field_validator("numbers")
    @classmethod
    def _e164(cls, values: list[str]) -> list[str]:
        out = []
        for raw in values:
            # No region is assumed: a number written nationally would be a guess.
            number = normalise_phone(raw, "ZZ")
            if number is None:
                raise ValueError(f"{raw!r} is not a phone number in international form (+62...)")
            out.append(number)
        return out

    @field_validator("messaging_service_sids")
    @classmethod
    def _service_sids(cls, values: list[str]) -> list[str]:
        for sid in values:
            if not re.fullmatch(r"MG[0-9a-fA-F]{32}", sid):
                raise ValueError(f"{sid!r} is not a messaging service SID (MG + 32 hex digits)")
        return values


class XmppAccount(BaseModel):
    """One XMPP identity: a bot account (c2s login) or an external component (XEP-0114)."""

    model_config = ConfigDict(extra="forbid")

    account: str = Field(min_length=1, max_length=200)
    #: `client` logs in as a user (`jid` is the bot's bare JID); `component` connects as a
    #: gateway (`jid` is the component's domain and takes every address under it).
    mode: str = Field(default="client", pattern=r"^(client|component)$")
    jid: str = Field(pattern=r"^[^@/\s]+@[^@/\s]+$|^[^@/\s]+$", max_length=1023)
    #: The account's password, or the component's shared secret.
    password: SecretStr
    #: Where to connect; by default the JID's domain (DNS SRV) on 5222, or loopback:5347 for
    #: a component. Without TLS only on loopback.
    host: str | None = None
    port: int | None = Field(default=None, gt=0, lt=65536)
    #: The OPD whose queue every conversation of this account goes to, rules or not.
    opd: str | None = Field(default=None, pattern=r"^[a-z0-9_-]{1,50}$")

    @field_validator("password")
    @classmethod
    def _real_password(cls, value: SecretStr) -> SecretStr:
        return _refuse_example(value)

    @model_validator(mode="after")
    def _jid_fits_mode(self) -> XmppAccount:
        if (self.mode == "client") != ("@" in self.jid):
            raise ValueError("jid must be a bare user JID (name@domain) in client mode and a "
                             "domain (gw.example.org) in component mode")
        return self


class EmailImap(BaseModel):
    """A mailbox read over IMAP, for deployments whose mail server cannot forward to us."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(default=993, ge=1, le=65535)
    #: `tls` (implicit, port 993) or `none` (plain, on a trusted network only).
    security: str = Field(default="tls", pattern=r"^(tls|none)$")
    username: str = Field(min_length=1)
    password: SecretStr
    folder: str = "INBOX"


class EmailMailbox(BaseModel):
    """One address citizens write to: the account its conversations belong to, maybe an OPD's."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(pattern=r"^[^@\s<>]+@[^@\s<>]+$", max_length=254)
    #: The conversations' account; defaults to the address itself.
    account: str = Field(default="", max_length=200)
    #: An OPD's own address: its mail goes to that queue, whatever the rules say.
    opd: str | None = None
    #: Replies leave from this address (default: `address`).
    from_address: str | None = Field(default=None, pattern=r"^[^@\s<>]+@[^@\s<>]+$")
    #: The name shown beside it in the citizen's mail client.
    from_name: str = Field(default="", max_length=200)
    #: Read it over IMAP instead of taking it from the relay by SMTP.
    imap: EmailImap | None = None

    @field_validator("address", "from_address")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _account_defaults_to_address(self) -> EmailMailbox:
        self.account = self.account or self.address
        return self


#: Images a web-chat visitor may upload, by the type their first bytes show.
WebchatImageType = Literal["image/jpeg", "image/png", "image/webp", "image/gif"]
WEBCHAT_IMAGE_TYPES: tuple[WebchatImageType, ...] = (
    "image/jpeg", "image/png", "image/webp", "image/gif")


class WebchatWidget(BaseModel):
    """One embedded chat widget: its public key, the sites that may embed it, its OPD."""

    model_config = ConfigDict(extra="forbid")

    #: Public (it is in the site's HTML); the conversation's account and the rules' `account`.
    key: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")
    #: The site it is embedded in, as agents see it (e.g. "Situs DLHP").
    name: str = Field(min_length=1, max_length=200)
    #: Origins (`https://dlhp.ambonkota.go.id`) whose pages may open its chat; the engine's
    #: own standalone page `/chat/<key>` is always allowed.
    origins: list[str] = Field(default_factory=list)
    #: The OPD whose queue every conversation of this widget goes to, whatever the rules say.
    opd: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,49}$")
    #: What a visitor must give before writing (optional otherwise).
    require: list[Literal["name", "phone", "email"]] = Field(default_factory=list)
    #: The chat window's heading; a default in the widget's language otherwise.
    title: str | None = Field(default=None, max_length=100)
    language: Literal["id", "en"] = "id"

    @field_validator("origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        out = []
        for raw in values:
            match = re.fullmatch(r"(https?)://([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(:[0-9]{1,5})?/?",
                                 raw.strip())
            if match is None:
                raise ValueError(f"{raw!r} is not an origin (scheme://host[:port], no path)")
            out.append(raw.strip().rstrip("/").lower())
        return out


class Settings(BaseSettings):
    """Every setting of the engine; environment variables win over the YAML file."""

    model_config = SettingsConfigDict(
        env_prefix="OMNICHANNEL_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = "sqlite+aiosqlite:///omnichannel.db"
    broker_url: str | None = None
    #: Names of the exchange and queues start with this (`<prefix>.routed`, `<prefix>.opd.<code>`).
    broker_prefix: str = Field(default="omnichannel", pattern=r"^[a-z0-9][a-z0-9_.-]{0,49}$")
    rules_path: Path = Path("config/routing.yaml")
    tracking_prefix: str = Field(default="AMB", pattern=r"^[A-Z0-9]{1,10}$")
    #: Country (ISO 3166 alpha-2) assumed for phone numbers written nationally, e.g. 0812...
    phone_region: str = Field(default="ID", pattern=r"^[A-Z]{2}$")
    #: Bearer token of trusted systems posting to `/webhooks/api`; unset disables the endpoint.
    api_token: SecretStr | None = None
    #: Bearer token of the agent API until per-agent accounts exist; unset disables it.
    agent_token: SecretStr | None = None
    #: The public base URL providers call (e.g. https://lapor.example.go.id); signatures are
    #: checked against it, not against the address this server sees behind a proxy.
    public_url: str | None = None
    #: Where agents' replies on the `api` channel are POSTed as JSON.
    api_callback_url: str | None = None
    #: Telegram bots; with secrets, set them in the environment as JSON, e.g.
    #: OMNICHANNEL_TELEGRAM_BOTS='[{"account": "lapor", "token": "...", "webhook_secret": "..."}]'
    telegram_bots: list[TelegramBot] = Field(default_factory=list)
    #: The Bot API's base URL (a local Bot API server, or a fake in tests).
    telegram_api_url: str = "https://api.telegram.org"
    #: WhatsApp Cloud API phone numbers; set them in the environment as JSON, e.g.
    #: OMNICHANNEL_WHATSAPP_ACCOUNTS='[{"account": "lapor", "phone_number_id": "1065...",
    #: "access_token": "..."}]'
    whatsapp_accounts: list[WhatsAppAccount] = Field(default_factory=list)
    #: The Meta app's secret: webhooks are signed with it (`X-Hub-Signature-256`).
    whatsapp_app_secret: SecretStr | None = None
    #: Chosen by us and entered in Meta's dashboard; Meta echoes it in the GET handshake.
    whatsapp_verify_token: SecretStr | None = None
    #: The Graph API's base URL (a fake in tests).
    whatsapp_api_url: str = "https://graph.facebook.com"
    #: Graph API version in every request path; Meta keeps each for about two years.
    whatsapp_api_version: str = Field(default="v26.0", pattern=r"^v\d+\.\d+$")
    #: Twilio accounts (SMS and WhatsApp); with secrets, set them in the environment as JSON, e.g.
    #: OMNICHANNEL_TWILIO_ACCOUNTS='[{"account_sid": "AC...", "auth_token": "...",
    #: "numbers": ["+6281100000001", "whatsapp:+6281100000002"]}]'
    twilio_accounts: list[TwilioAccount] = Field(default_factory=list)
    #: Twilio's REST API base URL (a fake in tests); media is fetched only from this host.
    twilio_api_url: str = "https://api.twilio.com"
    #: XMPP accounts and components; with secrets, set them in the environment as JSON, e.g.
    #: OMNICHANNEL_XMPP_ACCOUNTS='[{"account": "lapor", "jid": "lapor@xmpp.example.org",
    #: "password": "..."}]'
    xmpp_accounts: list[XmppAccount] = Field(default_factory=list)
    #: E-mail: addresses citizens write to, as JSON in the environment, e.g.
    #: OMNICHANNEL_EMAIL_MAILBOXES='[{"address": "lapor@ambon.go.id"}]'; none disables it.
    email_mailboxes: list[EmailMailbox] = Field(default_factory=list)
    #: Where the SMTP receiver the mail relay forwards to listens.
    email_smtp_host: str = "127.0.0.1"
    email_smtp_port: int = Field(default=2525, ge=0, le=65535)
    #: The name the receiver and the sender greet with (default: the machine's name).
    email_helo_name: str | None = None
    #: Largest message taken (announced as SMTP SIZE; larger ones are refused with 552).
    email_max_message_bytes: int = Field(default=35 * 1024 * 1024, gt=0)
    #: Relay hosts allowed to hand mail to the receiver (CIDRs); empty allows any.
    email_relay_networks: list[str] = Field(default_factory=list)
    #: The relay replies leave through.
    email_relay_host: str = "127.0.0.1"
    email_relay_port: int = Field(default=25, ge=1, le=65535)
    email_relay_username: str | None = None
    email_relay_password: SecretStr | None = None
    #: `starttls` (upgrade when offered; required with a username), `tls` (implicit, port
    #: 465) or `none`.
    email_relay_security: str = Field(default="starttls", pattern=r"^(starttls|tls|none)$")
    #: How often mailboxes read over IMAP are looked at for new mail.
    email_imap_poll_s: float = Field(default=60.0, gt=0)
    #: Web-chat widgets (see README); the key is public, the secret signs visitors' tokens.
    webchat_widgets: list[WebchatWidget] = Field(default_factory=list)
    #: Signs visitors' identity tokens; required when widgets are configured.
    webchat_secret: SecretStr | None = None
    #: How long a visitor's token (and so their history in that browser) stays valid.
    webchat_token_days: int = Field(default=365, gt=0)
    #: Messages (and uploads) a visitor may send per minute; more are refused with a reason.
    webchat_rate_per_minute: int = Field(default=20, gt=0)
    #: Image types a visitor may upload (checked on the file's first bytes) and their size.
    webchat_upload_types: list[WebchatImageType] = Field(
        default_factory=lambda: list(WEBCHAT_IMAGE_TYPES))
    webchat_upload_bytes: int = Field(default=5 * 1024 * 1024, gt=0)
    #: How often an open chat looks for replies another engine process sent (live pushes
    #: reach only the sockets of the process that sends).
    webchat_resync_s: float = Field(default=5.0, gt=0)

    @field_validator("webchat_widgets")
    @classmethod
    def _widget_keys_unique(cls, widgets: list[WebchatWidget]) -> list[WebchatWidget]:
        keys = [w.key for w in widgets]
        if len(set(keys)) != len(keys):
            raise ValueError("a widget key is listed twice")
        return widgets

    @model_validator(mode="after")
    def _widgets_need_a_secret(self) -> Settings:
        if self.webchat_widgets and self.webchat_secret is None:
            raise ValueError("webchat_widgets need webchat_secret to sign visitors' tokens")
        return self

    #: Reply to a conversation's first message with its tracking number and OPD.
    auto_ack: bool = True
    #: Language of the texts the engine writes to citizens (a key of `auto_ack_texts`).
    language: str = "id"
    #: Acknowledgement per language; `{tracking_number}` and `{opd}` are filled in.
    auto_ack_texts: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ACK_TEXTS))
    #: Told to a citizen whose file is over the limit, per language; `{limit}` is filled in.
    too_large_texts: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TOO_LARGE_TEXTS))
    #: Where files citizens send are kept, by content (SHA-256).
    attachments_path: Path = Path("data/attachments")
    #: Largest file fetched from a provider; larger ones are recorded and the citizen is told.
    max_attachment_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    #: Bound on one file download (they are larger and slower than a send).
    fetch_timeout_s: float = Field(default=120.0, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    #: Largest number of inbound messages written in one database transaction.
    ingest_batch_size: int = Field(default=256, gt=0)
    #: Transactions writing batches at once (PostgreSQL; SQLite has one writer). Fewer writers
    #: make bigger batches, and a batch costs about as many round trips as a single message.
    ingest_writers: int = Field(default=2, gt=0)
    #: Connections reserved for ingest and the outbox, apart from those serving agents' queries.
    ingest_pool_size: int = Field(default=4, gt=0)
    api_pool_size: int = Field(default=5, gt=0)
    #: Agents' queries are cancelled after this many seconds so they cannot hold the database.
    api_statement_timeout_s: float = Field(default=10.0, gt=0)
    delivery_attempts: int = Field(default=5, gt=0)
    delivery_timeout_s: float = Field(default=10.0, gt=0)
    #: How often replies no worker holds (one died mid-send, a work item was lost) are offered
    #: again.
    delivery_sweep_s: float = Field(default=10.0, gt=0)
    log_level: str = "info"
    log_format: str = Field(default="json", pattern=r"^(json|console)$")

    @field_validator("api_token", "agent_token", "whatsapp_app_secret", "whatsapp_verify_token",
                     "webchat_secret")
    @classmethod
    def _refuse_example_secret(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _refuse_example(value)

    @field_validator("twilio_accounts")
    @classmethod
    def _twilio_accounts_apart(cls, accounts: list[TwilioAccount]) -> list[TwilioAccount]:
        sids = [a.account_sid for a in accounts]
        if len(set(sids)) != len(sids):
            raise ValueError("an account_sid is listed twice")
        owner: dict[str, str] = {}
        for account in accounts:
            for number in account.numbers:
                # A reply leaves from the conversation's number: it needs one account to send it.
                if owner.setdefault(number, account.account_sid) != account.account_sid:
                    raise ValueError(f"{number} is listed under two accounts")
        return accounts

    @field_validator("broker_url", "api_callback_url", "public_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _whatsapp_accounts_unique(self) -> Settings:
        for field in ("account", "phone_number_id"):
            values = [getattr(a, field) for a in self.whatsapp_accounts]
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"whatsapp_accounts: {field} must be unique ({repeated})")
        return self

    @model_validator(mode="after")
    def _acknowledgement_texts_render(self) -> Settings:
        if self.language not in self.auto_ack_texts:
            raise ValueError(f"auto_ack_texts has no text for language {self.language!r}")
        for language, text in self.auto_ack_texts.items():
            try:
                text.format(tracking_number="AMB-2026-000001", opd="OPD")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"auto_ack_texts.{language}: only {{tracking_number}} and "
                                 f"{{opd}} can be filled in ({exc!r})") from exc
        if self.language not in self.too_large_texts:
            raise ValueError(f"too_large_texts has no text for language {self.language!r}")
        for language, text in self.too_large_texts.items():
            try:
                text.format(limit="20 MB")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"too_large_texts.{language}: only {{limit}} can be filled "
                                 f"in ({exc!r})") from exc
        return self

    @property
    def is_sqlite(self) -> bool:
        """Whether the store is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")


class _YamlSource(PydanticBaseSettingsSource):
    """Feeds the parsed YAML file to pydantic-settings below the environment."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse the YAML configuration file into a plain mapping."""
    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    except YAMLError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_settings(config_path: Path | None = None) -> Settings:
    """Load settings from `config_path`, else `OMNICHANNEL_CONFIG`, else the default file."""
    if config_path is None:
        env_path = os.environ.get("OMNICHANNEL_CONFIG")
        if env_path:
            config_path = Path(env_path)
        elif DEFAULT_CONFIG_PATH.exists():
            config_path = DEFAULT_CONFIG_PATH
    data = read_config_file(config_path) if config_path else {}

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _YamlSource(settings_cls, data))

    try:
        return _Loaded()
    except ValueError as exc:
        where = f"{config_path} / environment" if config_path else "environment"
        raise ConfigError(f"invalid configuration ({where}): {exc}") from exc
