"""Text normalisation shared by the rules loader and the matcher: one pass from raw text to tokens.

Rules and messages go through the same steps, so whatever a step does to a word it does on both
sides, and a phrase in the rules file matches the way citizens spell it:

1. case folding (``"JALAN"`` -> ``"jalan"``);
2. accents: NFKD, combining marks dropped (``"café"`` -> ``"cafe"``);
3. tokens are runs of letters and digits; everything else (spaces, punctuation, emoji) separates
   them, so matching is always on whole words ("got" never matches inside "gotong");
4. runs of one repeated letter collapse to one (``"jalaaan"`` -> ``"jalan"``, ``"rusakkk"`` ->
   ``"rusak"``; real double letters collapse too, ``"taat"`` -> ``"tat"``, on both sides alike);
5. Indonesian reduplication written with a 2 repeats the word (``"anak2"`` -> ``anak anak``);
6. the enclitic ``-nya`` is dropped from words of six letters or more (``"jalannya"`` ->
   ``"jalan"``; short words such as ``"punya"`` or ``"hanya"`` keep it);
7. aliases from the rules file replace whole tokens (``jln`` -> ``jalan``, ``tdk`` -> ``tidak``);
   an alias may expand to several tokens and is applied once, not recursively.

Punctuation that ends a clause (``. , ; : ! ?`` and line breaks) is remembered so that a
negation word does not reach across it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

_WORD = re.compile(r"[^\W_]+")
_REPEAT = re.compile(r"([^\W\d_])\1+")
_REDUPLICATED = re.compile(r"([^\W\d_]{2,})2")
_BREAKS = frozenset(".,;:!?\n")
_WORD_OR_BREAK = re.compile(r"[^\W_]+|[.,;:!?\n]")
# Also a hyphen joining two words (a word directly after it is "hyphenated").
_WORD_BREAK_OR_HYPHEN = re.compile(r"[^\W_]+|[.,;:!?\n]|(?<=[^\W_])-(?=[^\W_])")
_BAD_STAR = re.compile(r"(?<![^\W_])\*|\*(?=[^\W_]|\*)")
_CACHE_LIMIT = 100_000


def fold(text: str) -> str:
    """Case- and accent-fold `text` (casefold, NFKD, combining marks dropped)."""
    text = text.casefold()
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _fold_with_offsets(text: str) -> tuple[str, list[int]]:
    """`fold(text)` and, for each character of the result, its index in `text`."""
    out: list[str] = []
    where: list[int] = []
    for i, char in enumerate(text):
        folded = fold(char)
        out.append(folded)
        where.extend([i] * len(folded))
    return "".join(out), where


def collapse_repeats(word: str) -> str:
    """Collapse each run of one repeated letter to a single letter (digits are kept)."""
    return _REPEAT.sub(r"\1", word)


def _base_forms(word: str) -> tuple[str, ...]:
    """Steps 4-6 on one folded word: repeats, reduplication with 2, the -nya enclitic."""
    match = _REDUPLICATED.fullmatch(word)
    if match:
        stem = _strip_nya(match.group(1))
        return (stem, stem)
    return (_strip_nya(word),)


def _strip_nya(word: str) -> str:
    """Collapse repeats and drop "-nya"; "izinnya" is "izin" (strip before collapsing nn)."""
    if len(word) >= 6 and word.endswith("nya"):
        return collapse_repeats(word[:-3])
    word = collapse_repeats(word)
    if len(word) >= 6 and word.endswith("nya"):
        return word[:-3]
    return word


@dataclass(frozen=True, slots=True)
class Tokens:
    """A normalised text: its tokens, where each came from, and clause numbers for negation."""

    words: tuple[str, ...]
    #: (start, end) character offsets of each token's source word in the original text.
    spans: tuple[tuple[int, int], ...]
    #: Clause number of each token; a clause ends at . , ; : ! ? or a line break.
    clauses: tuple[int, ...]
    original: str
    #: Whether a token is joined to the previous word by a hyphen ("di-PHK", "anak-anak").
    hyphenated: tuple[bool, ...] = ()

    def __len__(self) -> int:
        return len(self.words)

    def source(self, start: int, end: int) -> str:
        """The original text covered by tokens `start` to `end` (exclusive)."""
        if start >= end:
            return ""
        if not self.spans:  # tokenised without spans: show the normalised words
            return " ".join(self.words[start:end])
        return self.original[self.spans[start][0]:self.spans[end - 1][1]]


class Normaliser:
    """Turns text into `Tokens`; holds the aliases of one rules file and a per-word cache."""

    def __init__(self, aliases: Mapping[str, str] | None = None) -> None:
        self._aliases: dict[str, tuple[str, ...]] = {}
        for key, value in (aliases or {}).items():
            keys = self._plain(key)
            if len(keys) == 1:
                self._aliases[keys[0]] = self._plain(value)
        self._cache: dict[str, tuple[str, ...]] = {}

    def _plain(self, text: str) -> tuple[str, ...]:
        """Tokens of `text` without aliases (used for alias keys and values)."""
        out: list[str] = []
        for word in _WORD.findall(fold(text)):
            out.extend(_base_forms(word))
        return tuple(out)

    def word(self, raw: str) -> tuple[str, ...]:
        """The tokens one folded word becomes (usually one; aliases and ``anak2`` give more)."""
        cached = self._cache.get(raw)
        if cached is not None:
            return cached
        out: list[str] = []
        for form in _base_forms(raw):
            out.extend(self._aliases.get(form, (form,)))
        result = tuple(out)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[raw] = result
        return result

    def tokens(self, text: str, *, spans: bool = True) -> Tokens:
        """Normalise `text` into tokens with clause numbers and, if `spans`, source spans.

        Routing needs no spans (only explanations do), and skipping them is faster.
        """
        if not spans:
            return self._fast_tokens(text)
        folded = text.casefold()
        where: list[int] | None = None
        if not folded.isascii() or len(folded) != len(text):
            folded, where = _fold_with_offsets(text)
        words: list[str] = []
        places: list[tuple[int, int]] = []
        clauses: list[int] = []
        hyphenated: list[bool] = []
        clause = 0
        previous_end = -2
        for match in _WORD_OR_BREAK.finditer(folded):
            raw = match.group()
            if raw in _BREAKS:
                clause += 1
                continue
            start, end = match.span()
            joined = start == previous_end + 1 and folded[previous_end] == "-"
            previous_end = end
            span = (where[start], where[end - 1] + 1) if where is not None else (start, end)
            for n, word in enumerate(self.word(raw)):
                words.append(word)
                places.append(span)
                clauses.append(clause)
                hyphenated.append(joined and n == 0)
        return Tokens(tuple(words), tuple(places), tuple(clauses), text, tuple(hyphenated))

    def _fast_tokens(self, text: str) -> Tokens:
        folded = fold(text)
        words: list[str] = []
        clauses: list[int] = []
        hyphenated: list[bool] = []
        clause = 0
        joined = False
        cache = self._cache
        for raw in _WORD_BREAK_OR_HYPHEN.findall(folded):
            if raw in _BREAKS:
                clause += 1
                joined = False
                continue
            if raw == "-":
                joined = True
                continue
            forms = cache.get(raw) or self.word(raw)
            for word in forms:
                words.append(word)
                clauses.append(clause)
                hyphenated.append(joined)
                joined = False
        return Tokens(tuple(words), (), tuple(clauses), text, tuple(hyphenated))

    def phrase(self, text: str) -> tuple[tuple[str, bool], ...]:
        """A phrase from a rules file as (token, is_prefix) pairs; ``word*`` is a prefix.

        Raises ValueError when a ``*`` is anywhere but at the end of a word.
        """
        folded = fold(text)
        if _BAD_STAR.search(folded):
            raise ValueError("'*' may only end a word, as in sampah*")
        out: list[tuple[str, bool]] = []
        for match in _WORD.finditer(folded):
            prefix = folded.startswith("*", match.end())
            words = self.word(match.group()) if not prefix else _base_forms(match.group())
            out.extend((w, False) for w in words[:-1])
            out.append((words[-1], prefix))
        return tuple(out)
