"""E-mail: parsing real-world mail, composing threaded replies, sending them through a real SMTP
server, and what the receiver answers the relay."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from omnichannel.adapters.base import ChannelDisabled, EngineAccess, SignatureError, TooLarge
from omnichannel.adapters.email import MAIL_FROM, RCPT_TO, EmailAdapter
from omnichannel.adapters.email_compose import (
    compose_reply,
    message_id_for,
    references_for,
    reply_subject,
)
from omnichannel.adapters.email_parse import html_to_text, parse_email, strip_reply
from omnichannel.blobs import BlobStore
from omnichannel.bus.work import LocalWorkQueues
from omnichannel.delivery import Deliverer, DeliveryError, Outgoing, OutgoingFile
from omnichannel.model import DeliveryStatus, InboundMessage, RouteDecision
from omnichannel.settings import EmailImap, EmailMailbox
from omnichannel.store import outbound
from omnichannel.store.database import create_database
from omnichannel.store.ingest import Ingestor, Stored
from tests.adapters.imap import dovecot
from tests.adapters.kits import EMAIL_CITIZEN, EMAIL_MAILBOX, email_message, email_request
from tests.adapters.smtp import SmtpSink, smtp_sink
from tests.conftest import new_database_url

CRLF = b"\r\n"


def mail(*lines: str, body: bytes = b"") -> bytes:
    """Raw message bytes with CRLF line endings, as SMTP delivers them."""
    return CRLF.join(line.encode() for line in lines) + CRLF + CRLF + body


def adapter(**kw: Any) -> EmailAdapter:
    boxes = kw.pop("mailboxes", [EmailMailbox(address=EMAIL_MAILBOX, account="lapor",
                                              from_name="Lapor Ambon")])
    kw.setdefault("listen_port", 0)  # a free port, for the tests that start the receiver
    return EmailAdapter(boxes, **kw)


# -- parsing ---------------------------------------------------------------------------------


def test_iso_8859_1_quoted_printable_body_is_decoded() -> None:
    parsed = parse_email(mail(
        "From: =?iso-8859-1?q?Jos=E9_Pattinama?= <Jose@Example.org>",
        "Subject: =?iso-8859-1?q?Sampah_di_Caf=E9?=", "Message-ID: <qp@example.org>",
        "Content-Type: text/plain; charset=iso-8859-1",
        "Content-Transfer-Encoding: quoted-printable",
        body=b"Sampah di depan caf=E9 sudah seminggu, bau sekali =\r\nsampai ke jalan."))
    assert parsed.text == "Sampah di depan café sudah seminggu, bau sekali sampai ke jalan."
    assert (parsed.sender_name, parsed.sender_address) == ("José Pattinama", "jose@example.org")
    assert parsed.subject == "Sampah di Café"
    assert parsed.message_id == "qp@example.org"


def test_html_only_mail_becomes_safe_text() -> None:
    html = ("<html><head><style>p{color:red}</style><title>x</title></head><body>"
            "<p>Lampu jalan <b>mati</b>&nbsp;di Waihaong</p><div>sejak&nbsp;Senin<br>malam"
            "</div><script>alert('x')</script><img src=x onerror=alert(1)>"
            "<p>&lt;script&gt; bukan kode</p></body></html>")
    parsed = parse_email(mail("From: a@example.org", "Message-ID: <h@example.org>",
                              "Content-Type: text/html; charset=utf-8",
                              "Content-Transfer-Encoding: base64",
                              body=__import__("base64").encodebytes(html.encode())))
    assert parsed.html_only
    assert parsed.text == ("Lampu jalan mati di Waihaong\n\nsejak Senin\nmalam\n\n"
                           "<script> bukan kode")
    assert "alert" not in parsed.text and "color" not in parsed.text


def test_html_to_text_drops_every_tag_and_keeps_lines() -> None:
    assert html_to_text("<ul><li>satu</li><li>dua</li></ul><a href='javascript:x'>tiga</a>") \
        == "satu\ndua\n\ntiga"


def test_multipart_alternative_takes_the_plain_text_and_keeps_inline_images() -> None:
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = "Rina <rina@example.org>"
    message["Message-ID"] = "<alt@example.org>"
    message.set_content("Jalan berlubang di Passo.")
    message.add_alternative("<p>Jalan berlubang di <b>Passo</b>.</p><img src='cid:foto1'>",
                            subtype="html")
    html_part = message.get_payload()[1]
    html_part.add_related(b"\x89PNG photo", maintype="image", subtype="png", cid="<foto1>")
    message.add_attachment(b"%PDF-1.4 surat", maintype="application", subtype="pdf",
                           filename="surat.pdf")
    parsed = parse_email(message.as_bytes())
    assert parsed.text == "Jalan berlubang di Passo."
    image, pdf = parsed.parts
    assert (image.content_type, image.inline, image.content_id) == ("image/png", True, "foto1")
    assert (pdf.content_type, pdf.filename, pdf.inline, pdf.size) == (
        "application/pdf", "surat.pdf", False, len(b"%PDF-1.4 surat"))


def test_unknown_charset_and_missing_content_type_do_not_lose_the_text() -> None:
    unknown = parse_email(mail("From: a@example.org", "Content-Type: text/plain; "
                               "charset=unknown-8bit", body="Air PDAM mati ☹".encode()))
    assert unknown.text == "Air PDAM mati ☹"
    bare = parse_email(mail("From: a@example.org", body="Banjir di Batu Gajah — tolong".encode()))
    assert bare.text == "Banjir di Batu Gajah — tolong"
    latin = parse_email(mail("From: a@example.org", body="Caf\xe9".encode("latin-1")))
    assert latin.text == "Café"


def test_several_text_parts_are_all_kept() -> None:
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = "a@example.org"
    message.set_content("Bagian pertama.")
    message.add_attachment(b"\xff\xd8 jpeg", maintype="image", subtype="jpeg",
                           disposition="inline")
    message.add_attachment("Bagian kedua.", disposition="inline")
    parsed = parse_email(message.as_bytes())
    assert parsed.text == "Bagian pertama.\n\nBagian kedua."
    assert [p.content_type for p in parsed.parts] == ["image/jpeg"]


def test_lone_attachment_and_attached_email_are_files() -> None:
    pdf = parse_email(mail("From: a@example.org", "Content-Type: application/pdf",
                           "Content-Disposition: attachment; filename=\"../../etc/lapor.pdf\"",
                           "Content-Transfer-Encoding: base64", body=b"JVBERi0xLjQ="))
    [part] = pdf.parts
    assert (part.filename, part.content) == ("lapor.pdf", b"%PDF-1.4")
    forwarded = EmailMessage(policy=policy.SMTP)
    forwarded["From"] = "a@example.org"
    forwarded.set_content("Lihat surat terlampir.")
    inner = EmailMessage()
    inner["Subject"] = "Surat asli"
    inner.set_content("Isi surat")
    forwarded.add_attachment(inner)
    parsed = parse_email(forwarded.as_bytes())
    assert parsed.text == "Lihat surat terlampir."
    [eml] = parsed.parts
    assert eml.content_type == "message/rfc822" and b"Surat asli" in eml.content


@pytest.mark.parametrize(("body", "expected"), [
    ("Masih rusak.\n\nOn Mon, 23 Nov 2026 at 10:00, Lapor <lapor@ambon.go.id> wrote:\n"
     "> Terima kasih\n> AMB-2026-000123\n", "Masih rusak."),
    ("Masih belum diangkut.\n\nPada tanggal Sen, 23 Nov 2026 pukul 10.00 Lapor Ambon\n"
     "<lapor@ambon.go.id> menulis:\n\n> Terima kasih\n", "Masih belum diangkut."),
    ("Sudah diperbaiki, terima kasih.\n\n> Petugas menuju lokasi\n>\n> Lapor Ambon\n",
     "Sudah diperbaiki, terima kasih."),
    ("Ada kabel putus di Jl. Sultan Babullah.\n-- \nRina Latuconsina\n0812 3456 7890\n",
     "Ada kabel putus di Jl. Sultan Babullah."),
    ("Ada kabel putus.\n\nDikirim dari iPhone saya\n", "Ada kabel putus."),
    ("Ada kabel putus.\n\nSent from my iPhone\n", "Ada kabel putus."),
    ("Ya.\n\n-----Pesan Asli-----\nDari: Lapor\nSubjek: laporan\n", "Ya."),
    ("Jalan rusak di Passo:\n- lubang besar\n- air tergenang\n",
     "Jalan rusak di Passo:\n- lubang besar\n- air tergenang"),
    # Nothing but a quotation: the whole text is kept rather than nothing.
    ("> Terima kasih\n", "> Terima kasih"),
])
def test_quoted_history_and_signatures_are_stripped(body: str, expected: str) -> None:
    assert strip_reply(body) == expected
    parsed = parse_email(mail("From: a@example.org",
                              "Content-Type: text/plain; charset=utf-8", body=body.encode()))
    assert parsed.text == expected
    assert parsed.original_text == body.strip()


@pytest.mark.parametrize(("headers", "envelope", "automated"), [
    (["Auto-Submitted: auto-replied"], "a@example.org", True),
    (["Auto-Submitted: no"], "a@example.org", False),
    (["Precedence: bulk"], "a@example.org", True),
    (["List-Id: <warga.lists.example.org>"], "a@example.org", True),
    (["X-Autoreply: yes"], "a@example.org", True),
    ([], "", True),
    (["Return-Path: <>"], None, True),
    ([], "a@example.org", False),
])
def test_mail_from_robots_is_recognised(headers: list[str], envelope: str | None,
                                        automated: bool) -> None:
    parsed = parse_email(mail("From: a@example.org", *headers, body=b"Saya sedang cuti."),
                         envelope_sender=envelope)
    assert (parsed.automated is not None) is automated


def test_subject_with_encoded_line_breaks_stays_one_line() -> None:
    parsed = parse_email(mail("From: a@example.org",
                              "Subject: =?utf-8?q?Jalan_rusak=0D=0ABcc:_x@evil.example?="))
    assert "\n" not in parsed.subject and "\r" not in parsed.subject
    assert "\n" not in reply_subject(parsed.subject, "AMB-2026-000001")


def test_thread_hint_from_our_message_ids_then_the_subject() -> None:
    ours = message_id_for("AMB-2026-000123", 42, EMAIL_CITIZEN, "ambon.go.id")
    by_reference = parse_email(mail("From: a@example.org", "Subject: Re: hal lain",
                                    f"In-Reply-To: <{ours}>"))
    assert by_reference.thread_hint("AMB") == "AMB-2026-000123"
    by_references = parse_email(mail("From: a@example.org", "Subject: no tag",
                                     f"References: <x@example.org> <{ours}>"))
    assert by_references.thread_hint("AMB") == "AMB-2026-000123"
    by_subject = parse_email(mail("From: a@example.org",
                                  "Subject: Re: Sampah [AMB-2026-000077]"))
    assert by_subject.thread_hint("AMB") == "AMB-2026-000077"
    assert by_subject.thread_hint("XYZ") is None
    unrelated = parse_email(mail("From: a@example.org", "Subject: AMB-2026-000077 tanpa kurung",
                                 "In-Reply-To: <AMB-2026-000001@elsewhere.example>"))
    assert unrelated.thread_hint("AMB") is None


def test_missing_message_id_is_made_from_the_bytes() -> None:
    raw = mail("From: a@example.org", body=b"Tanpa Message-ID")
    first, again = parse_email(raw), parse_email(raw)
    assert first.message_id == again.message_id
    assert first.message_id.startswith("sha256-")
    assert parse_email(raw + b" lain").message_id != first.message_id


def test_nul_bytes_do_not_reach_the_text() -> None:
    parsed = parse_email(mail("From: a@example.org", body=b"Jalan\x00 rusak"))
    assert parsed.text == "Jalan rusak"


def test_a_delivery_report_names_our_failed_reply() -> None:
    ours = message_id_for("AMB-2026-000009", 5, EMAIL_CITIZEN, "ambon.go.id")
    report = mail(
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>",
        "To: lapor@ambon.go.id", "Subject: Undelivered Mail Returned to Sender",
        "Message-ID: <bounce-1@mx.example.org>", "Auto-Submitted: auto-replied",
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"',
        body=CRLF.join([
            b"--b", b"Content-Type: text/plain", b"", b"Your message could not be delivered.",
            b"--b", b"Content-Type: message/delivery-status", b"",
            b"Reporting-MTA: dns; mx.example.org", b"",
            b"Final-Recipient: rfc822; rina@example.org", b"Action: failed",
            b"Status: 5.1.1", b"Diagnostic-Code: smtp; 550 5.1.1 user unknown", b"",
            b"--b", b"Content-Type: text/rfc822-headers", b"",
            b"From: lapor@ambon.go.id", f"Message-ID: <{ours}>".encode(), b"",
            b"--b--", b""]))
    parsed = parse_email(report, envelope_sender="")
    assert parsed.automated is not None
    [bounce] = parsed.bounces
    assert bounce.message_id == ours
    assert "5.1.1" in bounce.reason and "user unknown" in bounce.reason
    email = adapter()
    request = email_request(report, mail_from="")
    assert email.parse(request) == []
    [status] = email.statuses(request)
    assert (status.external_id, status.status, status.account) == (
        ours, DeliveryStatus.FAILED, "lapor")


# -- the adapter's view of what the relay hands over ----------------------------------------


def test_one_message_per_mailbox_it_was_sent_to() -> None:
    email = adapter(mailboxes=[EmailMailbox(address="lapor@ambon.go.id"),
                               EmailMailbox(address="pupr@ambon.go.id", opd="dinas-pupr")])
    request = email_request(email_message("two@example.org", "Jalan rusak", "Di Passo."),
                            rcpt="lapor@ambon.go.id,PUPR@ambon.go.id,other@ambon.go.id")
    email.verify(request)
    messages = email.parse(request)
    assert [m.account for m in messages] == ["lapor@ambon.go.id", "pupr@ambon.go.id"]
    assert email.bound_queue("pupr@ambon.go.id") == "dinas-pupr"
    assert email.bound_queue("lapor@ambon.go.id") is None


def test_without_mailboxes_the_channel_is_disabled() -> None:
    with pytest.raises(ChannelDisabled):
        adapter(mailboxes=[]).verify(email_request(b"From: a@example.org\r\n\r\nx"))


def test_mail_from_our_own_address_is_not_a_citizens() -> None:
    request = email_request(email_message("loop@example.org", "Re: x", "loop",
                                          sender=EMAIL_MAILBOX))
    assert adapter().parse(request) == []


def test_subject_joins_a_new_reports_text_but_not_a_replys() -> None:
    email = adapter()
    [new] = email.parse(email_request(email_message("n@example.org", "Sampah menumpuk", "Tolong")))
    assert new.text == "Sampah menumpuk\n\nTolong" and new.thread_hint is None
    [reply] = email.parse(email_request(email_message("r@example.org",
                                                      "Re: Sampah [AMB-2026-000003]", "Belum")))
    assert reply.text == "Belum" and reply.thread_hint == "AMB-2026-000003"


def test_files_get_blob_ids_and_oversized_ones_a_note() -> None:
    email = adapter(max_attachment_bytes=20)
    raw = email_message("f@example.org", "Foto", "Dua foto", files=1)
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    message.add_attachment(b"x" * 100, maintype="video", subtype="mp4", filename="video.mp4")
    request = email_request(message.as_bytes())
    [parsed] = email.parse(request)
    small, big = parsed.attachments
    assert small.blob_id == hashlib.sha256(b"\xff\xd8\xff photo 0").hexdigest()
    assert small.url is None and small.filename == "foto-0.jpg"
    assert (big.blob_id, big.size, big.filename) == (None, 100, "video.mp4")
    assert big.url == f"email-part:{hashlib.sha256(request.body).hexdigest()}/1"
    assert "over the 20 byte limit" in parsed.raw["parts"][1]["note"]
    assert parsed.raw["raw_blob_id"] == hashlib.sha256(request.body).hexdigest()


async def test_an_oversized_part_is_too_large_to_fetch_and_a_smaller_one_is_read_back(
    tmp_path: Path
) -> None:
    email = adapter(max_attachment_bytes=20)
    blobs = BlobStore(tmp_path)
    raw = email_message("big@example.org", "Video", "Videonya", files=1)
    await blobs.put(raw)
    await email.start(_access(blobs))
    url = f"email-part:{hashlib.sha256(raw).hexdigest()}/0"
    with pytest.raises(TooLarge):
        await email.fetch("lapor", url, max_bytes=10)
    download = await email.fetch("lapor", url, max_bytes=1000)
    await email.close()
    assert download.content == b"\xff\xd8\xff photo 0"
    assert download.filename == "foto-0.jpg"


def test_a_relay_outside_the_allowed_networks_is_refused() -> None:
    email = adapter(relay_networks=["10.0.0.0/8"])
    with pytest.raises(SignatureError):
        email.verify(email_request(b"x", peer="127.0.0.1"))
    email.verify(email_request(b"x", peer="10.1.2.3"))


# -- composing and sending ------------------------------------------------------------------


def test_reply_subject_folds_prefixes_and_tags() -> None:
    assert reply_subject("Re: RE: Bls: Sampah [AMB-2026-000001]", "AMB-2026-000001") == \
        "Re: Sampah [AMB-2026-000001]"
    assert reply_subject("", "AMB-2026-000001") == "[AMB-2026-000001]"


def test_references_keep_the_first_and_the_latest() -> None:
    earlier = [f"r{i}@x" for i in range(20)]
    chain = references_for("last@x", earlier)
    assert chain[0] == "r0@x" and chain[-1] == "last@x" and len(chain) == 10


def test_composed_reply_has_threading_headers_alternative_and_files() -> None:
    composed = compose_reply(
        sender="lapor@ambon.go.id", sender_name="Lapor Ambon", recipient=EMAIL_CITIZEN,
        subject="Re: Sampah [AMB-2026-000001]", text="Petugas <DLHP> menuju lokasi.\nBesok.",
        message_id="AMB-2026-000001.9.abc@ambon.go.id", in_reply_to="c1@example.org",
        references=["c0@example.org", "c1@example.org"],
        files=(OutgoingFile(b"\x89PNG", "image/png", "bukti.png"),))
    parsed = BytesParser(policy=policy.default).parsebytes(composed.as_bytes())
    assert parsed["In-Reply-To"] == "<c1@example.org>"
    assert parsed["References"] == "<c0@example.org> <c1@example.org>"
    assert parsed["Message-ID"] == "<AMB-2026-000001.9.abc@ambon.go.id>"
    assert parsed.get_content_type() == "multipart/mixed"
    assert isinstance(parsed, EmailMessage)
    plain = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    assert plain.get_content().replace("\r\n", "\n").strip() == \
        "Petugas <DLHP> menuju lokasi.\nBesok."
    assert "Petugas &lt;DLHP&gt; menuju lokasi.<br>" in html.get_content()
    [attached] = list(parsed.iter_attachments())
    assert (attached.get_filename(), attached.get_content()) == ("bukti.png", b"\x89PNG")


def outgoing(**kw: Any) -> Outgoing:
    values: dict[str, Any] = {
        "message_id": 9, "conversation_id": 3, "tracking_number": "AMB-2026-000003",
        "channel": "email", "account": "lapor", "recipient": EMAIL_CITIZEN,
        "text": "Terima kasih, laporan sudah diteruskan.", **kw}
    return Outgoing(**values)


def relay_adapter(sink: SmtpSink, **kw: Any) -> EmailAdapter:
    return adapter(relay_port=sink.port, relay_security="none", timeout_s=2, **kw)


async def test_send_reaches_the_relay_threaded_under_the_citizens_mail(tmp_path: Path) -> None:
    async with smtp_sink() as sink:
        email = relay_adapter(sink)
        history = [{"id": 4, "external_id": "c2@example.org", "raw": {
            "message_id": "c2@example.org", "subject": "Re: Sampah di Batu Merah",
            "references": ["c1@example.org"]}}]
        await email.start(_access(BlobStore(tmp_path), history))
        receipt = await email.send(outgoing(files=(OutgoingFile(b"%PDF", "application/pdf",
                                                                "surat.pdf"),)))
        await email.close()
    [envelope] = sink.envelopes
    assert envelope.mail_from == EMAIL_MAILBOX and envelope.rcpt_tos == [EMAIL_CITIZEN]
    [sent] = sink.messages()
    assert sent["Subject"] == "Re: Sampah di Batu Merah [AMB-2026-000003]"
    assert sent["In-Reply-To"] == "<c2@example.org>"
    assert sent["References"] == "<c1@example.org> <c2@example.org>"
    assert sent["Message-ID"] == f"<{receipt}>"
    assert receipt is not None and receipt.startswith("AMB-2026-000003.9.")
    assert sent["From"] == f"Lapor Ambon <{EMAIL_MAILBOX}>"
    assert [a.get_filename() for a in sent.iter_attachments()] == ["surat.pdf"]


@pytest.mark.parametrize(("answer", "retryable"), [
    ("451 4.3.0 try again later", True), ("452 4.2.2 mailbox full", True),
    ("550 5.1.1 no such user", False), ("554 5.7.1 rejected", False)])
async def test_relay_answers_say_whether_a_retry_may_help(answer: str, retryable: bool) -> None:
    async with smtp_sink() as sink:
        sink.data_answers = [answer]
        with pytest.raises(DeliveryError) as failed:
            await relay_adapter(sink).send(outgoing())
        sink.rcpt_answers = [answer]
        with pytest.raises(DeliveryError) as refused:
            await relay_adapter(sink).send(outgoing())
    assert failed.value.retryable is retryable
    assert refused.value.retryable is retryable
    assert answer.split()[0] in str(failed.value)


async def test_unreachable_or_hung_relay_is_a_retryable_error() -> None:
    with pytest.raises(DeliveryError) as unreachable:
        await adapter(relay_port=9, relay_security="none", timeout_s=2).send(outgoing())
    assert unreachable.value.retryable
    async with smtp_sink() as sink:
        sink.delay_s = 3
        with pytest.raises(DeliveryError) as hung:
            await adapter(relay_port=sink.port, relay_security="none",
                          timeout_s=0.5).send(outgoing())
    assert hung.value.retryable


async def test_unknown_account_is_not_retried() -> None:
    with pytest.raises(DeliveryError) as failed:
        await adapter().send(outgoing(account="nobody"))
    assert not failed.value.retryable


async def test_a_failing_relay_is_retried_then_the_reply_marked_failed(tmp_path: Path) -> None:
    async with smtp_sink() as sink:
        sink.data_answers = ["451 4.3.0 busy"] * 3
        email = relay_adapter(sink)
        request = email_request(email_message("d1@example.org", "Sampah", "Tolong diangkut"))
        db = create_database(await new_database_url("sqlite", tmp_path))
        try:
            async with db.write() as conn:
                [stored] = await Ingestor(_triage, "AMB").ingest(conn, email.parse(request))
                reply = await outbound.add_outbound(
                    conn, stored.conversation_id, channel="email", account="lapor",
                    text="Terima kasih.", author="agent")
            deliverer = Deliverer(db, lambda _c, _a: email, LocalWorkQueues(),
                                  BlobStore(tmp_path), attempts=3, timeout_s=2,
                                  backoff_s=0.01)
            await deliverer.deliver(reply["id"])
            async with db.api.connect() as conn:
                failed = await outbound.outbound_message(conn, reply["id"])
        finally:
            await db.dispose()
    assert failed is not None
    assert (failed["delivery_status"], failed["delivery_attempts"]) == ("failed", 3)
    assert "451" in failed["delivery_error"]
    assert sink.envelopes == []


# -- the receiver's answers -------------------------------------------------------------------


async def test_the_relay_hears_250_only_after_the_message_is_stored(tmp_path: Path) -> None:
    stored: list[InboundMessage] = []

    async def submit(message: InboundMessage) -> Stored:
        stored.append(message)
        return Stored(len(stored), 1, "AMB-2026-000001", False, None)

    email = adapter()
    await email.start(_access(BlobStore(tmp_path), submit=submit))
    request = email_request(email_message("s@example.org", "Sampah", "Tolong", files=1))
    answer = await email.receive(request)
    assert answer.startswith("250") and "AMB-2026-000001" in answer
    [message] = stored
    assert BlobStore(tmp_path).path(message.attachments[0].blob_id or "") is not None
    assert BlobStore(tmp_path).path(message.raw["raw_blob_id"]) is not None
    refused = await email.receive(replace(request, headers={**request.headers,
                                                            RCPT_TO: "x@ambon.go.id"}))
    assert refused.startswith("550")
    automated = await email.receive(email_request(email_message(
        "ooo@example.org", "Cuti", "Saya sedang cuti", extra={"Auto-Submitted": "auto-replied"})))
    assert automated.startswith("250") and len(stored) == 1

    async def broken(message: InboundMessage) -> Stored:
        raise OSError("disk full")

    await email.close()
    failing = adapter()
    await failing.start(_access(BlobStore(tmp_path), submit=broken))
    answer = await failing.receive(request)
    await failing.close()
    assert answer.startswith("451")
    assert request.headers[MAIL_FROM] == EMAIL_CITIZEN


def _access(blobs: BlobStore, history: list[dict[str, Any]] | None = None,
            submit: Any = None) -> EngineAccess:
    async def no_submit(_message: InboundMessage) -> Stored:
        raise AssertionError("not expected")

    async def receipts(_receipts: Any) -> None:
        return None

    async def thread(*_args: Any) -> list[dict[str, Any]]:
        return []

    async def citizen_messages(_conversation_id: int) -> list[dict[str, Any]]:
        return history or []

    return EngineAccess(submit=submit or no_submit, record_receipts=receipts, thread=thread,
                        blobs=blobs, citizen_messages=citizen_messages)


def _triage(_message: InboundMessage) -> RouteDecision:
    return RouteDecision(queue="triage", rule=None, reason="test")


async def test_closing_ends_idle_relay_connections(tmp_path: Path) -> None:
    email = adapter()
    await email.start(_access(BlobStore(tmp_path)))
    assert email.address is not None
    reader, writer = await asyncio.open_connection(*email.address)
    assert (await reader.readline()).startswith(b"220 ")
    async with asyncio.timeout(5):
        await email.close()
        assert await reader.read() == b""  # the server hung up
    writer.close()
    assert email.address is None


def test_a_from_without_address_falls_back_to_the_envelope_and_absurd_ones_are_no_ones() -> None:
    body = mail("From: Warga Ambon", "Message-ID: <nf@example.org>", body=b"Jalan rusak")
    [message] = adapter().parse(email_request(body, mail_from="Warga@Example.org"))
    assert message.sender.id == "warga@example.org"
    long_name = "N" * 300
    [named] = adapter().parse(email_request(mail(f"From: {long_name} <a@example.org>",
                                                 body=b"x")))
    assert named.sender.name == "N" * 200
    absurd = mail(f"From: {'a' * 300}@example.org", body=b"x")
    assert adapter().parse(email_request(absurd, mail_from="c" * 300 + "@x.org")) == []


async def test_imap_mail_stays_unseen_until_it_is_stored(tmp_path: Path) -> None:
    async with dovecot() as server:
        await server.deliver(email_message("i1@example.org", "Sampah", "Di Batu Merah"))
        box = EmailMailbox(address=EMAIL_MAILBOX, account="lapor", imap=EmailImap(
            host="127.0.0.1", port=server.port, security="none", username=server.user,
            password=SecretStr(server.password)))
        attempts: list[InboundMessage] = []

        async def broken(message: InboundMessage) -> Stored:
            attempts.append(message)
            raise OSError("disk full")

        failing = adapter(mailboxes=[box], imap_poll_s=0.05)
        await failing.start(_access(BlobStore(tmp_path), submit=broken))
        async with asyncio.timeout(10):
            while len(attempts) < 2:  # looked at again after the failure
                await asyncio.sleep(0.05)
        await failing.close()
        assert await server.unseen() == 1

        stored: list[InboundMessage] = []

        async def submit(message: InboundMessage) -> Stored:
            stored.append(message)
            return Stored(1, 1, "AMB-2026-000001", False, None)

        working = adapter(mailboxes=[box], imap_poll_s=0.05)
        await working.start(_access(BlobStore(tmp_path), submit=submit))
        async with asyncio.timeout(10):
            while await server.unseen():
                await asyncio.sleep(0.05)
        await working.close()
    [message] = stored
    assert (message.external_id, message.account) == ("i1@example.org", "lapor")


def test_the_address_replies_leave_from_takes_answers_for_its_mailbox() -> None:
    email = adapter(mailboxes=[EmailMailbox(address="lapor@ambon.go.id", account="lapor",
                                            from_address="balasan@ambon.go.id")])
    request = email_request(email_message("ans@example.org", "Re: x [AMB-2026-000001]", "Ya"),
                            rcpt="balasan@ambon.go.id")
    email.verify(request)
    [message] = email.parse(request)
    assert message.account == "lapor"
    from_us = email_request(email_message("us@example.org", "x", "y",
                                          sender="balasan@ambon.go.id"))
    assert email.parse(from_us) == []


def test_headers_the_standard_parser_chokes_on_still_give_the_text_and_sender() -> None:
    raw = (b"From: =?utf-8?q?Jos=C3=A9?= <warga@example.org>\r\nSubject: Banjir\r\n"
           b"Message-ID: <bad@example.org>\r\n"
           b"Content-Type: charset=<(' \"><\"\x00;\r\n\r\nHalo warga\r\n")
    parsed = parse_email(raw)
    assert (parsed.text, parsed.sender_name, parsed.sender_address) == (
        "Halo warga", "José", "warga@example.org")
    assert (parsed.subject, parsed.message_id) == ("Banjir", "bad@example.org")
