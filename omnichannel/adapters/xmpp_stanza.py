"""XMPP message stanzas read into citizens' messages and delivery receipts; pure."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime

from slixmpp import JID, Message
from slixmpp.jid import InvalidJID

from omnichannel.model import DeliveryStatus, InboundMessage, Sender, StatusUpdate

CHANNEL = "xmpp"

#: slixmpp plugins whose stanza parts are read: disco (needed by receipts), chat states,
#: receipts (XEP-0184), delayed delivery (XEP-0203), carbons (XEP-0280), unique ids
#: (XEP-0359) and ping (XEP-0199).
PLUGINS = ("xep_0030", "xep_0085", "xep_0184", "xep_0199", "xep_0203", "xep_0280", "xep_0359")

#: Types of messages a person writes; `error`, `groupchat` and `headline` are not reports.
CHAT_TYPES = frozenset({"chat", "normal"})


def inbound_message(account: str, own: JID, stanza: Message, *, component: bool,
                    now: datetime) -> InboundMessage | None:
    """The citizen's message a stanza carries, or None for anything that is not one.

    Ignored: error, groupchat and headline types, carbons (copies of other sessions'
    traffic), our own messages, senders without a local part (servers and services), and
    empty bodies (chat states, receipts, typing notifications).
    """
    if stanza["type"] not in CHAT_TYPES:
        return None
    if _has(stanza, "carbon_received") or _has(stanza, "carbon_sent"):
        return None
    sender = stanza["from"]
    if not sender.user or _is_own(sender, own, component=component):
        return None
    text = stanza["body"]
    if not text.strip():
        return None
    # The sender's client picks ids, so they are unique only per sender: the bare JID is part
    # of the key, and one citizen cannot claim another's id. A message with no id at all
    # cannot be recognised when repeated, so it is stored as new.
    given = (stanza["origin_id"]["id"] if _has(stanza, "origin_id") else "") or stanza["id"]
    external_id = f"{sender.bare}/{given or 'anonymous-' + uuid.uuid4().hex}"
    sent_at = stanza["delay"]["stamp"] if _has(stanza, "delay") else None
    return InboundMessage(
        channel=CHANNEL, account=account, external_id=external_id,
        sender=Sender(id=sender.bare), text=text,
        # A server holding the message while we were away says when it arrived there.
        sent_at=sent_at or now,
        raw={"stanza": str(stanza)},
    )


def stanza_id(key: str, recipient: str, secret: bytes) -> str:
    """The id of a reply's stanza: stable across retries, and not one another JID can forge.

    Receipts name it; the keyed hash of the recipient in it lets only the recipient's own
    receipts (or bounces) move the reply's state.
    """
    tag = hmac.new(secret, f"{key}\n{recipient}".encode(), hashlib.sha256).hexdigest()[:16]
    return f"{key}-{tag}"


def receipt(account: str, stanza: Message, secret: bytes, *,
            now: datetime) -> StatusUpdate | None:
    """The delivery receipt (XEP-0184) or error bounce a stanza carries for one of our replies.

    A receipt or bounce counts only when it comes from the reply's recipient.
    """
    if stanza["type"] == "error":
        acked, status = stanza["id"], DeliveryStatus.FAILED
    elif _has(stanza, "receipt"):
        acked, status = stanza["receipt"], DeliveryStatus.DELIVERED
    else:
        return None
    if not acked or "-" not in acked:
        return None
    key = acked.rsplit("-", 1)[0]
    if not hmac.compare_digest(acked, stanza_id(key, stanza["from"].bare, secret)):
        return None
    error = None
    if status is DeliveryStatus.FAILED:
        condition = stanza["error"]["condition"] or "undefined-condition"
        text = stanza["error"]["text"]
        error = f"XMPP error {condition}" + (f": {text}" if text else "")
    return StatusUpdate(channel=CHANNEL, account=account, external_id=acked, status=status,
                        at=now, error=error)


def parse_jid(address: str) -> JID | None:
    """A JID from text, or None when it is not one."""
    try:
        return JID(address)
    except InvalidJID:
        return None


def _is_own(sender: JID, own: JID, *, component: bool) -> bool:
    # A component owns every address under its domain; a client only its own account.
    return sender.domain == own.domain if component else sender.bare == own.bare


def _has(stanza: Message, plugin: str) -> bool:
    """Whether the stanza carries an extension (without creating an empty one)."""
    return stanza.get_plugin(plugin, check=True) is not None
