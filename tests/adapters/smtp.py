"""A real SMTP server on loopback (aiosmtpd) standing in for the mail relay replies leave by."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from aiosmtpd.smtp import SMTP, Envelope, Session


class SmtpSink:
    """Records what it is sent; answers DATA (or RCPT) with queued replies first, then 250."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.data_answers: list[str] = []
        self.rcpt_answers: list[str] = []
        #: Seconds to wait before answering DATA, as a hung relay would.
        self.delay_s = 0.0
        self.port = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self.rcpt_answers:
            return self.rcpt_answers.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self.delay_s)
        if self.data_answers:
            return self.data_answers.pop(0)
        self.envelopes.append(envelope)
        return "250 2.0.0 queued"

    def messages(self) -> list[EmailMessage]:
        """Every accepted message, parsed back."""
        out = []
        for envelope in self.envelopes:
            parsed = BytesParser(policy=policy.default).parsebytes(
                envelope.original_content or b"")
            assert isinstance(parsed, EmailMessage)
            out.append(parsed)
        return out


@asynccontextmanager
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    """A sink listening on a free loopback port for the duration of the block."""
    sink = SmtpSink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="sink.test"),
                                      host="127.0.0.1", port=0)
    sink.port = server.sockets[0].getsockname()[1]
    try:
        yield sink
    finally:
        server.close()
        await server.wait_closed()
