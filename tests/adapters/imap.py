"""A real IMAP server (Debian's Dovecot) on loopback with one mailbox, for one test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aioimaplib
import pytest

USER = "lapor@ambon.go.id"
PASSWORD = "imap-password-0123456789"


@dataclass
class Dovecot:
    """Where the server listens and how to log in."""

    port: int
    user: str = USER
    password: str = PASSWORD

    async def client(self) -> aioimaplib.IMAP4:
        client = aioimaplib.IMAP4("127.0.0.1", self.port, timeout=5)
        await client.wait_hello_from_server()
        assert (await client.login(self.user, self.password)).result == "OK"
        assert (await client.select("INBOX")).result == "OK"
        return client

    async def deliver(self, message: bytes) -> None:
        """Put a message in the inbox, as the organisation's mail server would."""
        client = await self.client()
        try:
            assert (await client.append(message, mailbox="INBOX")).result == "OK"
        finally:
            await client.logout()

    async def unseen(self) -> int:
        client = await self.client()
        try:
            found = await client.uid_search("UNSEEN")
            return len(found.lines[0].split())
        finally:
            await client.logout()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _configure(port: int) -> Path:
    """A directory holding the configuration, the users and the mail."""
    # The mail belongs to `nobody`, who must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="omnichannel-imap-"))
    root.chmod(0o755)
    (root / "mail").mkdir(mode=0o777)
    (root / "mail").chmod(0o777)
    nobody = pwd.getpwnam("nobody")
    (root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    (root / "dovecot.conf").write_text(f"""
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
first_valid_uid = {nobody.pw_uid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={nobody.pw_uid} gid={nobody.pw_gid} home={root}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
""")
    return root


@asynccontextmanager
async def dovecot() -> AsyncIterator[Dovecot]:
    """Dovecot with its configuration, state and mail in a temporary directory."""
    binary = shutil.which("dovecot")
    if binary is None or os.geteuid() != 0:
        pytest.skip("Dovecot (dovecot-imapd) is not installed, or not running as root")
    port = _free_port()
    root = _configure(port)
    process = await asyncio.create_subprocess_exec(
        binary, "-F", "-c", str(root / "dovecot.conf"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(15):
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                await asyncio.sleep(0.1)
        yield Dovecot(port)
    finally:
        process.terminate()
        with contextlib.suppress(ProcessLookupError):
            async with asyncio.timeout(10):
                await process.wait()
        shutil.rmtree(root, ignore_errors=True)
