"""Signed visitor tokens of the web-chat widget: who a browser is, kept in its localStorage.

A token carries the visitor's random id (their address on the channel), the widget it was
issued for and the details they chose to give. It is signed with `webchat_secret` by
itsdangerous and dated, so a forged or altered token is refused and an old one expires.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from pydantic import SecretStr

#: Separates these signatures from anything else signed with the same secret.
SALT = "omnichannel.webchat.visitor"


class TokenError(Exception):
    """The token is forged, altered, expired or issued for another widget."""


@dataclass(frozen=True, slots=True)
class Visitor:
    """A web-chat visitor as their token describes them."""

    id: str
    widget: str
    name: str | None = None
    phone: str | None = None
    email: str | None = None

    def has(self, field: str) -> bool:
        """Whether the visitor gave `field` (`name`, `phone` or `email`)."""
        return bool(getattr(self, field))

    def with_details(self, details: dict[str, str | None]) -> Visitor:
        """The same visitor with new details (`name`, `phone`, `email`)."""
        return Visitor(id=self.id, widget=self.widget,
                       name=details.get("name", self.name),
                       phone=details.get("phone", self.phone),
                       email=details.get("email", self.email))


class VisitorTokens:
    """Issues and reads visitors' tokens."""

    def __init__(self, secret: SecretStr, *, max_age_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret.get_secret_value(), salt=SALT)
        self._max_age_s = max_age_s

    @staticmethod
    def new_visitor(widget: str) -> Visitor:
        """A visitor never seen before, with a random id no one can guess."""
        return Visitor(id="v-" + secrets.token_urlsafe(16), widget=widget)

    def issue(self, visitor: Visitor) -> str:
        """A signed, dated token for `visitor`."""
        data: dict[str, Any] = {"v": visitor.id, "k": visitor.widget}
        for short, value in (("n", visitor.name), ("p", visitor.phone), ("e", visitor.email)):
            if value:
                data[short] = value
        return self._serializer.dumps(data)

    def read(self, token: str, widget: str) -> Visitor:
        """The visitor of a token issued for `widget`; `TokenError` otherwise."""
        try:
            data = self._serializer.loads(token, max_age=self._max_age_s)
        except SignatureExpired as exc:
            raise TokenError("the visitor token has expired") from exc
        except BadSignature as exc:
            raise TokenError("the visitor token is not valid") from exc
        if not isinstance(data, dict) or not isinstance(data.get("v"), str):
            raise TokenError("the visitor token is not valid")
        if data.get("k") != widget:
            raise TokenError("the visitor token belongs to another widget")
        return Visitor(id=data["v"], widget=widget, name=data.get("n"), phone=data.get("p"),
                       email=data.get("e"))
