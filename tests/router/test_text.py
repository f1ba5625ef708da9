"""Normalisation: case, accents, repeated letters, word boundaries, aliases, clause breaks."""

from __future__ import annotations

import pytest

from omnichannel.router.text import Normaliser, collapse_repeats, fold


def words(text: str, aliases: dict[str, str] | None = None) -> tuple[str, ...]:
    return Normaliser(aliases).tokens(text).words


def test_case_and_accents_fold_away() -> None:
    assert fold("JALAN Café Über") == "jalan cafe uber"
    assert words("SÉLOKAN Tersumbat") == ("selokan", "tersumbat")


@pytest.mark.parametrize(("raw", "expected"), [
    ("jalaaan", "jalan"), ("rusakkk", "rusak"), ("saakit", "sakit"), ("sakit", "sakit"),
    ("tolooong", "tolong"), ("taat", "tat"), ("2000", "2000"),
])
def test_runs_of_one_letter_collapse(raw: str, expected: str) -> None:
    assert collapse_repeats(raw) == expected


def test_letter_repetition_is_the_same_on_both_sides() -> None:
    normaliser = Normaliser()
    assert normaliser.tokens("jalaaan rusakkk!!").words == tuple(
        t for t, _ in normaliser.phrase("jalan rusak"))


def test_tokens_are_whole_words_and_punctuation_or_emoji_separate_them() -> None:
    assert words("gotong-royong😀got.selokan") == ("gotong", "royong", "got", "selokan")
    assert "got" not in words("gotong royong")


def test_reduplication_with_2_and_the_nya_enclitic() -> None:
    assert words("anak2 sekolahnya") == ("anak", "anak", "sekolah")
    assert words("punya hanya") == ("punya", "hanya")  # short words keep "nya"


def test_aliases_replace_whole_tokens_once_and_may_expand() -> None:
    aliases = {"jln": "jalan", "pju": "penerangan jalan umum", "jalan": "street"}
    assert words("Jln rusak, PJU mati", aliases) == (
        "jalan", "rusak", "penerangan", "jalan", "umum", "mati")
    assert words("jlnnn", aliases) == ("jalan",)  # repetition collapses before the alias


def test_spans_point_back_to_the_original_text_even_with_accents() -> None:
    tokens = Normaliser({"jln": "jalan"}).tokens("Ada café di jln Baru")
    assert tokens.source(1, 2) == "café"
    assert tokens.source(3, 5) == "jln Baru"


def test_clause_breaks_are_numbered() -> None:
    tokens = Normaliser().tokens("bukan, mati lampu. lagi\nbaru")
    assert tokens.clauses == (0, 1, 1, 2, 3)


def test_prefix_star_only_at_the_end_of_a_word() -> None:
    normaliser = Normaliser()
    assert normaliser.phrase("sampah* liar") == (("sampah", True), ("liar", False))
    for bad in ("sam*pah", "*sampah", "sampah**"):
        with pytest.raises(ValueError, match=r"\*"):
            normaliser.phrase(bad)


def test_the_fast_path_for_routing_gives_the_same_tokens() -> None:
    normaliser = Normaliser({"jln": "jalan", "pju": "penerangan jalan umum"})
    texts = [
        "Jalaaan rusakkk di jln Sudirman!! anak2 di-PHK, PJU mati.\nCafé ÜBER ß gotong-royong",
        "saya di - PHK; lalu -baru - lagi", "🙏🙏", "", "a-b-c d--e f.-g",
    ]
    for text in texts:
        slow, fast = normaliser.tokens(text), normaliser.tokens(text, spans=False)
        assert (fast.words, fast.clauses, fast.hyphenated) == (
            slow.words, slow.clauses, slow.hyphenated), text
    tokens = normaliser.tokens("saya di-PHK kemarin")
    assert tokens.hyphenated == (False, False, True, False)


def test_nya_after_a_final_n_keeps_the_n() -> None:
    assert words("jalannya izinnya tagihannya bulannya") == ("jalan", "izin", "tagihan", "bulan")
    assert words("jalaaannya sekolahnyaaa") == ("jalan", "sekolah")
