"""Per-adapter kits for the shared contract suite: how to make a genuine request, and a fake."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from omnichannel.adapters.api import ApiAdapter
from omnichannel.adapters.base import Adapter, WebhookRequest

TOKEN = "contract-suite-token-0123456789"


@dataclass
class Kit:
    """Everything the contract suite needs to exercise one adapter."""

    name: str
    #: Builds the adapter, sending to `send_url` (a fake provider) through `session`.
    build: Callable[[str, aiohttp.ClientSession], Adapter]
    #: Genuine requests, each with the normalised fields the adapter must parse out of it.
    fixtures: list[tuple[WebhookRequest, dict[str, Any]]]
    #: The same request as a forger would send it (wrong or missing credentials).
    forgeries: Callable[[WebhookRequest], list[WebhookRequest]]
    #: Whether the credential covers the body, so a tampered body must be refused too.
    signs_body: bool
    #: Path of the provider's send API on the fake provider server.
    provider_path: str


def _api_request(body: dict[str, Any], token: str | None = TOKEN) -> WebhookRequest:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return WebhookRequest(method="POST", url="https://lapor.example/webhooks/api",
                          headers=headers, body=orjson.dumps(body))


def _api_forgeries(request: WebhookRequest) -> list[WebhookRequest]:
    headers = dict(request.headers)
    del headers["Authorization"]
    wrong = {**headers, "Authorization": "Bearer not-the-token-at-all-000"}
    basic = {**headers, "Authorization": "Basic " + TOKEN}
    return [replace(request, headers=headers), replace(request, headers=wrong),
            replace(request, headers=basic)]


API = Kit(
    name="api",
    build=lambda url, session: ApiAdapter(token=SecretStr(TOKEN), callback_url=url,
                                          session=session),
    fixtures=[
        (_api_request({"external_id": "f-1", "sender_id": "c-1", "text": "Jalan rusak"}),
         {"channel": "api", "account": "default", "external_id": "f-1", "sender_id": "c-1",
          "text": "Jalan rusak"}),
        (_api_request({"external_id": "f-2", "sender_id": "c-2", "sender_phone": "0812 3456 7890",
                       "account": "offline-desk", "text": "",
                       "location": {"latitude": -3.7, "longitude": 128.2},
                       "attachments": [{"content_type": "image/jpeg",
                                        "url": "https://files.example/a.jpg", "size": 2048}]}),
         {"channel": "api", "account": "offline-desk", "external_id": "f-2", "sender_id": "c-2",
          "phone": "+6281234567890", "text": "", "latitude": -3.7, "attachments": 1}),
    ],
    forgeries=_api_forgeries,
    signs_body=False,
    provider_path="/callback",
)

KITS = [API]
