"""E-mail end to end: real SMTP clients deliver to the engine's receiver, agents read and answer
through the API, and replies reach a real SMTP server, parsed back to check their threading."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
from collections.abc import AsyncIterator
from email import policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from omnichannel.adapters.email import EmailAdapter
from omnichannel.appkeys import ENGINE
from tests.adapters.imap import dovecot
from tests.adapters.smtp import SmtpSink, smtp_sink
from tests.conftest import BROKER_URL
from tests.http.conftest import AGENT_AUTH, MakeClient, assert_all_published
from tests.http.test_agent_api import conversation, wait_for

STORES = ["sqlite", "postgresql"]
MAILBOX = "lapor@ambon.go.id"
PUPR = "pupr@ambon.go.id"
CITIZEN = "rina.latuconsina@example.org"


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with smtp_sink() as server:
        yield server


async def engine(make_client: MakeClient, sink: SmtpSink, store: str = "sqlite",
                 **overrides: Any) -> tuple[TestClient[Any, Any], int]:
    """An engine taking mail for two mailboxes (one bound to DPUPR), replying through `sink`."""
    client = await make_client(
        store, email_mailboxes=[{"address": MAILBOX, "from_name": "Lapor Ambon"},
                                {"address": PUPR, "opd": "dinas-pupr"}],
        email_smtp_port=0, email_relay_port=sink.port, email_relay_security="none",
        delivery_timeout_s=2, **overrides)
    adapter = client.server.app[ENGINE].adapters["email"]
    assert isinstance(adapter, EmailAdapter) and adapter.address is not None
    return client, adapter.address[1]


def citizen_mail(subject: str, text: str, *, message_id: str | None = None,
                 charset: str = "utf-8", cte: str | None = None, **headers: str) -> EmailMessage:
    mail = EmailMessage(policy=policy.SMTP)
    mail["From"] = f"Rina Latuconsina <{CITIZEN}>"
    mail["To"] = MAILBOX
    mail["Subject"] = subject
    mail["Message-ID"] = message_id or make_msgid(domain="example.org")
    for key, value in headers.items():
        mail[key.replace("_", "-")] = value
    mail.set_content(text, charset=charset, cte=cte)
    return mail


async def deliver(port: int, mail: EmailMessage | bytes, *, to: str = MAILBOX,
                  sender: str = CITIZEN) -> dict[str, Any]:
    """Hand a message to the receiver with Python's SMTP client, as a relay does."""
    data = mail if isinstance(mail, bytes) else mail.as_bytes()

    def send() -> dict[str, Any]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("relay.test")
            refused: dict[str, Any] = client.sendmail(sender, [to], data)
            return refused

    return await asyncio.to_thread(send)


async def conversations(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/conversations", headers=AGENT_AUTH)
    assert resp.status == 200
    result: list[dict[str, Any]] = (await resp.json())["conversations"]
    return result


async def sent_mail(sink: SmtpSink, count: int) -> list[EmailMessage]:
    async def arrived() -> bool:
        return len(sink.envelopes) >= count

    await wait_for(arrived)
    return sink.messages()


@pytest.mark.parametrize("store", STORES)
async def test_mail_in_reply_out_and_the_citizens_answer_threads(
    make_client: MakeClient, sink: SmtpSink, store: str
) -> None:
    client, port = await engine(make_client, sink, store, auto_ack=True)
    first = citizen_mail("Sampah di Pasar Mardika",
                         "Sampah di depan pasar sudah tiga hari seng diangkut.\n"
                         "Baunya sampai ke sekolah.\n-- \nRina\n",
                         charset="iso-8859-1", cte="quoted-printable")
    first.add_attachment(b"\xff\xd8\xff foto sampah", maintype="image", subtype="jpeg",
                         filename="sampah.jpg")
    first.add_attachment(b"%PDF-1.4 surat", maintype="application", subtype="pdf",
                         filename="surat RT.pdf")
    assert await deliver(port, first) == {}
    # The relay retrying the same message (its answer lost) stores nothing new.
    assert await deliver(port, first) == {}

    [conv] = await conversations(client)
    assert conv["channel"] == "email" and conv["account"] == MAILBOX
    assert conv["queue"] == "dlhp"
    thread = await conversation(client, conv["id"])
    [inbound] = [m for m in thread["messages"] if m["direction"] == "inbound"]
    assert inbound["text"] == ("Sampah di Pasar Mardika\n\nSampah di depan pasar sudah tiga "
                               "hari seng diangkut.\nBaunya sampai ke sekolah.")
    assert [(a["filename"], a["content_type"], a["size"]) for a in inbound["attachments"]] == [
        ("sampah.jpg", "image/jpeg", 15), ("surat RT.pdf", "application/pdf", 14)]
    resp = await client.get(f"/api/v1/messages/{inbound['id']}/attachments/1",
                            headers=AGENT_AUTH)
    assert resp.status == 200 and await resp.read() == b"%PDF-1.4 surat"

    # The acknowledgement answers the citizen's mail in its thread.
    [ack] = await sent_mail(sink, 1)
    tracking = conv["tracking_number"]
    assert ack["Subject"] == f"Re: Sampah di Pasar Mardika [{tracking}]"
    assert ack["In-Reply-To"] == first["Message-ID"]
    # An automatic answer, which other robots must not answer (RFC 3834).
    assert ack["Auto-Submitted"] == "auto-replied"
    assert tracking in ack.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]

    resp = await client.post("/api/v1/attachments", data=b"\x89PNG bukti",
                             headers={**AGENT_AUTH, "Content-Type": "image/png"})
    blob_id = (await resp.json())["blob_id"]
    resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages", headers=AGENT_AUTH,
                             json={"text": "Petugas DLHP menuju <Pasar Mardika> hari ini.",
                                   "attachments": [{"blob_id": blob_id,
                                                    "content_type": "image/png",
                                                    "filename": "jadwal.png"}]})
    assert resp.status == 202
    _, reply = await sent_mail(sink, 2)
    assert sink.envelopes[1].rcpt_tos == [CITIZEN]
    assert reply["Subject"] == f"Re: Sampah di Pasar Mardika [{tracking}]"
    assert reply["In-Reply-To"] == first["Message-ID"]
    assert reply["References"] == first["Message-ID"]
    assert reply["Message-ID"].startswith(f"<{tracking}.") and reply["Message-ID"].endswith(
        "@ambon.go.id>")
    assert reply["From"] == f"Lapor Ambon <{MAILBOX}>"
    assert reply["Auto-Submitted"] is None  # an agent wrote it
    assert [p.get_content_type() for p in reply.walk()] == [
        "multipart/mixed", "multipart/alternative", "text/plain", "text/html", "image/png"]
    html = reply.get_body(preferencelist=("html",))
    assert html is not None and "&lt;Pasar Mardika&gt;" in html.get_content()
    [file] = list(reply.iter_attachments())
    assert (file.get_filename(), file.get_content()) == ("jadwal.png", b"\x89PNG bukti")

    async def reply_sent() -> bool:
        last = (await conversation(client, conv["id"]))["messages"][-1]
        return bool(last["delivery_status"] == "sent")

    await wait_for(reply_sent)
    last = (await conversation(client, conv["id"]))["messages"][-1]
    assert f"<{last['external_id']}>" == reply["Message-ID"]

    # The citizen answers from a client that rewrote the subject: In-Reply-To threads it.
    answer = citizen_mail(
        "Balasan", "Terima kasih, sudah diangkut.\n\nOn Sat, 28 Nov 2026 at 10:00, Lapor Ambon "
        f"<{MAILBOX}> wrote:\n> Petugas DLHP menuju Pasar Mardika hari ini.\n",
        In_Reply_To=reply["Message-ID"],
        References=f"{first['Message-ID']} {reply['Message-ID']}")
    assert await deliver(port, answer) == {}
    await client.post(f"/api/v1/conversations/{conv['id']}/status", headers=AGENT_AUTH,
                      json={"status": "resolved"})
    # Days later, a reply naming only the tracking number in its subject reopens it.
    later = citizen_mail(f"Re: Sampah [{tracking}]", "Sampahnya menumpuk lagi.")
    assert await deliver(port, later) == {}

    [same] = await conversations(client)
    assert (same["id"], same["status"]) == (conv["id"], "open")
    texts = [m["text"] for m in (await conversation(client, conv["id"]))["messages"]
             if m["direction"] == "inbound"]
    assert texts[1:] == ["Terima kasih, sudah diangkut.", "Sampahnya menumpuk lagi."]
    # Neither answer opened a conversation, so neither was acknowledged again.
    await asyncio.sleep(0.2)
    assert len(sink.envelopes) == 2


async def test_html_only_mail_is_stored_as_safe_text(make_client: MakeClient,
                                                     sink: SmtpSink) -> None:
    client, port = await engine(make_client, sink)
    mail = EmailMessage(policy=policy.SMTP)
    mail["From"] = CITIZEN
    mail["Subject"] = "Lampu jalan"
    mail["Message-ID"] = make_msgid(domain="example.org")
    mail.set_content("<p>Lampu jalan <b>mati</b> di Waihaong</p><script>alert(1)</script>"
                     "<img src=x onerror=alert(2)>", subtype="html")
    assert await deliver(port, mail) == {}
    [conv] = await conversations(client)
    [message] = (await conversation(client, conv["id"]))["messages"]
    assert message["text"] == "Lampu jalan\n\nLampu jalan mati di Waihaong"
    assert "<" not in message["text"] and "alert" not in message["text"]


async def test_auto_replies_and_bounces_are_never_answered(
    make_client: MakeClient, sink: SmtpSink
) -> None:
    client, port = await engine(make_client, sink, auto_ack=True)
    out_of_office = citizen_mail("Automatic reply: Sedang cuti", "Saya cuti sampai Senin.",
                                 Auto_Submitted="auto-replied")
    assert await deliver(port, out_of_office) == {}
    newsletter = citizen_mail("Buletin warga", "Edisi November", Precedence="bulk",
                              List_Id="<warga.example.org>")
    assert await deliver(port, newsletter) == {}
    assert await conversations(client) == []

    # A citizen's report is acknowledged; the acknowledgement bounces; the bounce marks it
    # failed and is not answered.
    assert await deliver(port, citizen_mail("Jalan rusak", "Jalan di Passo berlubang.")) == {}
    [ack] = await sent_mail(sink, 1)
    [conv] = await conversations(client)

    async def ack_sent() -> bool:
        return bool((await conversation(client, conv["id"]))["messages"][-1]["delivery_status"]
                    == "sent")

    await wait_for(ack_sent)
    bounce = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        f"To: {MAILBOX}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <bounce-1@mx.example.org>\r\nAuto-Submitted: auto-replied\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {CITIZEN}\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        "Diagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n\r\n"
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {MAILBOX}\r\nMessage-ID: {ack['Message-ID']}\r\n\r\n--b--\r\n").encode()
    assert await deliver(port, bounce, sender="") == {}

    async def ack_failed() -> bool:
        return bool((await conversation(client, conv["id"]))["messages"][-1]["delivery_status"]
                    == "failed")

    await wait_for(ack_failed)
    last = (await conversation(client, conv["id"]))["messages"][-1]
    assert "mailbox full" in last["delivery_error"]
    assert len(await conversations(client)) == 1
    await asyncio.sleep(0.2)
    assert len(sink.envelopes) == 1


async def test_the_receiver_refuses_unknown_mailboxes_and_oversized_mail(
    make_client: MakeClient, sink: SmtpSink
) -> None:
    client, port = await engine(make_client, sink, email_max_message_bytes=4096)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await deliver(port, citizen_mail("x", "y"), to="kepala@ambon.go.id")
    code, text = refused.value.recipients["kepala@ambon.go.id"]
    assert code == 550 and b"no such mailbox" in text
    big = citizen_mail("Video", "Lihat video")
    big.add_attachment(b"v" * 8000, maintype="video", subtype="mp4", filename="banjir.mp4")
    with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPSenderRefused)) as too_big:
        await deliver(port, big)
    assert too_big.value.smtp_code == 552
    assert await conversations(client) == []


async def test_an_opds_own_mailbox_routes_to_it(make_client: MakeClient,
                                                sink: SmtpSink) -> None:
    client, port = await engine(make_client, sink)
    assert await deliver(port, citizen_mail("Sampah", "Sampah menumpuk"), to=PUPR) == {}
    [conv] = await conversations(client)
    assert (conv["account"], conv["queue"]) == (PUPR, "dinas-pupr")


async def test_the_webhook_path_says_mail_arrives_by_smtp(make_client: MakeClient,
                                                          sink: SmtpSink) -> None:
    client, _ = await engine(make_client, sink)
    resp = await client.post("/webhooks/email", data=b"x")
    assert resp.status == 404
    assert "SMTP" in (await resp.json())["error"]


async def test_a_busy_relay_is_retried_and_a_refusal_shown_as_failed(
    make_client: MakeClient, sink: SmtpSink
) -> None:
    client, port = await engine(make_client, sink)
    assert await deliver(port, citizen_mail("Air mati", "Air PDAM mati di Kudamati")) == {}
    [conv] = await conversations(client)
    sink.data_answers = ["451 4.3.0 greylisted, try again"]
    resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages",
                             json={"text": "Kami cek ke PDAM."}, headers=AGENT_AUTH)
    assert resp.status == 202
    [delivered] = await sent_mail(sink, 1)
    assert delivered.get_body(preferencelist=("plain",)).get_content().strip() == \
        "Kami cek ke PDAM."  # type: ignore[union-attr]

    async def status_is(status: str) -> bool:
        last = (await conversation(client, conv["id"]))["messages"][-1]
        return bool(last["delivery_status"] == status)

    await wait_for(lambda: status_is("sent"))
    last = (await conversation(client, conv["id"]))["messages"][-1]
    assert last["delivery_attempts"] == 2

    sink.rcpt_answers = ["550 5.1.1 user unknown"]
    resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages",
                             json={"text": "Mohon kirim alamat lengkap."}, headers=AGENT_AUTH)
    assert resp.status == 202
    await wait_for(lambda: status_is("failed"))
    last = (await conversation(client, conv["id"]))["messages"][-1]
    assert last["delivery_attempts"] == 1
    assert "550 5.1.1 user unknown" in last["delivery_error"]
    assert len(sink.envelopes) == 1


async def test_swaks_delivers_a_multipart_message(make_client: MakeClient, sink: SmtpSink,
                                                  tmp_path: Path) -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed")
    client, port = await engine(make_client, sink)
    photo = tmp_path / "jalan.jpg"
    photo.write_bytes(b"\xff\xd8\xff jalan berlubang")
    process = await asyncio.create_subprocess_exec(
        swaks, "--server", "127.0.0.1", "--port", str(port), "--helo", "relay.test",
        "--from", CITIZEN, "--to", MAILBOX, "--header", "Subject: Jalan berlubang di Passo",
        "--body", "Lubangnya dalam, motor sering jatuh.",
        "--attach-type", "image/jpeg", "--attach-name", "jalan.jpg", "--attach", f"@{photo}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    assert b"250 2.0.0 OK: stored as AMB-" in output
    [conv] = await conversations(client)
    [message] = (await conversation(client, conv["id"]))["messages"]
    assert message["text"] == "Jalan berlubang di Passo\n\nLubangnya dalam, motor sering jatuh."
    assert [(a["filename"], a["content_type"]) for a in message["attachments"]] == [
        ("jalan.jpg", "image/jpeg")]
    assert conv["queue"] == "dinas-pupr"


async def test_email_both_ways_on_postgresql_and_rabbitmq(
    make_client: MakeClient, sink: SmtpSink, broker_prefix: str
) -> None:
    client, port = await engine(make_client, sink, "postgresql", broker_url=BROKER_URL,
                                broker_prefix=broker_prefix)
    assert await deliver(port, citizen_mail("Sampah", "Sampah di Batu Merah")) == {}
    [conv] = await conversations(client)
    thread = await conversation(client, conv["id"])
    await assert_all_published(broker_prefix, {thread["messages"][0]["id"]}, queue="dlhp")
    resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages",
                             json={"text": "Segera diangkut."}, headers=AGENT_AUTH)
    assert resp.status == 202
    [reply] = await sent_mail(sink, 1)
    assert reply["Subject"] == f"Re: Sampah [{conv['tracking_number']}]"
    assert reply["In-Reply-To"] == f"<{thread['messages'][0]['external_id']}>"


async def test_a_file_over_the_limit_is_recorded_and_the_citizen_told(
    make_client: MakeClient, sink: SmtpSink
) -> None:
    client, port = await engine(make_client, sink, max_attachment_bytes=100)
    mail = citizen_mail("Banjir", "Videonya terlampir, fotonya juga.")
    mail.add_attachment(b"\xff\xd8\xff kecil", maintype="image", subtype="jpeg",
                        filename="foto.jpg")
    mail.add_attachment(b"v" * 500, maintype="video", subtype="mp4", filename="banjir.mp4")
    assert await deliver(port, mail) == {}
    [conv] = await conversations(client)
    [notice] = await sent_mail(sink, 1)
    assert "terlalu besar" in notice.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert notice["In-Reply-To"] == mail["Message-ID"]
    assert notice["Auto-Submitted"] == "auto-replied"
    inbound = (await conversation(client, conv["id"]))["messages"][0]
    photo, video = inbound["attachments"]
    assert photo["blob_id"] and photo.get("status") is None
    assert (video["filename"], video["size"], video["status"]) == ("banjir.mp4", 500,
                                                                   "too_large")
    resp = await client.get(f"/api/v1/messages/{inbound['id']}/attachments/0",
                            headers=AGENT_AUTH)
    assert await resp.read() == b"\xff\xd8\xff kecil"


async def test_a_mailbox_read_over_imap(make_client: MakeClient, sink: SmtpSink) -> None:
    async with dovecot() as server:
        await server.deliver(citizen_mail("Sampah", "Sampah di Batu Merah").as_bytes())
        await server.deliver(citizen_mail("Cuti", "Saya cuti", Auto_Submitted="auto-replied",
                                          message_id="<ooo@example.org>").as_bytes())
        client = await make_client(
            email_mailboxes=[{"address": MAILBOX, "imap": {
                "host": "127.0.0.1", "port": server.port, "security": "none",
                "username": server.user, "password": server.password}}],
            email_relay_port=sink.port, email_relay_security="none", email_imap_poll_s=0.2,
            auto_ack=True)
        adapter = client.server.app[ENGINE].adapters["email"]
        assert isinstance(adapter, EmailAdapter)
        # Every mailbox is read over IMAP: nothing listens for a relay.
        assert adapter.address is None

        async def all_seen() -> bool:
            return await server.unseen() == 0

        await wait_for(all_seen)
        [conv] = await conversations(client)
        [message] = [m for m in (await conversation(client, conv["id"]))["messages"]
                     if m["direction"] == "inbound"]
        assert message["text"] == "Sampah\n\nSampah di Batu Merah"
        [ack] = await sent_mail(sink, 1)
        assert conv["tracking_number"] in ack["Subject"]
        # Mail arriving later is read at the next look.
        await server.deliver(citizen_mail(f"Re: Sampah [{conv['tracking_number']}]",
                                          "Sudah tiga hari.").as_bytes())
        await wait_for(all_seen)

        async def joined() -> bool:
            thread = (await conversation(client, conv["id"]))["messages"]
            return [m["text"] for m in thread if m["direction"] == "inbound"][-1] == \
                "Sudah tiga hari."

        await wait_for(joined)
        assert len(await conversations(client)) == 1
        await client.close()
