"""E-mail: an SMTP receiver the organisation's mail relay forwards to, replies out through a relay.

The receiver runs in the engine's event loop (aiosmtpd's `SMTP` protocol on
`loop.create_server`), refuses recipients that are not configured mailboxes at RCPT, and says
250 to the message only once every copy of it is stored durably. What the relay handed over is
treated as a `WebhookRequest` (method `SMTP`, the envelope in headers, the message's bytes as
body), so verifying and parsing stay pure and share the other channels' contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import socket
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aioimaplib
import aiosmtplib
import sqlalchemy as sa
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from omnichannel import metrics
from omnichannel.adapters.base import (
    Adapter,
    Capabilities,
    ChannelDisabled,
    Download,
    EngineAccess,
    FetchError,
    SignatureError,
    TooLarge,
    WebhookRequest,
)
from omnichannel.adapters.connection import reconnecting
from omnichannel.adapters.email_compose import (
    compose_reply,
    message_id_for,
    references_for,
    reply_subject,
)
from omnichannel.adapters.email_parse import ParsedEmail, parse_email
from omnichannel.delivery import DeliveryError, Outgoing
from omnichannel.model import (
    Attachment,
    DeliveryStatus,
    InboundMessage,
    Sender,
    StatusUpdate,
)
from omnichannel.pipeline import ShuttingDown
from omnichannel.settings import EmailMailbox
from omnichannel.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

CHANNEL = "email"
PEER = "X-Smtp-Peer"
MAIL_FROM = "X-Smtp-Mail-From"
RCPT_TO = "X-Smtp-Rcpt-To"
#: How `Attachment.url` names a part over the size limit, kept inside the raw message.
PART_PREFIX = "email-part:"
#: The author of the engine's own messages (acknowledgements, notices), not an agent's.
ENGINE_AUTHOR = "omnichannel"
#: Reply prefixes that mark a subject as an answer rather than a new report's title.
_REPLY_SUBJECT = ("re:", "aw:", "bls:", "balas:", "fw:", "fwd:")


class _Receiver(SMTP):
    """aiosmtpd's protocol, taking the long lines real mail carries (RFC 5321 says 1,000)."""

    line_length_limit = 64 * 1024


class EmailAdapter(Adapter):
    """Takes citizens' mail by SMTP (or IMAP) and sends replies through the mail relay."""

    name = CHANNEL
    capabilities = Capabilities(max_text_length=100_000, media=True)
    webhook = False
    receives_over = ("SMTP from the organisation's mail relay (email_smtp_host, email_smtp_port) "
                     "or IMAP")

    def __init__(
        self, mailboxes: Sequence[EmailMailbox], *, tracking_prefix: str = "AMB",
        listen_host: str = "127.0.0.1", listen_port: int = 2525, helo_name: str | None = None,
        max_message_bytes: int = 35 * 1024 * 1024,
        max_attachment_bytes: int = 25 * 1024 * 1024, relay_networks: Sequence[str] = (),
        relay_host: str = "127.0.0.1", relay_port: int = 25, relay_username: str | None = None,
        relay_password: str | None = None, relay_security: str = "starttls",
        timeout_s: float = 10.0, imap_poll_s: float = 60.0,
    ) -> None:
        self._by_account = {m.account: m for m in mailboxes}
        if len(self._by_account) != len(mailboxes):
            raise ValueError("every e-mail mailbox needs its own account")
        self._mailboxes = {m.address: m for m in mailboxes}
        for box in mailboxes:
            # Citizens' answers to our replies, and bounces of them, come to the address the
            # replies left from.
            if box.from_address:
                self._mailboxes.setdefault(box.from_address, box)
        self._prefix = tracking_prefix
        self._listen = (listen_host, listen_port)
        self._helo = helo_name
        self._max_message = max_message_bytes
        self._max_attachment = max_attachment_bytes
        self._networks = [ipaddress.ip_network(n, strict=False) for n in relay_networks]
        self._relay = (relay_host, relay_port)
        self._username = relay_username
        self._password = relay_password
        self._security = relay_security
        self._timeout_s = timeout_s
        self._engine: EngineAccess | None = None
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[_Receiver] = weakref.WeakSet()
        self._imap_poll_s = imap_poll_s
        self._pollers: list[asyncio.Task[None]] = []

    # -- receiving -------------------------------------------------------------------------

    def _ours(self, request: WebhookRequest) -> list[EmailMailbox]:
        found: dict[str, EmailMailbox] = {}
        for address in request.headers.get(RCPT_TO, "").split(","):
            box = self._mailboxes.get(address.strip().lower())
            if box is not None:
                found.setdefault(box.account, box)
        return list(found.values())

    def peer_allowed(self, peer: str) -> bool:
        """Whether a relay at `peer` may hand mail over (any, when no networks are set)."""
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def verify(self, request: WebhookRequest) -> None:
        """The relay must be an allowed one and the mail addressed to a configured mailbox."""
        if not self._mailboxes:
            raise ChannelDisabled("the email channel is disabled: no mailbox is configured")
        # Mail read over IMAP comes from our own mailbox, not from a relay.
        if request.method != "IMAP" and not self.peer_allowed(request.headers.get(PEER, "")):
            raise SignatureError(f"{request.headers.get(PEER)!r} is not an allowed mail relay")
        if not self._ours(request):
            raise SignatureError("no recipient is a mailbox of this service")

    def parse(self, request: WebhookRequest) -> list[InboundMessage]:
        """One message per mailbox the mail was sent to; none for automated mail."""
        return self._messages(request, self._read(request))

    def statuses(self, request: WebhookRequest) -> list[StatusUpdate]:
        """A delivery report about one of our replies marks that reply failed."""
        return self._statuses(request, self._read(request))

    def _statuses(self, request: WebhookRequest, parsed: ParsedEmail) -> list[StatusUpdate]:
        return [StatusUpdate(channel=CHANNEL, account=box.account, external_id=b.message_id,
                             status=DeliveryStatus.FAILED, at=parsed.sent_at or _now(),
                             error=b.reason[:500])
                for b in parsed.bounces for box in self._ours(request)]

    def _read(self, request: WebhookRequest) -> ParsedEmail:
        return parse_email(request.body, envelope_sender=request.headers.get(MAIL_FROM))

    def _automated(self, parsed: ParsedEmail) -> str | None:
        if parsed.automated:
            return parsed.automated
        if parsed.sender_address in self._mailboxes:
            return "sent from one of our own addresses"
        return None

    def _messages(self, request: WebhookRequest, parsed: ParsedEmail) -> list[InboundMessage]:
        # A From without an address leaves the envelope's sender; one longer than an address
        # can be (254) is no one's.
        sender = parsed.sender_address or request.headers.get(MAIL_FROM, "").strip().lower()
        if self._automated(parsed) or not 3 <= len(sender) <= 254 or "@" not in sender:
            return []
        raw_id = hashlib.sha256(request.body).hexdigest()
        attachments, notes = [], []
        for index, part in enumerate(parsed.parts):
            kept = part.size <= self._max_attachment
            attachments.append(Attachment(
                content_type=part.content_type, size=part.size, filename=part.filename,
                blob_id=part.blob_id if kept else None,
                # Over the limit: the fetcher finds it too large, records that on the message
                # and tells the citizen; its bytes stay in the raw message.
                url=None if kept else f"{PART_PREFIX}{raw_id}/{index}",
            ))
            notes.append({"content_type": part.content_type, "filename": part.filename,
                          "size": part.size, "inline": part.inline,
                          "content_id": part.content_id,
                          "blob_id": part.blob_id if kept else None,
                          "note": None if kept else
                          f"over the {self._max_attachment} byte limit; kept in the raw message"})
        hint = parsed.thread_hint(self._prefix)
        text = parsed.text
        if parsed.subject and hint is None and \
                not parsed.subject.lower().startswith(_REPLY_SUBJECT):
            # A new report's subject is often its best summary: agents and the rules see it.
            text = f"{parsed.subject}\n\n{text}".strip()
        raw = {
            "message_id": parsed.message_id, "subject": parsed.subject,
            "in_reply_to": list(parsed.in_reply_to), "references": list(parsed.references),
            "envelope": {"peer": request.headers.get(PEER), "mail_from":
                         request.headers.get(MAIL_FROM),
                         "rcpt_to": request.headers.get(RCPT_TO, "").split(",")},
            "raw_blob_id": raw_id, "size": len(request.body),
            "headers": [[k, v[:4000]] for k, v in parsed.headers],
            "original_text": parsed.original_text, "html_only": parsed.html_only,
            "parts": notes, "defects": list(parsed.defects),
        }
        sent_at = parsed.sent_at
        if sent_at is not None and sent_at > _now() + timedelta(minutes=10):
            sent_at = None  # a sender's clock in the future would misorder the thread
        return [
            InboundMessage(
                channel=CHANNEL, account=box.account, external_id=parsed.message_id,
                sender=Sender(id=sender, name=(parsed.sender_name or "")[:200] or None,
                              email=sender[:254] or None),
                text=text,
                sent_at=sent_at, attachments=tuple(attachments), raw=raw, thread_hint=hint,
            )
            for box in self._ours(request)
        ]

    def request_of(self, session: Session, envelope: Envelope) -> WebhookRequest:
        """What the relay handed over, as the contract's request."""
        body = envelope.original_content or b""
        host, port = self.address or self._listen
        return WebhookRequest(
            method="SMTP", url=f"smtp://{host}:{port}", body=bytes(body),
            headers={PEER: str(session.peer[0]) if session.peer else "",
                     MAIL_FROM: envelope.mail_from or "",
                     RCPT_TO: ",".join(envelope.rcpt_tos)},
        )

    async def receive(self, request: WebhookRequest) -> str:
        """Store one message the relay handed over; the SMTP answer to its DATA."""
        engine = self._engine
        if engine is None:
            return "421 4.3.2 not ready to take mail; retry later"
        try:
            self.verify(request)
        except (ChannelDisabled, SignatureError) as exc:
            return f"550 5.7.1 {exc}"
        try:
            parsed = self._read(request)
            messages = self._messages(request, parsed)
            receipts = self._statuses(request, parsed)
        except Exception:  # the parser is lenient; a crash in it must not lose the mail
            log.exception("email_unreadable")
            return "451 4.3.0 the message could not be read; retry later"
        try:
            raw_id = await engine.blobs.put(request.body)
            for part in parsed.parts:
                if part.size <= self._max_attachment:
                    await engine.blobs.put(part.content)
            stored = await asyncio.gather(*(engine.submit(m) for m in messages))
            if receipts:
                await engine.record_receipts(receipts)
        except ShuttingDown:
            return "421 4.3.2 the service is shutting down; retry later"
        except (RuntimeError, sa.exc.SQLAlchemyError, OSError):
            log.exception("email_store_failed")
            return "451 4.3.0 the message could not be stored; retry later"
        if not messages:
            reason = self._automated(parsed) or "no sender address"
            metrics.EMAIL_IGNORED.labels("bounce" if parsed.bounces else "automated").inc()
            log.info("email_not_a_citizen_message", reason=reason,
                     message_id=parsed.message_id, raw_blob_id=raw_id,
                     bounced_replies=len(receipts))
            return "250 2.0.0 OK: taken, not a citizen's message"
        for m, s in zip(messages, stored, strict=True):
            if s.duplicate:
                metrics.MESSAGES_DUPLICATE.labels(CHANNEL).inc()
            log.info("email_stored", account=m.account, message_id=s.message_id,
                     tracking_number=s.tracking_number, duplicate=s.duplicate)
        numbers = ", ".join(sorted({s.tracking_number for s in stored}))
        return f"250 2.0.0 OK: stored as {numbers}"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        """Refuse relays not allowed and recipients that are not our mailboxes."""
        peer = str(session.peer[0]) if session.peer else ""
        if not self.peer_allowed(peer):
            return f"550 5.7.1 {peer} is not an allowed mail relay"
        if address.lower() not in self._mailboxes:
            return (f"550 5.1.1 <{address}>: no such mailbox here; this service takes "
                    "complaints at its configured addresses only")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        """250 only once the message is stored durably; 4xx makes the relay try again."""
        return await self.receive(self.request_of(session, envelope))

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the SMTP receiver listens, once started."""
        if self._server is None or not self._server.sockets:
            return None
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def start(self, engine: EngineAccess) -> None:
        """Read the mailboxes kept over IMAP, and listen for the relay if any other is set."""
        self._engine = engine
        for box in self._by_account.values():
            if box.imap is not None:
                self._pollers.append(asyncio.create_task(reconnecting(
                    f"email-imap:{box.address}", functools.partial(self._poll, box))))
        if all(box.imap is not None for box in self._by_account.values()):
            return
        # aiosmtpd would look the machine's name up (DNS) for every connection.
        self._helo = self._helo or await asyncio.to_thread(socket.getfqdn)
        loop = asyncio.get_running_loop()

        def receiver() -> _Receiver:
            protocol = _Receiver(self, data_size_limit=self._max_message, enable_SMTPUTF8=True,
                                 hostname=self._helo, ident="omnichannel")
            self._sessions.add(protocol)
            return protocol

        self._server = await loop.create_server(receiver, host=self._listen[0],
                                                port=self._listen[1])
        log.info("email_receiver_listening", address=self.address,
                 mailboxes=sorted(self._mailboxes))

    async def _poll(self, box: EmailMailbox) -> None:
        """One IMAP session: log in, then take unseen mail until the connection fails."""
        imap = box.imap
        assert imap is not None
        client = (aioimaplib.IMAP4_SSL(imap.host, imap.port, timeout=self._timeout_s)
                  if imap.security == "tls"
                  else aioimaplib.IMAP4(imap.host, imap.port, timeout=self._timeout_s))
        try:
            await client.wait_hello_from_server()
            _imap_ok(await client.login(imap.username, imap.password.get_secret_value()),
                     "login")
            _imap_ok(await client.select(imap.folder), f"select {imap.folder}")
            log.info("email_imap_reading", mailbox=box.address, folder=imap.folder)
            while True:
                await self._take_unseen(client, box)
                await asyncio.sleep(self._imap_poll_s)
        finally:
            with contextlib.suppress(Exception):
                await client.logout()

    async def _take_unseen(self, client: aioimaplib.IMAP4, box: EmailMailbox) -> None:
        """Store each unseen message, then mark it seen: one not stored stays unseen and is
        read again at the next look (a repeat is stored once)."""
        assert box.imap is not None
        found = _imap_ok(await client.uid_search("UNSEEN"), "search")
        for uid in (found[0].split() if found else []):
            fetched = _imap_ok(await client.uid("fetch", uid.decode(), "(BODY.PEEK[])"),
                               "fetch")
            body = next((bytes(line) for line in fetched if isinstance(line, bytearray)), None)
            if body is None:
                continue  # expunged meanwhile
            answer = await self.receive(WebhookRequest(
                method="IMAP", url=f"imap://{box.imap.host}/{box.imap.folder}", body=body,
                headers={RCPT_TO: box.address}))
            if not answer.startswith("250"):
                log.warning("email_imap_not_stored", mailbox=box.address, answer=answer)
                return
            _imap_ok(await client.uid("store", uid.decode(), "+FLAGS.SILENT (\\Seen)"),
                     "store")

    async def close(self) -> None:
        """Stop listening and reading."""
        await cancel_and_wait(self._pollers)
        self._pollers.clear()
        if self._server is not None:
            self._server.close()
            # A relay may hold an idle connection for minutes; the server would wait for it.
            for session in list(self._sessions):
                if session.transport is not None:
                    session.transport.close()
            await self._server.wait_closed()
            self._server = None

    # -- sending ---------------------------------------------------------------------------

    def serves(self, channel: str, account: str) -> bool:
        """Replies of conversations with one of our mailboxes."""
        return channel == CHANNEL and account in self._by_account

    def bound_queue(self, account: str) -> str | None:
        """An OPD's own mailbox routes its mail there."""
        box = self._by_account.get(account)
        return box.opd if box else None

    async def _context(self, conversation_id: int) -> tuple[str, str | None, list[str]]:
        """The citizen's latest subject, Message-ID and references in the conversation."""
        engine = self._engine
        if engine is None or engine.citizen_messages is None:
            return "", None, []
        for row in await engine.citizen_messages(conversation_id):
            raw = row.get("raw") or {}
            if row.get("external_id") and "message_id" in raw:
                return (str(raw.get("subject") or ""), str(raw["message_id"]),
                        [str(r) for r in raw.get("references") or []])
        return "", None, []

    async def send(self, message: Outgoing) -> str | None:
        """The reply, threaded under the citizen's last mail; returns its Message-ID."""
        box = self._by_account.get(message.account)
        if box is None:
            raise DeliveryError(f"no e-mail mailbox is configured for {message.account!r}",
                                retryable=False)
        sender = box.from_address or box.address
        subject, in_reply_to, references = await self._context(message.conversation_id)
        message_id = message_id_for(message.tracking_number, message.message_id,
                                    message.recipient, sender.rsplit("@", 1)[1])
        mail = compose_reply(
            sender=sender, sender_name=box.from_name, recipient=message.recipient,
            subject=reply_subject(subject, message.tracking_number), text=message.text,
            message_id=message_id, in_reply_to=in_reply_to,
            references=references_for(in_reply_to, references), files=message.files,
            automatic=message.author == ENGINE_AUTHOR,
        )
        tls: dict[str, Any] = {"use_tls": self._security == "tls",
                               "start_tls": {"starttls": True if self._username else None,
                                             "tls": False, "none": False}[self._security]}
        try:
            await aiosmtplib.send(
                mail, sender=sender, recipients=[message.recipient], hostname=self._relay[0],
                port=self._relay[1], username=self._username, password=self._password,
                local_hostname=self._helo, timeout=self._timeout_s, **tls,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise DeliveryError(
                "; ".join(f"{r.code} {r.message}" for r in exc.recipients),
                retryable=all(400 <= c < 500 for c in codes)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(f"the mail relay answered {exc.code} {exc.message}",
                                retryable=400 <= exc.code < 500) from exc
        except aiosmtplib.SMTPNotSupported as exc:
            raise DeliveryError(f"the mail relay does not support it: {exc}",
                                retryable=False) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"the mail relay is unreachable or failing: {exc!r}",
                                retryable=True) from exc
        return message_id

    async def fetch(self, account: str, url: str, *, max_bytes: int) -> Download:
        """A part over the size limit, read back from the raw message kept in the file store."""
        engine = self._engine
        raw_id, _, index = url.removeprefix(PART_PREFIX).partition("/")
        path = engine.blobs.path(raw_id) if engine is not None else None
        if not url.startswith(PART_PREFIX) or path is None or not index.isdigit():
            raise FetchError(f"no stored e-mail holds {url!r}", retryable=False)
        parsed = parse_email(await asyncio.to_thread(path.read_bytes))
        if int(index) >= len(parsed.parts):
            raise FetchError(f"the e-mail has no part {index}", retryable=False)
        part = parsed.parts[int(index)]
        if part.size > max_bytes:
            raise TooLarge(f"{part.size} bytes, over the {max_bytes} byte limit")
        return Download(content=part.content, content_type=part.content_type,
                        filename=part.filename)


def _now() -> datetime:
    return datetime.now(UTC)


def _imap_ok(response: aioimaplib.Response, what: str) -> list[Any]:
    """The lines of a successful IMAP answer; an error ends the session (it reconnects)."""
    if response.result != "OK":
        raise ConnectionError(f"IMAP {what} failed: {response.result} {response.lines!r}")
    return list(response.lines)
