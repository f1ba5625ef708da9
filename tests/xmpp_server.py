"""A throwaway Prosody on loopback for XMPP tests: its own config, data, ports and accounts."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DOMAIN = "localhost"
COMPONENT = "lapor.localhost"
COMPONENT_SECRET = "component-secret-0123456789"
#: The engine's bot account, created on every server.
BOT_PASSWORD = "bot-password-0123456789"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _config(root: Path, c2s_port: int, component_port: int) -> str:
    return f"""
-- Throwaway test server: loopback only, no TLS, plain passwords, no federation.
run_as_root = true
prosody_user = "root"
pidfile = "{root}/prosody.pid"
data_path = "{root}/data"
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
c2s_direct_tls_ports = {{ }}
component_ports = {{ {component_port} }}
component_interface = "127.0.0.1"
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "offline", "carbons", "posix" }}
modules_disabled = {{ "s2s" }}
log = {{ info = "{root}/prosody.log" }}

VirtualHost "{DOMAIN}"

Component "{COMPONENT}"
    component_secret = "{COMPONENT_SECRET}"
"""


@dataclass
class Prosody:
    """One Prosody process started from a temporary directory; `stop()` removes both."""

    root: Path
    c2s_port: int
    component_port: int
    process: subprocess.Popen[bytes] | None = None
    passwords: dict[str, str] = field(default_factory=lambda: {"bot": BOT_PASSWORD})

    @property
    def config(self) -> Path:
        return self.root / "prosody.cfg.lua"

    @classmethod
    def create(cls, citizens: int = 2) -> Prosody:
        """Write the config and register the bot and `citizen1`... (not started yet)."""
        root = Path(tempfile.mkdtemp(prefix="omnichannel-prosody-"))
        server = cls(root=root, c2s_port=free_port(), component_port=free_port())
        for n in range(1, citizens + 1):
            server.passwords[f"citizen{n}"] = f"citizen-{n}-password-0123"
        (root / "data").mkdir()
        server.config.write_text(_config(root, server.c2s_port, server.component_port))
        for user, password in server.passwords.items():
            subprocess.run(["prosodyctl", "--config", str(server.config), "register", user,
                            DOMAIN, password], check=True, capture_output=True, timeout=30)
        return server

    def start(self) -> None:
        """Run Prosody in the foreground and wait until both ports take connections."""
        # `prosody --version` would start a server too: only ever run it with -F and a config.
        self.process = subprocess.Popen(
            ["prosody", "-F", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        for port in (self.c2s_port, self.component_port):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"prosody exited: {self.log()[-2000:]}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"prosody is not listening on {port}") from None
                    time.sleep(0.05)

    def kill(self) -> None:
        """Stop the process at once, as a crash would (connections drop without a goodbye)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Kill the server and start it again on the same ports and data."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "prosody.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def jid(self, user: str) -> str:
        return f"{user}@{DOMAIN}"


def available() -> bool:
    """Whether Prosody is installed here."""
    return shutil.which("prosody") is not None and shutil.which("prosodyctl") is not None
