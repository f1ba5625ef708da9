"""The OpenAPI 3.1 document of the HTTP API, with request schemas taken from the pydantic models."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel

from omnichannel import __version__
from omnichannel.adapters.api import ApiMessage
from omnichannel.adapters.webchat_routes import OPENAPI_PATHS as WEBCHAT_PATHS
from omnichannel.inbox.api import ReplyRequest, StatusRequest

_REF = "#/components/schemas/{model}"


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}}


def _json_body(model: str) -> dict[str, Any]:
    return {"required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}}}


def _ok(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {}}}}


_AUTH_ERRORS = {"401": _error("missing or wrong bearer token"),
                "503": _error("disabled: no token configured")}
_ID_SCHEMA = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_ID = {"name": "id", "in": "path", "required": True, "schema": _ID_SCHEMA}


@cache
def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI document served at `/openapi.json`."""
    schemas = _schemas(ApiMessage, ReplyRequest, StatusRequest)
    schemas["Error"] = {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "array"}},
    }
    schemas["Accepted"] = {
        "type": "object",
        "properties": {"message_id": {"type": "integer"}, "conversation_id": {"type": "integer"},
                       "tracking_number": {"type": "string"}, "duplicate": {"type": "boolean"}},
    }
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "omnichannel", "version": __version__,
                 "description": "Citizens' complaints from every channel, routed to the OPD "
                                "that must act on them."},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/webhooks/api": {"post": {
                "summary": "Submit a citizen's message from a trusted system",
                "security": bearer,
                "requestBody": _json_body("ApiMessage"),
                "responses": {
                    "201": {"description": "stored durably", "content": {"application/json": {
                        "schema": {"$ref": _REF.format(model="Accepted")}}}},
                    "200": {"description": "already stored (repeated external_id)",
                            "content": {"application/json": {
                                "schema": {"$ref": _REF.format(model="Accepted")}}}},
                    "400": _error("malformed JSON"), "413": _error("body too large"),
                    "422": _error("invalid fields"), **_AUTH_ERRORS,
                },
            }},
            "/webhooks/telegram": {"post": {
                "summary": "Telegram Bot API webhook (an Update), for every configured bot",
                "parameters": [{"name": "X-Telegram-Bot-Api-Secret-Token", "in": "header",
                                "required": True, "schema": {"type": "string"},
                                "description": "the webhook secret of one configured bot"}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object",
                               "description": "https://core.telegram.org/bots/api#update"}}}},
                "responses": {"200": _ok("stored durably (or carried no message)"),
                              "400": _error("not a Telegram update"),
                              "403": _error("missing or wrong secret token"),
                              "413": _error("body too large"),
                              "503": _error("no bot configured")},
            }},
            "/webhooks/whatsapp": {
                "get": {
                    "summary": "WhatsApp Cloud API subscription handshake (Meta's dashboard)",
                    "parameters": [
                        {"name": "hub.mode", "in": "query", "required": True,
                         "schema": {"type": "string", "enum": ["subscribe"]}},
                        {"name": "hub.verify_token", "in": "query", "required": True,
                         "schema": {"type": "string"},
                         "description": "must equal whatsapp_verify_token"},
                        {"name": "hub.challenge", "in": "query", "required": True,
                         "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {"description": "hub.challenge, echoed",
                                "content": {"text/plain": {"schema": {"type": "string"}}}},
                        "403": _error("wrong hub.mode or hub.verify_token"),
                        "503": _error("no app secret or phone number configured"),
                    },
                },
                "post": {
                    "summary": "WhatsApp Cloud API webhook: citizens' messages and delivery "
                               "statuses, for every configured phone number",
                    "parameters": [{"name": "X-Hub-Signature-256", "in": "header",
                                    "required": True, "schema": {"type": "string"},
                                    "description": "sha256=<hex HMAC-SHA256 of the body with "
                                                   "the app secret>"}],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"type": "object", "description":
                                   "https://developers.facebook.com/documentation/"
                                   "business-messaging/whatsapp/webhooks/reference/messages"}}}},
                    "responses": {"200": _ok("stored durably (messages and statuses)"),
                                  "400": _error("malformed JSON"),
                                  "403": _error("missing, malformed or wrong signature"),
                                  "413": _error("body too large"),
                                  "422": _error("not a WhatsApp notification"),
                                  "503": _error("no app secret or phone number configured")},
                },
            },
            "/webhooks/twilio": {"post": {
                "summary": "Twilio webhook: inbound SMS and WhatsApp messages and status callbacks",
                "parameters": [{"name": "X-Twilio-Signature", "in": "header", "required": True,
                                "schema": {"type": "string"},
                                "description": "Twilio's signature of the public URL and every "
                                               "form field, by the account's auth token"}],
                "requestBody": {"required": True, "content": {
                    "application/x-www-form-urlencoded": {"schema": {
                        "type": "object", "additionalProperties": {"type": "string"},
                        "description": "https://www.twilio.com/docs/messaging/guides/"
                                       "webhook-request"}}}},
                "responses": {"200": {"description": "stored durably (or nothing to store): "
                                                     "empty TwiML",
                                      "content": {"text/xml": {"schema": {"type": "string"}}}},
                              "400": _error("a message without MessageSid, From or To"),
                              "403": _error("unknown AccountSid, missing or wrong signature"),
                              "413": _error("body too large"),
                              "503": _error("no Twilio account configured")},
            }},
            "/webhooks/xmpp": {"post": {
                "summary": "Not a webhook: the XMPP channel receives messages over its own "
                           "connection to the XMPP server",
                "responses": {"404": _error("the channel has no webhook")},
            }},
            "/webhooks/email": {"post": {
                "summary": "No webhook: e-mail arrives by SMTP from the organisation's relay "
                           "(email_smtp_host, email_smtp_port)",
                "responses": {"404": _error("the channel takes no webhook")},
            }},
            "/api/v1/conversations": {"get": {
                "summary": "List conversations, newest first",
                "security": bearer,
                "parameters": [
                    {"name": "queue", "in": "query", "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "schema": {
                        "type": "string", "enum": ["new", "open", "pending", "resolved",
                                                   "closed"]}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                 "maximum": 500}},
                    {"name": "before", "in": "query", "schema": _ID_SCHEMA},
                ],
                "responses": {"200": _ok("conversations"), "400": _error("bad filter"),
                              **_AUTH_ERRORS},
            }},
            "/api/v1/conversations/{id}": {"get": {
                "summary": "One conversation with its messages",
                "security": bearer, "parameters": [_ID],
                "responses": {"200": _ok("the conversation"), "404": _error("no such id"),
                              "400": _error("id is not an integer in range"),
                              **_AUTH_ERRORS},
            }},
            "/api/v1/conversations/{id}/messages": {"post": {
                "summary": "Reply to the citizen through the conversation's channel",
                "security": bearer, "parameters": [_ID],
                "requestBody": _json_body("ReplyRequest"),
                "responses": {"202": _ok("queued for delivery"), "404": _error("no such id"),
                              "400": _error("bad id, or body not JSON"),
                              "409": _error("no adapter sends on the conversation's channel"),
                              "422": _error("invalid fields; a template where the channel has "
                                            "none; free text after the channel's reply window "
                                            "closed (`reason: reply_window_closed`)"),
                              **_AUTH_ERRORS},
            }},
            "/api/v1/messages/{id}/attachments/{position}": {"get": {
                "summary": "A file the citizen sent, as fetched from the provider",
                "security": bearer,
                "parameters": [_ID, {"name": "position", "in": "path", "required": True,
                                     "schema": {"type": "integer", "minimum": 0}}],
                "responses": {"200": {"description": "the file, as an attachment download"},
                              "404": _error("no such attachment, or not fetched (yet)"),
                              "400": _error("id or position is not an integer in range"),
                              **_AUTH_ERRORS},
            }},
            "/api/v1/attachments": {"post": {
                "summary": "Upload a file to send with a reply; the body is the file itself",
                "security": bearer,
                "requestBody": {"required": True, "content": {"*/*": {
                    "schema": {"type": "string", "format": "binary"}}}},
                "responses": {"201": _ok("kept: `blob_id`, `content_type`, `size`"),
                              "400": _error("empty file"),
                              "413": _error("over `max_attachment_bytes`"),
                              "415": _error("no usable Content-Type"), **_AUTH_ERRORS},
            }},
            "/api/v1/messages/{id}/retry": {"post": {
                "summary": "Send a failed reply again",
                "security": bearer, "parameters": [_ID],
                "responses": {"202": _ok("queued for delivery again"),
                              "404": _error("no such id"),
                              "400": _error("id is not an integer in range"),
                              "409": _error("not a failed reply"), **_AUTH_ERRORS},
            }},
            "/api/v1/conversations/{id}/status": {"post": {
                "summary": "Change a conversation's status",
                "security": bearer, "parameters": [_ID],
                "requestBody": _json_body("StatusRequest"),
                "responses": {"200": _ok("changed"), "404": _error("no such id"),
                              "400": _error("bad id, or body not JSON"),
                              "409": _error("would open a second active conversation"),
                              "422": _error("invalid status"), **_AUTH_ERRORS},
            }},
            "/api/v1/events": {"get": {
                "summary": "Server-sent events of routed messages as they are confirmed",
                "security": bearer,
                "parameters": [{"name": "queue", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "text/event-stream of `routed` events"},
                              **_AUTH_ERRORS},
            }},
            "/api/v1/admin/rules/reload": {"post": {
                "summary": "Reload the routing rules file",
                "security": bearer,
                "responses": {"200": _ok("reloaded"),
                              "422": _error("invalid file; previous rules stay in force"),
                              **_AUTH_ERRORS},
            }},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _ok("alive")}}},
            "/readyz": {"get": {"summary": "Readiness of database and bus",
                                "responses": {"200": _ok("ready"), "503": _ok("not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text exposition"}}}},
            **WEBCHAT_PATHS,
        },
    }
