"""HTTP helpers shared by every route: JSON errors, bearer tokens, bounded bodies."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any, NoReturn

import orjson
from aiohttp import web
from pydantic import SecretStr


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response rendered with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


_ERRORS: dict[int, type[web.HTTPException]] = {
    cls.status_code: cls
    for cls in (
        web.HTTPBadRequest, web.HTTPUnauthorized, web.HTTPForbidden, web.HTTPNotFound,
        web.HTTPConflict, web.HTTPUnsupportedMediaType, web.HTTPUnprocessableEntity,
        web.HTTPServiceUnavailable, web.HTTPInternalServerError,
    )
}


def fail(status: int, message: str, **extra: Any) -> NoReturn:
    """Stop handling the request with a JSON error body that says why."""
    text = orjson.dumps({"error": message, **extra}).decode()
    if status == 413:
        raise web.HTTPRequestEntityTooLarge(
            max_size=extra["limit"], actual_size=extra["size"], text=text,
            content_type="application/json",
        )
    raise _ERRORS[status](text=text, content_type="application/json")


def bearer_problem(headers: Mapping[str, str], token: SecretStr) -> str | None:
    """Why `headers` do not carry `token` as a bearer token (constant-time check), or None."""
    scheme, _, given = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return "missing bearer token in the Authorization header"
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        return "invalid bearer token"
    return None


def require_bearer(request: web.Request, token: SecretStr | None, what: str) -> None:
    """Refuse the request unless it carries `token` as a bearer token."""
    if token is None:
        fail(503, f"{what} is disabled: no token is configured")
    problem = bearer_problem(request.headers, token)
    if problem is not None:
        fail(401, problem)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 when it is larger than `limit` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        fail(413, f"body of {declared} bytes exceeds the limit of {limit} bytes",
             limit=limit, size=declared)
    # `read(n)` returns what has arrived so far, up to n: a body sent in several chunks is
    # read until its end (or until it is over the limit).
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        fail(413, f"body exceeds the limit of {limit} bytes", limit=limit, size=size)
    return b"".join(chunks)


def decode_json(body: bytes) -> Any:
    """Decode a JSON body; `ValueError` saying why when it is empty or malformed."""
    if not body:
        raise ValueError("empty body: a JSON object is required")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON: {exc}") from exc


def parse_json(body: bytes) -> Any:
    """Decode a JSON body, refused with 400 and the parser's reason when malformed."""
    try:
        return decode_json(body)
    except ValueError as exc:
        fail(400, str(exc))
