"""Matching semantics on small rule files: phrases, negation, conditions, scoring, greetings."""

from __future__ import annotations

import pytest

from omnichannel.model import TRIAGE
from omnichannel.router import RuleSet, parse_rules

HEADER = """\
version: 1
opds:
  damkar: Pemadam Kebakaran
  dishub: Perhubungan
  pln: PLN
  perkim: Perkim
  pupr: PUPR
  dlhp: Lingkungan Hidup
  dikbud: Pendidikan
  inspektorat: Inspektorat
  dinkes: Kesehatan
aliases: {jln: jalan, tdk: tidak, seng: tidak}
negations: [bukan, tidak]
place_words: [di, depan]
greetings: [halo, min, selamat pagi, tes, p]
rules:
"""


def rules(body: str) -> RuleSet:
    return parse_rules(HEADER + body, "test.yaml")


def queue(ruleset: RuleSet, text: str, **source: str) -> str:
    return ruleset.route(text, **source).queue  # type: ignore[arg-type]


def test_phrases_match_despite_case_accents_and_repeated_letters() -> None:
    rs = rules("  - {name: jalan, queue: pupr, any: [jalan rusak]}\n")
    decision = rs.route("JALAAAN RUSAKKK di Batu Mérah!!!")
    assert decision.queue == "pupr"
    assert decision.rule == "jalan"
    assert '"jalan rusak"' in decision.reason
    assert queue(rs, "jln rusak") == "pupr"  # alias on the message side
    assert queue(rs, "jalan yang rusak") == TRIAGE  # a phrase is consecutive words


def test_word_boundaries_got_is_not_in_gotong() -> None:
    rs = rules("  - {name: got, queue: pupr, any: [got]}\n")
    assert queue(rs, "kerja bakti gotong royong") == TRIAGE
    assert queue(rs, "got tersumbat") == "pupr"


def test_prefix_phrase_matches_words_starting_with_it() -> None:
    rs = rules("  - {name: sampah, queue: dlhp, any: ['sampah*']}\n")
    assert queue(rs, "banyak sampahan di sini") == "dlhp"
    assert queue(rs, "sampa") == TRIAGE


def test_negation_discards_the_phrase_right_after_it() -> None:
    rs = rules(
        "  - {name: padam, queue: pln, any: [mati lampu]}\n"
        "  - {name: pju, queue: perkim, any: [lampu jalan]}\n"
    )
    assert queue(rs, "mati lampu lagi") == "pln"
    assert queue(rs, "bukan mati lampu, cuma lampu jalan yang mati") == "perkim"
    assert queue(rs, "seng mati lampu kok") == TRIAGE  # seng -> tidak by alias
    # a negation does not reach across punctuation
    assert queue(rs, "bukan, mati lampu dari pagi") == "pln"
    assert "negation" in rs.route("tdk mati lampu").reason


def test_a_phrase_that_starts_with_a_negation_is_not_negated() -> None:
    rs = rules("  - {name: air, queue: pupr, any: [tidak ada air]}\n")
    assert queue(rs, "sudah 3 hari tidak ada air") == "pupr"
    assert queue(rs, "seng ada air") == "pupr"


def test_negation_window_reaches_further_when_configured() -> None:
    body = "  - {name: api, queue: damkar, any: [kebakaran]}\n"
    assert queue(rules(body), "tidak ada kebakaran") == "damkar"
    wider = parse_rules(HEADER.replace("rules:\n", "negation_window: 2\nrules:\n") + body, "t")
    assert queue(wider, "tidak ada kebakaran") == TRIAGE


def test_all_groups_must_each_match_and_none_vetoes() -> None:
    rs = rules(
        "  - name: pungli-sekolah\n"
        "    queue: dikbud\n"
        "    all: [[pungli, minta uang], [sekolah, guru]]\n"
        "    none: [kantor]\n"
    )
    assert queue(rs, "ada pungli di sekolah") == "dikbud"
    assert queue(rs, "guru minta uang") == "dikbud"
    assert queue(rs, "ada pungli") == TRIAGE  # second group missing
    assert queue(rs, "pungli di sekolah dan di kantor") == TRIAGE  # exception
    assert queue(rs, "pungli di sekolah, bukan kantor") == "dikbud"  # negated exception


def test_any_and_all_combine() -> None:
    rs = rules("  - {name: r, queue: pupr, all: [jembatan], any: [rusak, patah]}\n")
    assert queue(rs, "jembatan patah") == "pupr"
    assert queue(rs, "jembatan baru") == TRIAGE
    assert queue(rs, "papan patah") == TRIAGE


def test_regex_runs_on_the_normalised_text() -> None:
    rs = rules(
        "  - name: nik\n"
        "    queue: dinkes\n"
        "    regex: ['\\bnik \\d{16}\\b']\n"
    )
    assert queue(rs, "NIK: 8171012345678901 tidak terdaftar") == "dinkes"
    assert queue(rs, "NIK 123") == TRIAGE


def test_regex_counts_like_an_any_phrase_and_is_gated_by_cheap_conditions() -> None:
    rs = rules(
        "  - name: jalan\n"
        "    queue: pupr\n"
        "    all: [jalan]\n"
        "    regex: ['lubang \\d+ meter']\n"
    )
    assert queue(rs, "jalan ada lubang 2 meter") == "pupr"
    assert queue(rs, "lubang 2 meter") == TRIAGE  # 'all' does not hold
    assert queue(rs, "jalan ada lubang") == TRIAGE  # regex (the only 'any') missing


def test_channel_account_and_sender_conditions() -> None:
    rs = rules(
        "  - {name: widget-dinkes, queue: dinkes, channel: [web], account: [dinkes-widget]}\n"
        "  - {name: vip, queue: inspektorat, sender: ['+62811000']}\n"
        "  - {name: wa-sampah, queue: dlhp, channel: [whatsapp], any: [sampah]}\n"
    )
    assert queue(rs, "obat habis", channel="web", account="dinkes-widget") == "dinkes"
    assert queue(rs, "obat habis", channel="web", account="other") == TRIAGE
    assert queue(rs, "obat habis", channel="sms", account="dinkes-widget") == TRIAGE
    assert queue(rs, "ada masalah", sender="+62811000") == "inspektorat"
    assert queue(rs, "ada masalah", sender="+62811001") == TRIAGE
    assert queue(rs, "sampah numpuk", channel="WhatsApp") == "dlhp"
    assert queue(rs, "sampah numpuk", channel="telegram") == TRIAGE
    assert "came through" in rs.route("obat", channel="web", account="dinkes-widget").reason


def test_lower_tier_wins_outright_fire_beside_traffic_jam() -> None:
    rs = rules(
        "  - {name: kebakaran, queue: damkar, tier: 1, any: [kebakaran, terbakar]}\n"
        "  - {name: macet, queue: dishub, weight: 3, any: [macet, lalu lintas, angkot]}\n"
    )
    text = "macet total, lalu lintas kacau, angkot tidak bisa lewat karena ada gudang terbakar"
    decision = rs.route(text)
    assert (decision.queue, decision.rule) == ("damkar", "kebakaran")
    assert "tier 1" in decision.reason
    assert queue(rs, "macet total di jalan") == "dishub"


def test_within_a_tier_the_highest_weighted_score_wins() -> None:
    rs = rules(
        "  - {name: sampah, queue: dlhp, any: [sampah, bau]}\n"
        "  - {name: jalan, queue: pupr, weight: 3, any: [jalan rusak]}\n"
    )
    assert queue(rs, "sampah, jalan rusak") == "pupr"  # 3 > 1
    assert queue(rs, "sampah bau, jalan rusak") == "pupr"  # 3 > 2
    heavier = rules(
        "  - {name: sampah, queue: dlhp, weight: 2, any: [sampah, bau]}\n"
        "  - {name: jalan, queue: pupr, weight: 3, any: [jalan rusak]}\n"
    )
    assert queue(heavier, "sampah bau, jalan rusak") == "dlhp"  # 4 > 3
    assert queue(heavier, "sampah, sampah, jalan rusak") == "pupr"  # a phrase counts once


def test_rules_of_one_queue_add_up_and_ties_go_to_the_earlier_rule() -> None:
    rs = rules(
        "  - {name: a, queue: dlhp, any: [sampah]}\n"
        "  - {name: b, queue: pupr, weight: 2, any: [got]}\n"
        "  - {name: c, queue: dlhp, any: [bau]}\n"
    )
    assert queue(rs, "got") == "pupr"  # 2 > 0
    assert queue(rs, "got, sampah") == "pupr"  # 2 > 1
    decision = rs.route("got, sampah, bau")  # 2 = 1 + 1: dlhp's first rule comes first
    assert (decision.queue, decision.rule) == ("dlhp", "a")
    assert "queue total 2" in decision.reason
    tie = rules(
        "  - {name: first, queue: dlhp, any: [sampah]}\n"
        "  - {name: second, queue: pupr, any: [got]}\n"
    )
    assert tie.route("got sampah").rule == "first"
    assert tie.route("sampah got").rule == "first"


def test_longest_match_wins_over_a_phrase_inside_it() -> None:
    rs = rules(
        "  - {name: pln, queue: pln, weight: 2, any: [listrik]}\n"
        "  - {name: pju, queue: perkim, any: [tiang listrik roboh]}\n"
    )
    assert queue(rs, "listrik padam") == "pln"
    assert queue(rs, "tiang listrik roboh") == "perkim"  # "listrik" inside does not count


def test_a_phrase_after_a_place_word_counts_half() -> None:
    rs = rules(
        "  - {name: sekolah, queue: dikbud, any: [sekolah]}\n"
        "  - {name: jalan, queue: pupr, any: [lubang]}\n"
    )
    assert queue(rs, "lubang depan sekolah") == "pupr"  # 1 > 0.5
    assert queue(rs, "sekolah ada lubang") == "dikbud"  # tie, dikbud rule first


@pytest.mark.parametrize("text", ["halo min", "Selamat pagi", "tes", "p", "🙏🙏", "?", "  ", ""])
def test_greetings_and_content_free_messages_go_to_triage(text: str) -> None:
    rs = rules("  - {name: pagi, queue: dishub, any: [pagi, min]}\n")
    decision = rs.route(text)
    assert decision.queue == TRIAGE
    assert decision.rule is None


def test_a_greeting_with_content_is_routed() -> None:
    rs = rules("  - {name: sampah, queue: dlhp, any: [sampah]}\n")
    assert queue(rs, "halo min, sampah belum diangkut") == "dlhp"


def test_no_match_is_triage_with_a_reason() -> None:
    rs = rules("  - {name: sampah, queue: dlhp, any: [sampah]}\n")
    decision = rs.route("saya mau bertanya soal hal lain")
    assert (decision.queue, decision.rule) == (TRIAGE, None)
    assert decision.reason == "no rule matched"


def test_routing_is_pure_and_repeatable() -> None:
    rs = rules("  - {name: sampah, queue: dlhp, any: [sampah]}\n")
    first = rs.route("sampah numpuk", channel="sms")
    assert all(rs.route("sampah numpuk", channel="sms") == first for _ in range(3))


def test_opds_always_include_triage() -> None:
    rs = rules("  - {name: sampah, queue: dlhp, any: [sampah]}\n")
    assert rs.opds["dlhp"] == "Lingkungan Hidup"
    assert "triage" in rs.opds


def test_prefix_words_inside_longer_phrases() -> None:
    rs = rules(
        "  - {name: a, queue: dlhp, any: ['sampah menumpuk*']}\n"
        "  - {name: b, queue: pupr, any: ['jalan* rusak parah']}\n"
    )
    assert queue(rs, "sampah menumpuknya") == "dlhp"
    assert queue(rs, "sampah banyak") == TRIAGE
    assert queue(rs, "jalanan rusak parah") == "pupr"
    assert queue(rs, "jalanan rusak") == TRIAGE


def test_regexes_between_slashes_in_all_any_and_none() -> None:
    rs = rules(
        "  - name: pungli\n"
        "    queue: inspektorat\n"
        "    all: [[pungli, '/minta \\d+ ?(rb|ribu)/'], [petugas, pegawai]]\n"
        "    none: ['/\\bsekolah\\b/']\n"
        "  - {name: nomor, queue: dinkes, any: ['/\\bnik \\d{16}\\b/']}\n"
    )
    decision = rs.route("Petugas minta 200rb untuk surat")
    assert decision.queue == "inspektorat"
    assert "/minta" in decision.reason and '"petugas"' in decision.reason
    assert queue(rs, "petugas minta tanda tangan") == TRIAGE
    assert queue(rs, "ada pungli oleh pegawai") == "inspektorat"
    assert queue(rs, "pegawai sekolah minta 50 ribu") == TRIAGE  # regex exception
    assert queue(rs, "NIK 8171012345678901 salah") == "dinkes"  # a regex-only rule
    out = rs.explain("pegawai minta 20 ribu")
    assert "all-groups matched by regex: /minta" in out
    missing = rs.explain("pegawai datang")
    assert "missing one of (all): [pungli, /minta" in missing


def test_di_joined_by_a_hyphen_is_a_prefix_not_a_place_word() -> None:
    rs = rules(
        "  - {name: phk, queue: inspektorat, any: [phk]}\n"
        "  - {name: jalan, queue: pupr, any: [lubang, retak]}\n"
    )
    assert queue(rs, "saya di-PHK, ada lubang") == "inspektorat"  # 1 = 1, first rule wins
    assert queue(rs, "saya di PHK, ada lubang") == "pupr"  # 0.5 < 1


def test_an_all_group_word_inside_a_longer_phrase_of_another_queue_does_not_count() -> None:
    rs = rules(
        "  - {name: pju, queue: perkim, any: [lampu jalan]}\n"
        "  - {name: jalan, queue: pupr, weight: 2, all: [jalan, [rusak, retak]]}\n"
        "  - {name: pungli, queue: dikbud, all: [pungli, sekolah]}\n"
        "  - {name: kepsek, queue: dikbud, any: [kepala sekolah]}\n"
    )
    assert queue(rs, "jalan depan rumah rusak") == "pupr"
    assert queue(rs, "lampu jalan rusak") == "perkim"  # "jalan" belongs to "lampu jalan"
    # the longer phrase is of the same queue: the group still holds
    assert rs.route("pungli oleh kepala sekolah").rule == "pungli"


SETTLED = HEADER.replace("rules:\n", "contrast_words: [tapi]\n"
                         "settled: [sudah bayar, normal, terima kasih]\nrules:\n")


def test_phrases_in_a_settled_clause_count_half_and_contrast_words_end_clauses() -> None:
    rs = parse_rules(SETTLED + "  - {name: pbb, queue: dlhp, weight: 3, any: [pbb]}\n"
                               "  - {name: jalan, queue: pupr, weight: 2, any: [jalan rusak]}\n",
                     "t.yaml")
    assert queue(rs, "pbb, jalan rusak") == "dlhp"  # 3 > 2
    assert queue(rs, "pbb sudah bayar, jalan rusak") == "pupr"  # 1.5 < 2
    assert queue(rs, "pbb normal tapi jalan rusak") == "pupr"  # "tapi" ends the clause
    assert queue(rs, "pbb tidak normal, jalan rusak") == "dlhp"  # a negated marker is not one
    assert queue(rs, "terima kasih. pbb, jalan rusak") == "dlhp"  # its own clause
    out = rs.explain("pbb sudah bayar, jalan rusak")
    assert '"pbb" [in a clause saying it is fine or done: counts 1.5]' not in out
    assert "[in a clause saying it is fine or done: counts 0.5]" in out


def test_a_phrase_after_a_cause_word_counts_half() -> None:
    rs = parse_rules(HEADER.replace("rules:\n", "cause_words: [karena, akibat]\nrules:\n")
                     + "  - {name: pbb, queue: dlhp, any: [pbb]}\n"
                       "  - {name: gempa, queue: pupr, any: [gempa]}\n", "t.yaml")
    assert queue(rs, "gempa, pbb") == "dlhp"  # tie: the first rule
    assert queue(rs, "gempa dan pbb") == "dlhp"
    assert queue(rs, "pbb rumah rusak akibat gempa") == "dlhp"  # 1 > 0.5
    assert queue(rs, "gempa rusak rumah karena pbb") == "pupr"  # 1 > 0.5
