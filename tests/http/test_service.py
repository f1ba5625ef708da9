"""Operator endpoints: health, readiness, metrics, OpenAPI, and reloading the rules."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from omnichannel.appkeys import ENGINE
from omnichannel.store.database import create_database
from tests.conftest import REPO
from tests.http.conftest import AGENT_AUTH, API_AUTH, MakeClient
from tests.http.test_webhook_api import GOOD


async def test_health_and_readiness(client: TestClient[Any, Any]) -> None:
    assert (await (await client.get("/healthz")).json()) == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"database": True, "bus": True}


async def test_readiness_fails_when_the_database_is_gone(client: TestClient[Any, Any]) -> None:
    engine = client.server.app[ENGINE]
    await engine.db.api.dispose()
    engine.db.api = create_database("sqlite+aiosqlite:////nonexistent/dir/x.db").api
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["database"] is False


async def test_metrics_count_ingested_and_rejected(client: TestClient[Any, Any]) -> None:
    await client.post("/webhooks/api", json=GOOD, headers=API_AUTH)
    await client.post("/webhooks/api", json=GOOD, headers=API_AUTH)
    await client.post("/webhooks/api", data=b"{", headers=API_AUTH)
    text = await (await client.get("/metrics")).text()
    assert 'omnichannel_messages_ingested_total{channel="api"}' in text
    assert 'omnichannel_messages_duplicate_total{channel="api"}' in text
    assert 'omnichannel_webhook_rejected_total{channel="api",reason="400"}' in text
    assert "omnichannel_ingest_batch_size_bucket" in text


async def test_openapi_describes_every_route(client: TestClient[Any, Any]) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    app_paths = {r.resource.canonical for r in client.server.app.router.routes()
                 if r.resource is not None}
    assert app_paths <= set(doc["paths"]) | {"/openapi.json"}
    schema = doc["components"]["schemas"]["ApiMessage"]
    assert set(schema["required"]) == {"external_id", "sender_id"}


async def test_broken_rules_are_refused_and_the_old_rules_stay(
    make_client: MakeClient, tmp_path: Path
) -> None:
    rules = tmp_path / "routing.yaml"
    shutil.copy(REPO / "config" / "routing.yaml", rules)
    client = await make_client(rules_path=rules)
    rules.write_text(rules.read_text() + "\n  - name: [unclosed\n")
    resp = await client.post("/api/v1/admin/rules/reload", headers=AGENT_AUTH)
    assert resp.status == 422
    errors = (await resp.json())["errors"]
    assert errors and all(str(rules) in e for e in errors)
    line = len(rules.read_text().splitlines())
    assert any(f":{line}:" in e or f":{line + 1}:" in e for e in errors), errors
    accepted = await client.post("/webhooks/api", json=GOOD, headers=API_AUTH)
    conv_id = (await accepted.json())["conversation_id"]
    conv = await (await client.get(f"/api/v1/conversations/{conv_id}", headers=AGENT_AUTH)).json()
    assert conv["queue"] == "dlhp"

    shutil.copy(REPO / "config" / "routing.yaml", rules)
    resp = await client.post("/api/v1/admin/rules/reload", headers=AGENT_AUTH)
    assert resp.status == 200
    assert "dlhp" in (await resp.json())["opds"]
