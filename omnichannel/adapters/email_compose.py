"""An agent's reply as an e-mail that threads under the citizen's: pure, no I/O."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

from omnichannel.delivery import OutgoingFile

#: Reply and forward prefixes of common clients, English and Indonesian, dropped before ours.
_PREFIXES = re.compile(r"^(?:\s*(?:re|fw|fwd|aw|bls|balas|tr|sv)\s*(?:\[\d+\])?\s*:\s*)+",
                       re.IGNORECASE)
#: How many earlier ids `References` keeps (the first and the latest, as RFC 5322 advises).
_MAX_REFERENCES = 10


def message_id_for(tracking_number: str, message_id: int, recipient: str, domain: str) -> str:
    """Our Message-ID of a reply, without brackets: it names the tracking number, so the
    citizen's answer threads even when their client rewrites the subject. The same reply gets
    the same id on every attempt, so a client shows a repeated send once."""
    token = hashlib.sha256(f"{tracking_number}\0{message_id}\0{recipient}".encode()).hexdigest()
    return f"{tracking_number}.{message_id}.{token[:16]}@{domain}"


def reply_subject(citizen_subject: str, tracking_number: str) -> str:
    """`Re: <the citizen's subject> [AMB-2026-000123]`, prefixes and earlier tags folded."""
    base = re.sub(r"\s+", " ", citizen_subject).strip()
    base = _PREFIXES.sub("", base)
    base = base.replace(f"[{tracking_number}]", "").strip()
    base = re.sub(r"\s+", " ", base)
    return f"Re: {base} [{tracking_number}]" if base else f"[{tracking_number}]"


def references_for(in_reply_to: str | None, earlier: Sequence[str]) -> list[str]:
    """`References` of a reply: the citizen's references, then their message's own id."""
    chain = [r for r in earlier if r != in_reply_to]
    if in_reply_to:
        chain.append(in_reply_to)
    if len(chain) > _MAX_REFERENCES:
        chain = [chain[0], *chain[-(_MAX_REFERENCES - 1):]]
    return chain


def compose_reply(
    *, sender: str, sender_name: str, recipient: str, subject: str, text: str,
    message_id: str, in_reply_to: str | None = None, references: Sequence[str] = (),
    files: Sequence[OutgoingFile] = (), when: datetime | None = None, automatic: bool = False,
) -> EmailMessage:
    """Plain text with an HTML alternative (the text escaped) and the files attached;
    `automatic` marks the engine's own answers (RFC 3834), which other robots must not answer."""
    mail = EmailMessage(policy=policy.SMTP)
    mail["From"] = formataddr((sender_name, sender)) if sender_name else sender
    mail["To"] = recipient
    mail["Subject"] = subject
    mail["Date"] = format_datetime(when or datetime.now(UTC))
    mail["Message-ID"] = f"<{message_id}>"
    if in_reply_to:
        mail["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        mail["References"] = " ".join(f"<{r}>" for r in references)
    if automatic:
        mail["Auto-Submitted"] = "auto-replied"
    # Ask Exchange-style servers not to answer our replies with out-of-office notes.
    mail["X-Auto-Response-Suppress"] = "OOF, AutoReply"
    mail.set_content(text)
    escaped = html.escape(text).replace("\n", "<br>\n")
    mail.add_alternative(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>"
        f"<body><div>{escaped}</div></body></html>\n", subtype="html")
    for file in files:
        maintype, _, subtype = file.content_type.partition("/")
        mail.add_attachment(file.content, maintype=maintype or "application",
                            subtype=subtype or "octet-stream",
                            filename=file.filename or _default_name(file.content_type))
    return mail


def _default_name(content_type: str) -> str:
    subtype = content_type.partition("/")[2].split(";")[0].strip() or "bin"
    return f"lampiran.{re.sub(r'[^a-z0-9]+', '', subtype.lower())[:10] or 'bin'}"
