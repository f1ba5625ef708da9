"""An e-mail as the conversation model needs: text, files, threading, whether a robot sent it.

Pure functions over the message's bytes, parsed with the standard library's `email` package
(`policy.default`). Real mail is messy: unknown charsets, missing Content-Type, several text
parts, HTML only, header defects; none of it is a reason to refuse a citizen's report.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import BaseHeader
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

import nh3
from mailparser_reply.parser import EmailMessage as ReplyText

#: Block-level tags kept through sanitising only to become line breaks.
_BLOCK_TAGS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
                         "blockquote", "table", "ul", "ol", "pre", "hr"})
#: Tags that end a line, and tags that end a paragraph; a run of them makes one break.
_LINE_TAG = re.compile(r"</?(?:div|li|tr)\s*/?>")
_PARAGRAPH_TAG = re.compile(r"</?(?:p|h[1-6]|blockquote|table|ul|ol|pre|hr)\s*/?>")
_BREAK_RUN = re.compile(r"[\x01\x02\s]*[\x01\x02][\x01\x02\s]*")
#: Values of `Precedence` that mark mail no person wrote to us.
_BULK = frozenset({"bulk", "junk", "list", "auto_reply"})
#: Sender mailboxes of delivery reports.
_DAEMONS = re.compile(r"^(mailer-daemon|postmaster)@", re.IGNORECASE)
#: Quoted-history introductions mail-parser-reply does not know (Indonesian clients) and
#: forwarded/original-message separators.
_QUOTE_HEADERS = (
    re.compile(r"^[ \t]*(?:Pada|Pd\.?)\b[^\n]{0,300}(?:\n[^\n]{0,300})?\bmenulis\s*:\s*$",
               re.MULTILINE | re.IGNORECASE),
    re.compile(r"^[ \t]*-{2,}\s*(?:Pesan Asli|Pesan Terusan|Original Message|Forwarded message)"
               r"\s*-{2,}\s*$", re.MULTILINE | re.IGNORECASE),
)
#: A phone's one-line signature in Indonesian ("Dikirim dari iPhone saya").
_SENT_FROM = re.compile(r"\n[ \t]*Dikirim dari [^\n]{1,60}\s*$", re.IGNORECASE)
#: Longest provider id the store keeps; longer Message-IDs are kept as their digest.
_MAX_ID = 200


@dataclass(frozen=True, slots=True)
class Part:
    """A file in the message: an attachment, an inline image, an attached e-mail."""

    content: bytes
    content_type: str
    filename: str | None
    inline: bool
    content_id: str | None = None

    @property
    def size(self) -> int:
        """Decoded size in bytes."""
        return len(self.content)

    @property
    def blob_id(self) -> str:
        """The id the content-addressed file store gives these bytes."""
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True, slots=True)
class Bounce:
    """A delivery report's word on one of our messages."""

    #: Message-ID of the returned message (ours, if it was a reply of ours), without `<>`.
    message_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ParsedEmail:
    """What the engine keeps of one e-mail."""

    message_id: str
    sender_address: str
    sender_name: str | None
    subject: str
    sent_at: datetime | None
    #: The citizen's own words: quoted history and signature removed.
    text: str
    #: The whole body as text, as the citizen's client sent it.
    original_text: str
    html_only: bool
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    parts: tuple[Part, ...]
    headers: tuple[tuple[str, str], ...]
    #: Why no person wrote it (auto-reply, bounce, mailing list), or None for a person's mail.
    automated: str | None = None
    bounces: tuple[Bounce, ...] = ()
    defects: tuple[str, ...] = field(default_factory=tuple)

    def thread_hint(self, tracking_prefix: str) -> str | None:
        """The tracking number this mail answers: from our Message-IDs it refers to, else the
        subject's `[AMB-2026-000123]`."""
        ours = re.compile(rf"(?:^|[.<])({re.escape(tracking_prefix)}-\d{{4}}-\d{{6,}})\.\d+\.")
        for ref in (*self.in_reply_to, *reversed(self.references)):
            found = ours.search(ref)
            if found:
                return found.group(1)
        found = re.search(rf"\[({re.escape(tracking_prefix)}-\d{{4}}-\d{{6,}})\]", self.subject)
        return found.group(1) if found else None


def parse_email(raw: bytes, *, envelope_sender: str | None = None) -> ParsedEmail:
    """Read one message's bytes; `envelope_sender` is SMTP's MAIL FROM (`""` for a bounce).

    The standard library's modern header parser raises on some malformed headers; such mail
    is read again with its legacy, lenient one, and failing that kept as plain text.
    """
    for mode in (policy.default, policy.compat32):
        try:
            return _parse(raw, mode, envelope_sender)
        except Exception:  # noqa: S112 - the next, more lenient reading follows
            continue
    # Its headers alone, leniently, and the rest as text.
    head = BytesParser(_class=EmailMessage, policy=policy.compat32).parsebytes(
        raw, headersonly=True)
    assert isinstance(head, EmailMessage)
    _, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    text = _clean(body.decode("utf-8", errors="replace")).strip()
    name, address = _sender(head)
    try:
        automated = automated_reason(head, envelope_sender)
    except Exception:
        automated = automated_reason(EmailMessage(), envelope_sender)
    return ParsedEmail(
        message_id=_message_id(head, raw), sender_address=address, sender_name=name,
        subject=_one_line(_header(head, "Subject")), sent_at=_date(head), text=text,
        original_text=text, html_only=False,
        in_reply_to=tuple(_ids(_header(head, "In-Reply-To"))),
        references=tuple(_ids(_header(head, "References"))), parts=(),
        headers=tuple((k, _clean(_one_line(v))) for k, v in _safe_items(head)),
        automated=automated, defects=("Unreadable",))


def _parse(raw: bytes, mode: policy.Policy, envelope_sender: str | None) -> ParsedEmail:
    message = BytesParser(_class=EmailMessage, policy=mode).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    texts: list[tuple[str, str]] = []
    parts: list[Part] = []
    _walk(message, texts, parts)
    plain = [t for kind, t in texts if kind == "text/plain"]
    body = "\n\n".join((t if kind == "text/plain" else html_to_text(t)).strip()
                       for kind, t in texts)
    body = _clean(body.replace("\r\n", "\n")).strip()
    sender_name, sender_address = _sender(message)
    return ParsedEmail(
        message_id=_message_id(message, raw),
        sender_address=sender_address,
        sender_name=sender_name,
        subject=_one_line(_header(message, "Subject")),
        sent_at=_date(message),
        text=strip_reply(body),
        original_text=body,
        html_only=bool(texts) and not plain,
        in_reply_to=tuple(_ids(_header(message, "In-Reply-To"))),
        references=tuple(_ids(_header(message, "References"))),
        parts=tuple(parts),
        headers=tuple((k, _clean(_one_line(v))) for k, v in _safe_items(message)),
        automated=automated_reason(message, envelope_sender),
        bounces=tuple(_bounces(message)),
        defects=tuple(type(d).__name__ for d in message.defects),
    )


def automated_reason(message: EmailMessage, envelope_sender: str | None = None) -> str | None:
    """Why a robot sent `message` (RFC 3834 and list headers, empty return path), or None."""
    auto = _header(message, "Auto-Submitted").strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {auto}"
    precedence = _header(message, "Precedence").strip().lower()
    if precedence in _BULK:
        return f"Precedence: {precedence}"
    for name in ("List-Id", "List-Unsubscribe", "X-Autoreply", "X-Autorespond"):
        if message.get(name) is not None:
            return f"{name} header"
    if envelope_sender == "" or _header(message, "Return-Path").strip() == "<>":
        return "empty return path (a delivery report)"
    if message.get_content_type() == "multipart/report":
        return "a delivery or disposition report"
    if _DAEMONS.match(_sender(message)[1]):
        return "sent by a mail system"
    return None


def html_to_text(markup: str) -> str:
    """Safe plain text of an HTML body: the sanitiser drops scripts, styles and every tag, and
    block elements become line breaks."""
    cleaned = nh3.clean(markup, tags=set(_BLOCK_TAGS), attributes={},
                        clean_content_tags={"script", "style", "title", "head"},
                        strip_comments=True, link_rel=None)
    # Source line breaks are spaces in HTML; only block elements break lines.
    cleaned = re.sub(r"\s+", " ", cleaned.replace("\x01", "").replace("\x02", ""))
    cleaned = re.sub(r"<br\s*/?>", "\n", cleaned)
    cleaned = _PARAGRAPH_TAG.sub("\x02", _LINE_TAG.sub("\x01", cleaned))
    cleaned = _BREAK_RUN.sub(lambda run: "\n\n" if "\x02" in run.group() else "\n", cleaned)
    text = html.unescape(cleaned).replace("\xa0", " ")
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def strip_reply(text: str) -> str:
    """The newest part of a reply: quoted history and signature removed (the whole text when
    nothing would be left)."""
    cut = text
    for pattern in _QUOTE_HEADERS:
        found = pattern.search(cut)
        if found and found.start() > 0:
            cut = cut[:found.start()]
    # Citizens list things with hyphens; only `--` starts a signature.
    replies = ReplyText(text=cut, languages=["en"], keep_hyphen_lists=True).read().replies
    newest = replies[0].body if replies else cut
    lines = newest.split("\n")
    # A block of `>` lines at the end is the quoted message a client put below the reply.
    while lines and (lines[-1].startswith(">") or not lines[-1].strip()):
        lines.pop()
    newest = _SENT_FROM.sub("", "\n".join(lines)).strip()
    return newest or text.strip()


def _walk(part: EmailMessage, texts: list[tuple[str, str]], parts: list[Part]) -> None:
    """Collect body texts and files in order; of alternatives, the plain one's text."""
    ctype = part.get_content_type()
    if ctype.startswith("message/"):
        parts.append(_file(part, default_name="attached.eml"))
        return
    if part.is_multipart():
        subparts = [p for p in part.iter_parts() if isinstance(p, EmailMessage)]
        if ctype == "multipart/alternative" and subparts:
            chosen = min(subparts, key=_preference)
            for sub in subparts:
                # The other alternatives' text is the same; their inline images are not.
                _walk(sub, texts if sub is chosen else [], parts)
        else:
            for sub in subparts:
                _walk(sub, texts, parts)
        return
    if ctype in ("text/plain", "text/html") and part.get_content_disposition() != "attachment" \
            and not part.get_filename():
        texts.append((ctype, _text_of(part)))
        return
    parts.append(_file(part))


def _preference(part: EmailMessage) -> int:
    """Plain text first, then a multipart holding plain text, then anything (HTML)."""
    if part.get_content_type() == "text/plain":
        return 0
    if part.is_multipart() and any(p.get_content_type() == "text/plain" for p in part.walk()):
        return 1
    return 2


def _text_of(part: EmailMessage) -> str:
    """A text part's content, whatever its charset claims."""
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    charset = part.get_param("charset")
    if isinstance(charset, str):
        try:
            return data.decode(charset.strip().strip('"'), errors="replace")
        except LookupError:
            pass  # an unknown charset (`unknown-8bit`): guess below
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _file(part: EmailMessage, default_name: str | None = None) -> Part:
    if part.get_content_type().startswith("message/"):
        inner = part.get_payload()
        first = inner[0] if isinstance(inner, list) and inner else part
        content = first.as_bytes(policy=policy.SMTP) if isinstance(first, Message) else b""
    else:
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
    content_id = part.get("Content-ID")
    return Part(
        content=content,
        content_type=part.get_content_type(),
        filename=_filename(part.get_filename()) or default_name,
        inline=part.get_content_disposition() == "inline" or (
            content_id is not None and part.get_content_disposition() != "attachment"),
        content_id=str(content_id).strip("<> ") if content_id else None,
    )


def _filename(name: str | None) -> str | None:
    """A file name with no path and no control characters."""
    if not name:
        return None
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:200] or None


def _header(message: EmailMessage, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:
        # A header the policy cannot parse: take its raw text instead.
        value = next((v for k, v in message.raw_items() if k.lower() == name.lower()), None)
    return "" if value is None else _decoded(value)


def _decoded(value: Any) -> str:
    """A header's text; the legacy policy leaves RFC 2047 encoded words to decode."""
    if isinstance(value, BaseHeader):
        return str(value)
    try:
        return str(make_header(decode_header(str(value))))
    except Exception:
        return str(value)


def _safe_items(message: EmailMessage) -> list[tuple[str, str]]:
    out = []
    for key, raw in message.raw_items():
        try:
            value = _decoded(message.policy.header_fetch_parse(key, raw))
        except Exception:
            value = _decoded(raw)
        out.append((key, value))
    return out


def _sender(message: EmailMessage) -> tuple[str | None, str]:
    for header in ("From", "Sender", "Return-Path"):
        pairs = getaddresses([_header(message, header)])
        for name, address in pairs:
            if "@" in address:
                return (_one_line(name) or None), address.strip().lower()
    return None, ""


def _message_id(message: EmailMessage, raw: bytes) -> str:
    """The Message-ID without brackets; one made of the bytes' digest when there is none, so a
    repeated delivery is still recognised."""
    found = _ids(_header(message, "Message-ID"))
    value = found[0] if found else ""
    if not value or len(value) > _MAX_ID:
        basis = value.encode() if value else raw
        return "sha256-" + hashlib.sha256(basis).hexdigest() + "@omnichannel"
    return value


def _ids(value: str) -> list[str]:
    """Message ids in an In-Reply-To/References/Message-ID header, without brackets."""
    found = re.findall(r"<([^<>\s]+)>", value)
    if not found and value.strip() and " " not in value.strip():
        found = [value.strip()]  # some clients leave the brackets out
    return found


def _date(message: EmailMessage) -> datetime | None:
    value = _header(message, "Date")
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _one_line(value: str) -> str:
    """An encoded header may carry line breaks back out; a reply built from it must not."""
    return re.sub(r"\s+", " ", value).strip()


def _clean(text: str) -> str:
    # PostgreSQL text refuses NUL; the raw message keeps the original.
    return text.replace("\x00", "")


def _bounces(message: EmailMessage) -> list[Bounce]:
    """Failed recipients of a delivery report (RFC 3464), with the returned message's id."""
    if message.get_content_type() != "multipart/report" or \
            message.get_param("report-type") != "delivery-status":
        return []
    reasons: list[str] = []
    returned: str | None = None
    for part in message.walk():
        ctype = part.get_content_type()
        payload = part.get_payload()
        if ctype == "message/delivery-status" and isinstance(payload, list):
            for block in payload:
                if isinstance(block, Message) and \
                        str(block.get("Action", "")).strip().lower() == "failed":
                    reasons.append(" ".join(filter(None, (
                        str(block.get("Status", "")).strip(),
                        str(block.get("Diagnostic-Code", "")).strip()))) or "failed")
        elif ctype in ("message/rfc822", "text/rfc822-headers") and returned is None:
            if isinstance(payload, list):
                inner = payload[0] if payload else None
                header = str(inner.get("Message-ID", "")) if isinstance(inner, Message) else ""
            else:
                data = part.get_payload(decode=True)
                found = re.search(rb"^Message-ID:\s*(<[^>]+>)",
                                  data if isinstance(data, bytes) else b"",
                                  re.IGNORECASE | re.MULTILINE)
                header = found.group(1).decode(errors="replace") if found else ""
            ids = _ids(header)
            returned = ids[0] if ids else None
    if returned is None or not reasons:
        return []
    return [Bounce(message_id=returned, reason="; ".join(reasons))]
