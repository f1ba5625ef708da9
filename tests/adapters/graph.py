"""A loopback stand-in for Meta's Graph API: sends, media lookups and media downloads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.adapters.kits import WA_VERSION, graph_reply


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeGraph:
    """Records every request; answers as the Graph API does, or as a test queues."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    #: (HTTP status, JSON) answers to the next sends; a success with a new wamid otherwise.
    send_answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    #: Files by media id: content and MIME type.
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    #: `file_size` to announce instead of the real one (Meta's word, not checked by it).
    announced_size: dict[str, int] = field(default_factory=dict)
    #: HTTP statuses for the next media lookups (a Graph error body with each).
    media_failures: list[int] = field(default_factory=list)
    #: Send downloads chunked, without a Content-Length to check before reading.
    chunked: bool = False

    async def _record(self, request: web.Request) -> None:
        self.requests.append(Recorded(request.method, request.path_qs, dict(request.headers),
                                      await request.read()))

    async def send(self, request: web.Request) -> web.Response:
        await self._record(request)
        status, body = self.send_answers.pop(0) if self.send_answers else (200, graph_reply(200))
        return web.json_response(body, status=status)

    async def media_info(self, request: web.Request) -> web.Response:
        await self._record(request)
        media_id = request.match_info["media_id"]
        if self.media_failures:
            status = self.media_failures.pop(0)
            return web.json_response(graph_reply(status), status=status)
        if media_id not in self.media:
            return web.json_response({"error": {
                "message": f"Unsupported get request. Object with ID '{media_id}' does not "
                           "exist, cannot be loaded due to missing permissions, or does not "
                           "support this operation.",
                "type": "GraphMethodException", "code": 100, "error_subcode": 33,
                "fbtrace_id": "AbC1dEf2GhI8"}}, status=400)
        content, mime_type = self.media[media_id]
        return web.json_response({
            "messaging_product": "whatsapp",
            "url": f"{self.url}/whatsapp_business/attachments/?mid={media_id}&ext=1795827723"
                   "&hash=ARbCdEfGh",
            "mime_type": mime_type, "sha256": "0" * 64,
            "file_size": str(self.announced_size.get(media_id, len(content))),
            "id": media_id,
        })

    async def download(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.Response(status=401)
        content, mime_type = self.media[request.query["mid"]]
        if not self.chunked:
            return web.Response(body=content, content_type=mime_type)
        response = web.StreamResponse(headers={"Content-Type": mime_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(content), 4096):
            await response.write(content[start:start + 4096])
        await response.write_eof()
        return response

    def sent(self) -> list[Recorded]:
        """The send requests received, in order."""
        return [r for r in self.requests if r.path.endswith("/messages")]


@asynccontextmanager
async def fake_graph() -> AsyncIterator[FakeGraph]:
    """A running fake Graph API on 127.0.0.1; its base URL is `.url`."""
    fake = FakeGraph()
    app = web.Application()
    app.router.add_post(f"/{WA_VERSION}/{{phone_number_id}}/messages", fake.send)
    app.router.add_get(f"/{WA_VERSION}/{{media_id}}", fake.media_info)
    app.router.add_get("/whatsapp_business/attachments/", fake.download)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        await server.close()
