"""Phone numbers normalise to E.164 however citizens and providers write them."""

from __future__ import annotations

import pytest

from omnichannel.phones import normalise_phone


@pytest.mark.parametrize(
    "raw",
    ["0812-3456-7890", "081234567890", "62812 3456 7890", "6281234567890",
     "+62 812-3456-7890", "whatsapp:+6281234567890", "tel:+62-812-3456-7890"],
)
def test_indonesian_numbers_are_one_number(raw: str) -> None:
    assert normalise_phone(raw) == "+6281234567890"


def test_foreign_numbers_keep_their_country() -> None:
    assert normalise_phone("+1 415 555 2671") == "+14155552671"
    assert normalise_phone("0412 345 678", region="AU") == "+61412345678"


@pytest.mark.parametrize("raw", ["12345", "abc", "", "+62 1"])
def test_what_is_not_a_number_is_refused(raw: str) -> None:
    assert normalise_phone(raw) is None
