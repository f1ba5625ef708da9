"""Phone numbers in one form (E.164), so one citizen on several channels is one contact."""

from __future__ import annotations

import phonenumbers

#: Prefixes providers put before a number (Twilio's WhatsApp addresses, tel: URIs).
_PREFIXES = ("whatsapp:", "tel:", "sms:")


def normalise_phone(raw: str, region: str = "ID") -> str | None:
    """`raw` as an E.164 number (`+6281234567890`), or None when it is not a valid number.

    `region` is the country assumed for numbers written nationally (`0812...`); numbers
    written with their country code but no `+` (`62812...`) are read as such too.
    """
    text = raw.strip()
    for prefix in _PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
    candidates = [text]
    if text[:1].isdigit() and not text.startswith("0"):
        candidates.append("+" + text)
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None
