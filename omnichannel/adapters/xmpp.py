"""XMPP: a bot account (c2s) or an external component (XEP-0114) per configured account.

No webhook: each account holds a connection of its own, opened in `start` and kept up by
`reconnecting`. Citizens' chat messages are stored before anything is said back (the receipt
a client asked for, XEP-0184); replies go out as chat messages asking for receipts, which
move them to `delivered`, and error bounces to `failed`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from slixmpp import JID, ClientXMPP, ComponentXMPP, Message
from slixmpp.exceptions import IqError, IqTimeout

from omnichannel.adapters.base import (
    Adapter,
    Capabilities,
    EngineAccess,
    PayloadError,
    SignatureError,
    WebhookRequest,
)
from omnichannel.adapters.connection import reconnecting
from omnichannel.adapters.xmpp_stanza import (
    CHANNEL,
    PLUGINS,
    inbound_message,
    parse_jid,
    receipt,
    stanza_id,
)
from omnichannel.delivery import DeliveryError, Outgoing
from omnichannel.model import InboundMessage
from omnichannel.settings import XmppAccount
from omnichannel.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

#: XEP-0114's usual port for components on the server's own machine.
COMPONENT_PORT = 5347
CLIENT_PORT = 5222
#: How long a connection may take to log in before it counts as failed.
CONNECT_TIMEOUT_S = 20.0
#: A client pings its server this often, so a connection that died silently is noticed.
KEEPALIVE_S = 60.0


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Link:
    """One account's connection: opened per session, its stream kept while it is up."""

    def __init__(self, account: XmppAccount) -> None:
        self.account = account
        self.jid = JID(account.jid)
        self.component = account.mode == "component"
        self.host = account.host or ("127.0.0.1" if self.component else None)
        self.port = account.port or (COMPONENT_PORT if self.component else CLIENT_PORT)
        # Signs replies' ids: a receipt counts only from the reply's recipient.
        self.secret = account.password.get_secret_value().encode()
        self.stream: ClientXMPP | ComponentXMPP | None = None
        #: Done when the current session's connection is lost.
        self.ended: asyncio.Future[None] | None = None
        #: Messages and receipts being stored: closing waits for them.
        self.storing: set[asyncio.Task[None]] = set()

    def _new_stream(self) -> ClientXMPP | ComponentXMPP:
        password = self.account.password.get_secret_value()
        stream: ClientXMPP | ComponentXMPP
        if self.component:
            stream = ComponentXMPP(self.account.jid, password, self.host, self.port)
        else:
            plain = _loopback(self.host)
            stream = ClientXMPP(self.account.jid, password, plugin_config={
                "feature_mechanisms": {"unencrypted_plain": plain, "unencrypted_scram": plain},
            })
            if plain:
                # Nothing on loopback to protect: servers there often offer no TLS at all.
                stream.enable_direct_tls = False
                stream.enable_starttls = False
                stream.enable_plaintext = True
        for plugin in PLUGINS:
            # Receipts are sent by us, after the message is stored, never on arrival.
            stream.register_plugin(plugin, {"auto_ack": False} if plugin == "xep_0184" else None)
        return stream

    async def session(self, engine: EngineAccess) -> None:
        """Connect, serve until the connection is lost, and let go of it."""
        stream = self._new_stream()
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        ended: asyncio.Future[None] = loop.create_future()

        def refuse(reason: str) -> None:
            if not started.done():
                started.set_exception(ConnectionError(reason))

        def on_failure(event: object) -> None:
            refuse(f"connection failed: {event}")

        def on_auth_failed(_event: object) -> None:
            refuse("the server refused the account's credentials")

        def on_stream_error(event: object) -> None:
            refuse(f"stream error: {event}")

        def on_disconnected(_event: object) -> None:
            refuse("the connection closed before the session started")
            if not ended.done():
                ended.set_result(None)

        async def on_session_start(_event: object) -> None:
            if not self.component:
                # Available presence: the server routes messages to the bot (and hands over
                # those it kept while the bot was away).
                stream.send_presence()
            if not started.done():
                started.set_result(None)

        async def on_message(stanza: Message) -> None:
            await self._take(engine, stream, stanza)

        stream.add_event_handler("connection_failed", on_failure)
        stream.add_event_handler("failed_all_auth", on_auth_failed)
        stream.add_event_handler("stream_error", on_stream_error)
        stream.add_event_handler("disconnected", on_disconnected)
        stream.add_event_handler("session_start", on_session_start)
        stream.add_event_handler("message", on_message)
        stream.add_event_handler("message_error", on_message)
        # slixmpp's `message` event is for messages with a body: receipts have their own.
        stream.add_event_handler("receipt_received", on_message)
        stream.connect(self.host, self.port)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await started
            self.stream, self.ended = stream, ended
            log.info("xmpp_connected", account=self.account.account, mode=self.account.mode)
            await self._keep_alive(stream, ended)
        finally:
            if self.stream is stream:
                self.stream, self.ended = None, None
            # Our loop reconnects, not slixmpp's own: stop any attempt it has scheduled.
            stream.cancel_connection_attempt()
            stream.abort()
            # The stream's sending task would outlive it, pending, until garbage collected.
            if stream._run_out_filters is not None:
                stream._run_out_filters.cancel()

    async def _keep_alive(self, stream: ClientXMPP | ComponentXMPP,
                          ended: asyncio.Future[None]) -> None:
        """Wait for the connection to end; a client pings its server to notice a dead one."""
        while not ended.done():
            await asyncio.wait([ended], timeout=KEEPALIVE_S)
            if ended.done() or self.component:
                continue
            try:
                await stream.plugin["xep_0199"].ping(jid=JID(self.jid.domain), timeout=10)
            except IqError:
                pass  # an answer, even an error, proves the connection lives
            except (IqTimeout, OSError) as exc:
                log.warning("xmpp_ping_failed", account=self.account.account, error=repr(exc))
                return

    async def _take(self, engine: EngineAccess, stream: ClientXMPP | ComponentXMPP,
                    stanza: Message) -> None:
        # slixmpp runs each handler as a task of its own: the adapter keeps count of them.
        task = asyncio.current_task()
        if task is not None:
            self.storing.add(task)
        try:
            await self._handle(engine, stream, stanza)
        finally:
            if task is not None:
                self.storing.discard(task)

    async def _handle(self, engine: EngineAccess, stream: ClientXMPP | ComponentXMPP,
                      stanza: Message) -> None:
        now = datetime.now(UTC)
        update = receipt(self.account.account, stanza, self.secret, now=now)
        if update is not None:
            try:
                await engine.record_receipts([update])
            except Exception:
                # Only the state shown to agents is behind; the reply itself was delivered.
                log.exception("xmpp_receipt_not_recorded", account=self.account.account,
                              external_id=update.external_id)
            return
        message = inbound_message(self.account.account, self.jid, stanza,
                                  component=self.component, now=now)
        if message is not None:
            await self._store(engine, stream, stanza, message)

    async def _store(self, engine: EngineAccess, stream: ClientXMPP | ComponentXMPP,
                     stanza: Message, message: InboundMessage) -> None:
        try:
            stored = await engine.submit(message)
        except Exception as exc:
            # The server has handed the message over: tell the citizen it was not taken, so
            # their client shows it failed and they can send it again.
            log.error("xmpp_message_not_stored", account=self.account.account,
                      external_id=message.external_id, error=repr(exc))
            self._bounce(stream, stanza)
            return
        log.info("xmpp_message_stored", account=self.account.account,
                 message_id=stored.message_id, duplicate=stored.duplicate)
        if stanza["request_receipt"] and stanza["id"]:
            ack = stream.Message()
            ack["to"] = stanza["from"]
            if self.component:
                ack["from"] = stanza["to"]
            ack["receipt"] = stanza["id"]
            ack.send()

    def _bounce(self, stream: ClientXMPP | ComponentXMPP, stanza: Message) -> None:
        if not stream.is_connected():
            return
        error = stanza.reply(clear=False)
        error["id"] = stanza["id"]  # how the citizen's client knows which message failed
        error["type"] = "error"
        error["error"]["type"] = "wait"
        error["error"]["condition"] = "resource-constraint"
        error["error"]["text"] = "The message could not be stored; please send it again."
        error.send()

    async def send(self, message: Outgoing) -> str:
        stream, ended = self.stream, self.ended
        if stream is None or ended is None or not stream.is_connected():
            raise DeliveryError(f"XMPP account {self.account.account!r} is not connected",
                                retryable=True)
        recipient = parse_jid(message.recipient)
        if recipient is None or not recipient.bare:
            raise DeliveryError(f"{message.recipient!r} is not a JID", retryable=False)
        ident = stanza_id(message.idempotency_key, recipient.bare, self.secret)
        reply = stream.make_message(mto=recipient.bare, mbody=message.text, mtype="chat",
                                    mfrom=self.jid if self.component else None)
        reply["id"] = ident
        reply["origin_id"]["id"] = ident
        reply["request_receipt"] = True
        reply.send()
        # Handed over once slixmpp has written it to the connection; a connection lost first
        # discards what it had not written.
        flushed = asyncio.ensure_future(stream.waiting_queue.join())
        await asyncio.wait([flushed, ended], return_when=asyncio.FIRST_COMPLETED)
        if not flushed.done():
            flushed.cancel()
            raise DeliveryError("the XMPP connection closed while sending", retryable=True)
        return ident


class XmppAdapter(Adapter):
    """Every configured XMPP account's connection and sender."""

    name = CHANNEL
    capabilities = Capabilities(max_text_length=10000, media=False)
    webhook = False
    receives_over = "its own connection to the XMPP server"

    def __init__(self, accounts: Sequence[XmppAccount]) -> None:
        for field in ("account", "jid"):
            values = [getattr(a, field) for a in accounts]
            if len(set(values)) != len(values):
                raise ValueError(f"xmpp_accounts: every {field} must be different")
        self._links = {a.account: _Link(a) for a in accounts}
        self._tasks: list[asyncio.Task[None]] = []

    def verify(self, request: WebhookRequest) -> None:
        """Nothing arrives over HTTP: messages come over each account's own connection."""
        raise SignatureError("the xmpp channel receives messages over its own connection",
                             status=404)

    def parse(self, request: WebhookRequest) -> list[InboundMessage]:
        """Never reached: `verify` refuses every request."""
        raise PayloadError("the xmpp channel takes no webhook", status=404)

    def bound_queue(self, account: str) -> str | None:
        """The OPD the account is configured for, if any."""
        link = self._links.get(account)
        return link.account.opd if link is not None else None

    def connected(self, account: str) -> bool:
        """Whether the account's session is up (for tests and health checks)."""
        link = self._links.get(account)
        return link is not None and link.stream is not None

    async def start(self, engine: EngineAccess) -> None:
        """Connect every account; each reconnects with backoff whenever it is cut off."""
        for account, link in self._links.items():
            self._tasks.append(asyncio.create_task(
                reconnecting(f"xmpp:{account}", functools.partial(link.session, engine)),
                name=f"xmpp:{account}",
            ))

    async def send(self, message: Outgoing) -> str:
        """A chat message to the conversation's JID asking for a receipt; returns its id."""
        link = self._links.get(message.account)
        if link is None:
            raise DeliveryError(f"no XMPP account {message.account!r} is configured",
                                retryable=False)
        return await link.send(message)

    async def close(self) -> None:
        """Let messages and receipts being stored finish, then disconnect every account."""
        storing = [t for link in self._links.values() for t in link.storing]
        if storing:
            await asyncio.wait(storing, timeout=5)
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
