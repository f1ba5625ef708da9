"""The widget in a real browser: headless Chromium embeds it in a page of another origin."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from omnichannel.adapters.webchat import WebchatAdapter
from omnichannel.appkeys import ENGINE
from tests.conftest import BROKER_URL, PG_URL
from tests.http.conftest import AGENT_AUTH, MakeClient
from tests.http.test_agent_api import conversation, wait_for

playwright = pytest.importorskip("playwright.async_api", reason="playwright is not installed")

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
KEY = "dlhp-situs-01"
SECRET = "webchat-browser-secret-0123456789ab"
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
       b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35"
       b"\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() or shutil.which("chromium")),
    reason="Chromium is not installed at /usr/bin/chromium (apt install chromium; .ci/run does)",
)


class HostSite:
    """A website of another origin whose page embeds the widget with one script tag."""

    def __init__(self) -> None:
        self.engine_url = ""
        self.server: TestServer | None = None

    async def page(self, _request: web.Request) -> web.Response:
        # Hostile styles: the widget's shadow root keeps them out.
        return web.Response(content_type="text/html", text=(
            '<!doctype html><html lang="id"><head><meta charset="utf-8">'
            "<title>Dinas Lingkungan Hidup</title>"
            "<style>button, li { display: none !important; } * { color: red; }</style></head>"
            "<body><h1>Dinas Lingkungan Hidup dan Persampahan</h1>"
            f'<script src="{self.engine_url}/webchat/widget.js" data-widget="{KEY}" async>'
            "</script></body></html>"))

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/", self.page)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def sites() -> AsyncIterator[tuple[HostSite, HostSite]]:
    """Two host sites: one the widget allows, one it does not."""
    allowed, other = HostSite(), HostSite()
    await allowed.start()
    await other.start()
    yield allowed, other
    for site in (allowed, other):
        assert site.server is not None
        await site.server.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    args = [*ARGS, "--no-sandbox"] if os.geteuid() == 0 else ARGS
    async with playwright.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                            args=args)
        yield chromium
        await chromium.close()


Engine = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def engine(make_client: MakeClient, sites: tuple[HostSite, HostSite]) -> Engine:
    """Starts an engine whose widget allows the first host site, and points both at it."""

    async def start(store: str = "sqlite", **overrides: Any) -> TestClient[Any, Any]:
        allowed = sites[0]
        assert allowed.server is not None
        origin = str(allowed.server.make_url("")).rstrip("/")
        client = await make_client(store, **{
            "webchat_widgets": [{"key": KEY, "name": "Situs DLHP", "origins": [origin],
                                 "opd": "dlhp"}],
            "webchat_secret": SECRET, "auto_ack": True,
            # Replies seen at once were pushed live: a resync would take minutes.
            "webchat_resync_s": 300.0, **overrides})
        for site in sites:
            site.engine_url = str(client.make_url("")).rstrip("/")
        return client

    return start


async def messages(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    """Every message of the only conversation, as the agent API shows it."""
    resp = await client.get("/api/v1/conversations", headers=AGENT_AUTH)
    conversations = (await resp.json())["conversations"]
    if not conversations:
        return []
    [conv] = conversations
    found: list[dict[str, Any]] = (await conversation(client, conv["id"]))["messages"]
    return found


async def agent_reply(client: TestClient[Any, Any], text: str) -> int:
    resp = await client.get("/api/v1/conversations", headers=AGENT_AUTH)
    [conv] = (await resp.json())["conversations"]
    resp = await client.post(f"/api/v1/conversations/{conv['id']}/messages",
                             json={"text": text}, headers=AGENT_AUTH)
    assert resp.status == 202, await resp.text()
    message_id: int = (await resp.json())["id"]
    return message_id


async def has_text(client: TestClient[Any, Any], text: str, direction: str = "inbound",
                   count: int = 1) -> bool:
    found = [m for m in await messages(client) if m["text"] == text
             and m["direction"] == direction]
    return len(found) == count


@pytest.mark.parametrize("mode", ["embedded", "broker"])
async def test_a_visitor_chats_both_ways_through_reloads_and_dropped_sockets(
    engine: Engine, sites: tuple[HostSite, HostSite], browser: Any, mode: str,
) -> None:
    if mode == "broker":
        if not (PG_URL and BROKER_URL):
            pytest.skip("PostgreSQL and RabbitMQ not configured: set "
                        "OMNICHANNEL_TEST_DATABASE_URL and OMNICHANNEL_TEST_BROKER_URL")
        # make_client deletes the prefix's queues once the engine has stopped.
        client = await engine("postgresql", broker_url=BROKER_URL,
                              broker_prefix=f"test-{os.urandom(5).hex()}")
    else:
        client = await engine()
    await _chat_both_ways(client, sites[0], browser, playwright.expect)


async def _chat_both_ways(client: TestClient[Any, Any], site: HostSite, browser: Any,
                          expect: Any) -> None:
    assert site.server is not None
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(str(site.server.make_url("/")))

    # Keyboard only: the launcher is the first thing Tab reaches, Enter opens the dialog, a
    # new visitor may give their details (the form has the focus), then writes.
    launcher = page.get_by_role("button", name="Buka obrolan pengaduan")
    await page.keyboard.press("Tab")
    await expect(launcher).to_be_focused()
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Layanan Pengaduan")
    await expect(dialog).to_be_visible()
    await expect(page.get_by_label("Nama")).to_be_focused()
    await page.keyboard.type("Rina Latuconsina")
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Nomor telepon")).to_be_focused()
    await page.keyboard.type("0812-3456-7890")
    await page.keyboard.press("Enter")
    box = page.get_by_label("Pesan Anda")
    await expect(box).to_be_focused()
    await expect(launcher).to_have_attribute("aria-expanded", "true")
    log = page.get_by_role("list", name="Percakapan")
    await expect(log).to_have_attribute("aria-live", "polite")
    await expect(page.get_by_role("button", name="Kirim", exact=True)).to_be_visible()
    await expect(page.get_by_role("button", name="Tutup obrolan")).to_be_visible()

    await page.keyboard.type("Sampah menumpuk di depan pasar Mardika")
    await page.keyboard.press("Enter")
    await wait_for(lambda: has_text(client, "Sampah menumpuk di depan pasar Mardika"))
    resp = await client.get("/api/v1/conversations", headers=AGENT_AUTH)
    [listed] = (await resp.json())["conversations"]
    details = await conversation(client, listed["id"])
    assert (details["contact_name"], details["contact_phone"], details["queue"]) == (
        "Rina Latuconsina", "+6281234567890", "dlhp")
    # Acknowledged: the bubble carries its sequence number, and the automatic reply with the
    # tracking number arrives through the socket.
    mine = log.locator("li[data-seq]", has_text="Sampah menumpuk di depan pasar Mardika")
    await expect(mine).to_have_count(1)
    await expect(mine).to_be_visible()  # the host page's `li { display: none }` stays out
    await expect(log).to_contain_text("AMB-")

    first_reply = await agent_reply(client, "Petugas DLHP segera ke lokasi.")
    await expect(log.locator("li", has_text="Petugas DLHP segera ke lokasi.")).to_have_count(1)
    # Shown in the open window: the agent sees it read.
    await wait_for(lambda: _status(client, first_reply, "read"))

    # Escape closes the dialog and gives focus back to the launcher.
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(launcher).to_be_focused()
    # A reply while the window is closed is announced on the button.
    await agent_reply(client, "Mohon kirim foto lokasinya.")
    await expect(launcher).to_have_accessible_name("Buka obrolan pengaduan, 1 pesan baru")

    # A reload keeps the visitor (their token is in localStorage) and their history.
    await page.reload()
    await launcher.click()
    await expect(launcher).to_have_accessible_name("Buka obrolan pengaduan")
    await expect(log.locator("li", has_text="Petugas DLHP segera ke lokasi.")).to_have_count(1)
    await expect(log.locator("li", has_text="Sampah menumpuk")).to_have_count(1)

    # The server drops every socket; the widget cannot get back until the agent's reply has
    # been sent, and the visitor writes meanwhile.
    adapter = client.server.app[ENGINE].adapters["webchat"]
    assert isinstance(adapter, WebchatAdapter)
    token = await page.evaluate(f"JSON.parse(localStorage['omnichannel-webchat:{KEY}']).token")
    assert adapter.tokens is not None
    visitor = adapter.tokens.read(token, KEY).id
    gate = asyncio.Event()
    serve = adapter.serve

    async def held_serve(*args: Any) -> Any:
        await gate.wait()
        return await serve(*args)

    adapter.serve = held_serve  # type: ignore[method-assign]
    assert await adapter.drop_connections() >= 1
    await wait_for(lambda: _none_connected(adapter, visitor))
    missed = await agent_reply(client, "Sampah sudah diangkut, terima kasih.")
    await wait_for(lambda: _status(client, missed, "sent"))
    assert adapter.connected(KEY, visitor) == 0
    await box.fill("Terima kasih, sudah bersih")
    await box.press("Enter")
    gate.set()
    await expect(log.locator("li", has_text="Sampah sudah diangkut, terima kasih.")
                 ).to_have_count(1)
    await expect(log.locator("li[data-seq]", has_text="Terima kasih, sudah bersih")
                 ).to_have_count(1)
    await wait_for(lambda: has_text(client, "Terima kasih, sudah bersih"))
    adapter.serve = serve  # type: ignore[method-assign]

    # A photo, through the same widget: stored once, shown from the engine with the token.
    await page.locator("#chat-file").set_input_files(
        files=[{"name": "sampah.png", "mimeType": "image/png", "buffer": PNG}])
    await expect(log.get_by_role("img", name="Foto: sampah.png")).to_have_count(1)
    await wait_for(lambda: _has_photo(client))

    # Every seq shown once, in order; nothing lost on either side.
    seqs = await log.locator("li[data-seq]").evaluate_all(
        "items => items.map(li => Number(li.dataset.seq))")
    stored = [m["id"] for m in await messages(client)]
    assert seqs == sorted(set(seqs)) == sorted(stored)
    assert errors == []
    await page.close()


async def _none_connected(adapter: WebchatAdapter, visitor: str) -> bool:
    return adapter.connected(KEY, visitor) == 0


async def _status(client: TestClient[Any, Any], message_id: int, status: str) -> bool:
    return any(m["id"] == message_id and m["delivery_status"] == status
               for m in await messages(client))


async def _has_photo(client: TestClient[Any, Any]) -> bool:
    return any(a["content_type"] == "image/png"
               for m in await messages(client) for a in (m["attachments"] or []))


async def test_a_page_of_an_origin_not_allowed_gets_no_chat(
    engine: Engine, sites: tuple[HostSite, HostSite], browser: Any,
) -> None:
    expect = playwright.expect
    client = await engine()
    _, other = sites
    assert other.server is not None
    page = await browser.new_page()
    await page.goto(str(other.server.make_url("/")))
    await page.get_by_role("button", name="Buka obrolan pengaduan").click()
    await page.get_by_label("Pesan Anda").fill("Halo, ada yang bisa bantu?")
    await page.get_by_label("Pesan Anda").press("Enter")
    status = page.get_by_role("status")
    await expect(status).to_contain_text("menyambung ulang")
    await expect(page.locator("li.pending", has_text="Halo")).to_have_count(1)
    assert await messages(client) == []
    await page.close()


async def test_the_standalone_page_chats_under_its_strict_policy(
    engine: Engine, browser: Any,
) -> None:
    expect = playwright.expect
    client = await engine()
    page = await browser.new_page()
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text)
            if "Content Security Policy" in msg.text else None)
    await page.goto(str(client.make_url(f"/chat/{KEY}")))
    await expect(page.get_by_role("dialog", name="Layanan Pengaduan")).to_be_visible()
    await page.get_by_role("button", name="Lewati").click()  # details are optional here
    box = page.get_by_label("Pesan Anda")
    await expect(box).to_be_focused()
    await box.fill("<img src=x onerror=alert(1)> jalan berlubang")
    await page.get_by_role("button", name="Kirim", exact=True).click()
    log = page.get_by_role("list", name="Percakapan")
    # Shown as text, never as markup.
    await expect(log.locator("li[data-seq]", has_text="<img src=x onerror=alert(1)>")
                 ).to_have_count(1)
    await expect(log.locator("img")).to_have_count(0)
    await wait_for(lambda: has_text(client, "<img src=x onerror=alert(1)> jalan berlubang"))
    await agent_reply(client, "Laporan diteruskan ke DLHP.")
    await expect(log).to_contain_text("Laporan diteruskan ke DLHP.")
    assert violations == []
    await page.close()
