"""The compiled matcher: routes one message in time that grows with its length, not the rules.

How it is compiled (once per rules load):

* every phrase of every rule (``any``, ``all``, ``none``) is normalised once and interned; a
  phrase used by several rules is matched once and credited to each;
* a **phrase index** maps the first token of each phrase to the one-word phrases, and the
  first two tokens to the longer phrases starting with them (phrases starting with a ``word*``
  prefix sit in a second index keyed by prefix length and prefix);
* each phrase knows which rules use it and how (``any``, which ``all`` group, ``none``);
* rules without positive phrases (only a regex, or only channel/account/sender) are indexed by
  their most selective source condition (account, else sender, else channel); rules with no
  such condition either are kept in a short list checked for every message.

How a message is routed:

1. the text is normalised into tokens once (`omnichannel.router.text`);
2. a message made only of greetings/fillers (or of no words at all) goes to triage;
3. for each token position the index gives the few phrases that can start there; each is
   checked token by token. A match whose first token follows a negation word in the same
   clause (within ``negation_window`` tokens) is recorded as discarded, unless the phrase itself
   begins with a negation ("tidak ada air" is a phrase of its own);
4. only the rules touched by a match (plus the source-indexed ones for this channel, account
   and sender) are evaluated: source conditions, no ``none`` phrase, every ``all`` group, then
   -- only for rules whose cheap conditions hold -- their regular expressions (``regex`` and
   ``/.../`` items), run on the normalised text (tokens joined by single spaces). A rule that
   can fire on a regex alone is therefore checked on every message: keep regexes few, or pair
   them with an ``all`` phrase or a channel so that they run only when that holds;
5. longest match wins: an ``any`` match lying inside a longer ``any`` match (of any rule) does
   not count, so "harga sembako" is not also "sembako"; a match right after a place word
   ("di", "depan") counts half, as it names where rather than what, and so does a match in a
   clause with a "settled" phrase ("sudah bayar", "normal"); contrast words ("tapi") end a
   clause as punctuation does;
6. a rule that fires scores ``weight`` times its pieces of evidence: each distinct ``any``
   phrase, each ``all`` group and each regex that matched (a rule with only source conditions
   counts one). The lowest tier among fired rules wins outright; within it the rules naming the
   same queue add up their scores, the highest total wins, and a tie goes to the queue whose
   first fired rule comes earlier in the file. The deciding rule is that queue's best rule.

So the work per message is the number of tokens times the (small) number of phrases starting
with each token, plus the rules those phrases touch -- independent of how many rules there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from omnichannel.model import TRIAGE, RouteDecision
from omnichannel.router.rules import PLACE_FACTOR as _PLACE_FACTOR
from omnichannel.router.rules import SETTLED_FACTOR as _SETTLED_FACTOR
from omnichannel.router.text import Normaliser, Tokens

if TYPE_CHECKING:
    import re

    from omnichannel.router.rules import Lexicon, Pattern, Rule

_ANY, _ALL, _NONE = 0, 1, 2


def format_number(value: float) -> str:
    """A weight or score without a useless ``.0``."""
    return f"{value:g}"


@dataclass(slots=True)
class Hit:
    """One occurrence of a phrase in the message (token positions, end exclusive)."""

    text: str
    start: int
    end: int
    #: Token position of the negation word that discards this hit, if any.
    negated_by: int | None = None
    #: What it counts: 1, or less after a place word or in a settled clause.
    factor: float = 1.0
    #: Whether it follows a place word ("di", "depan", ...): it names where, not what.
    place: bool = False
    #: Whether its clause says the topic is fine or done ("sudah bayar", "normal").
    settled: bool = False


@dataclass(slots=True)
class RuleResult:
    """How one candidate rule fared on a message (filled in detail only for `explain`)."""

    rule: Rule
    fired: bool
    score: float = 0.0
    matched: list[Hit] = field(default_factory=list)
    negated: list[Hit] = field(default_factory=list)
    shadowed: list[Hit] = field(default_factory=list)
    groups_matched: list[Hit] = field(default_factory=list)
    groups_missing: list[tuple[str, ...]] = field(default_factory=list)
    groups_missing_by_index: list[tuple[str, ...]] = field(default_factory=list)
    group_regex_matched: list[str] = field(default_factory=list)
    exceptions: list[Hit] = field(default_factory=list)
    regex_matched: list[str] = field(default_factory=list)
    source_ok: bool = True
    why_not: str = ""


@dataclass(slots=True)
class Evaluation:
    """Everything known about routing one message; `decision` is what `route` returns."""

    tokens: Tokens
    decision: RouteDecision
    greeting: bool = False
    results: list[RuleResult] = field(default_factory=list)
    #: Tier that decided, and the score of every queue in it.
    tier: int | None = None
    totals: dict[str, float] = field(default_factory=dict)


class _State:
    """Phrase hits of one rule while a message is scanned."""

    __slots__ = ("any_hits", "exceptions", "groups", "negated", "shadowed")

    def __init__(self) -> None:
        #: phrase id -> (start, end, factor, after a place word, in a settled clause).
        self.any_hits: dict[int, tuple[int, int, float, bool, bool]] = {}
        self.shadowed: list[tuple[int, int, int]] = []
        self.groups: dict[int, tuple[int, int, int]] = {}
        self.exceptions: list[tuple[int, int, int]] = []
        self.negated: list[tuple[int, int, int, int]] = []


class Matcher:
    """Rules compiled into a phrase index; `evaluate` routes one message."""

    def __init__(self, rules: Sequence[Rule], lexicon: Lexicon, normaliser: Normaliser) -> None:
        self.rules = tuple(rules)
        self.normaliser = normaliser
        self.negations = lexicon.negations
        self.window = lexicon.negation_window
        # Place and cause words work alike: the phrase after them says where or why, not what.
        self.places = lexicon.place_words | lexicon.cause_words
        self._patterns: list[Pattern] = []
        self._texts: list[str] = []
        self._usage: list[list[tuple[int, int, int]]] = []
        self._exact: dict[str, list[int]] = {}
        self._pairs: dict[str, dict[str, list[int]]] = {}
        self._check: list[bool] = []
        self._prefix: dict[int, dict[str, list[int]]] = {}
        self._starts_negated: list[bool] = []
        self._starts_place: list[bool] = []
        self._positive: list[bool] = []
        self._any_queues: list[frozenset[str]] = []
        ids: dict[Pattern, int] = {}

        def intern(text: str, pattern: Pattern) -> int:
            pid = ids.get(pattern)
            if pid is None:
                pid = ids[pattern] = len(self._patterns)
                self._patterns.append(pattern)
                self._texts.append(text)
                self._usage.append([])
                first, is_prefix = pattern[0]
                if is_prefix:
                    self._prefix.setdefault(len(first), {}).setdefault(first, []).append(pid)
                elif len(pattern) > 1 and not pattern[1][1]:
                    # Longer phrases are indexed by their first two words: fewer to check.
                    self._pairs.setdefault(first, {}).setdefault(pattern[1][0], []).append(pid)
                else:
                    self._exact.setdefault(first, []).append(pid)
                # Whether the index alone does not prove the match (words beyond the key).
                self._check.append(len(pattern) > 2 or (len(pattern) == 2 and (
                    is_prefix or pattern[1][1])))
                self._starts_negated.append(not is_prefix and first in self.negations)
                self._starts_place.append(not is_prefix and first in self.places)
                self._positive.append(False)
                self._any_queues.append(frozenset())
            return pid

        self._by_account: dict[str, list[int]] = {}
        self._by_sender: dict[str, list[int]] = {}
        self._by_channel: dict[str, list[int]] = {}
        self._always: list[int] = []
        for r, rule in enumerate(rules):
            for phrase in rule.any_of:
                pid = intern(phrase.text, phrase.pattern)
                self._usage[pid].append((r, _ANY, 0))
                self._positive[pid] = True
                self._any_queues[pid] = self._any_queues[pid] | {rule.queue}
            for g, group in enumerate(rule.all_of):
                for phrase in group:
                    pid = intern(phrase.text, phrase.pattern)
                    self._usage[pid].append((r, _ALL, g))
            for phrase in rule.none_of:
                self._usage[intern(phrase.text, phrase.pattern)].append((r, _NONE, 0))
            # A rule that can fire without any phrase hit must be found another way.
            if any(not regexes for regexes in rule.all_regex) or (
                    rule.any_of and not rule.regex):
                continue
            if rule.account:
                for value in rule.account:
                    self._by_account.setdefault(value, []).append(r)
            elif rule.sender:
                for value in rule.sender:
                    self._by_sender.setdefault(value, []).append(r)
            elif rule.channel:
                for value in rule.channel:
                    self._by_channel.setdefault(value, []).append(r)
            else:
                self._always.append(r)
        self._prefix_lengths = sorted(self._prefix)

        self._greetings: dict[str, list[Pattern]] = {}
        for phrase in sorted(lexicon.greetings, key=lambda p: -len(p.pattern)):
            self._greetings.setdefault(phrase.pattern[0][0], []).append(phrase.pattern)
        self._greeting_prefixes = [p.pattern for p in lexicon.greetings if p.pattern[0][1]]
        self.contrast = lexicon.contrast_words
        self._settled: dict[str, list[Pattern]] = {}
        for phrase in lexicon.settled:
            self._settled.setdefault(phrase.pattern[0][0], []).append(phrase.pattern)

    # -- scanning ----------------------------------------------------------------------------

    @staticmethod
    def _matches_at(words: tuple[str, ...], i: int, pattern: Pattern) -> bool:
        if i + len(pattern) > len(words):
            return False
        for j, (token, is_prefix) in enumerate(pattern):
            word = words[i + j]
            if is_prefix:
                if not word.startswith(token):
                    return False
            elif word != token:
                return False
        return True

    def is_greeting(self, words: tuple[str, ...]) -> bool:
        """Whether the words are all greetings or fillers (or there are none)."""
        i = 0
        while i < len(words):
            candidates = self._greetings.get(words[i], [])
            if self._greeting_prefixes:
                candidates = candidates + self._greeting_prefixes
            for pattern in candidates:
                if self._matches_at(words, i, pattern):
                    i += len(pattern)
                    break
            else:
                return False
        return True

    def _clauses(self, tokens: Tokens) -> list[int]:
        """Clause number of each token: punctuation and contrast words ("tapi") end a clause."""
        if not self.contrast:
            return list(tokens.clauses)
        out = []
        extra = 0
        for word, clause in zip(tokens.words, tokens.clauses, strict=True):
            if word in self.contrast:
                extra += 1
            out.append(clause + extra)
        return out

    def _settled_clauses(self, words: tuple[str, ...], clauses: list[int],
                         negated: list[int]) -> set[int]:
        """Clauses holding a phrase that says the topic is fine or done (not negated)."""
        found: set[int] = set()
        for i, word in enumerate(words):
            for pattern in self._settled.get(word, ()):
                if (len(pattern) == 1 or self._matches_at(words, i, pattern)) and (
                        negated[i] < 0 or pattern[0][0] in self.negations):
                    found.add(clauses[i])
        return found

    def _context(self, tokens: Tokens, clauses: list[int], words_set: frozenset[str],
                 window: int) -> list[int]:
        """For each token, the position of a word of `words_set` governing it, else -1.

        A word joined to the next by a hyphen is a prefix there ("di-PHK"), not a word.
        """
        words, hyphenated = tokens.words, tokens.hyphenated
        out = [-1] * len(words)
        if not window or not words_set:
            return out
        for i, word in enumerate(words):
            if word in words_set:
                for k in range(i + 1, min(i + 1 + window, len(words))):
                    if clauses[k] != clauses[i] or (k == i + 1 and hyphenated[k]):
                        break
                    if out[k] < 0:
                        out[k] = i
        return out

    def _scan(self, tokens: Tokens) -> dict[int, _State]:
        words = tokens.words
        exact, pairs, prefix, lengths = self._exact, self._pairs, self._prefix, self._prefix_lengths
        patterns, check = self._patterns, self._check
        found: list[tuple[int, int, int]] = []
        last = len(words) - 1
        for i, word in enumerate(words):
            candidates = exact.get(word)
            if i < last:
                following = pairs.get(word)
                if following is not None:
                    more = following.get(words[i + 1])
                    if more:
                        candidates = more if candidates is None else candidates + more
            if lengths:
                extra: list[int] = []
                for length in lengths:
                    if length > len(word):
                        break
                    hit = prefix[length].get(word[:length])
                    if hit:
                        extra.extend(hit)
                if extra:
                    candidates = (candidates or []) + extra
            if not candidates:
                continue
            for pid in candidates:
                pattern = patterns[pid]
                if not check[pid] or self._matches_at(words, i, pattern):
                    found.append((pid, i, i + len(pattern)))
        if not found:
            return {}

        # Longest match wins: a match inside a longer `any` match does not count (for an
        # `all` group, only when the longer phrase belongs to another queue).
        positive = self._positive
        reach = [0] * (len(words) + 1)
        longest = 1
        for pid, start, end in found:
            if positive[pid]:
                reach[start] = max(reach[start], end)
                longest = max(longest, end - start)
        rules = self.rules
        clauses = self._clauses(tokens)
        negated = self._context(tokens, clauses, self.negations, self.window)
        places = self._context(tokens, clauses, self.places, 1)
        settled = self._settled_clauses(words, clauses, negated) if self._settled else set()
        usage, starts_negated, starts_place = self._usage, self._starts_negated, self._starts_place
        states: dict[int, _State] = {}
        for pid, start, end in found:
            shadowed = reach[start] > end or any(
                reach[k] >= end for k in range(max(0, start - longest), start))
            by = negated[start] if not starts_negated[pid] else -1
            after_place = places[start] >= 0 and not starts_place[pid]
            in_settled = bool(settled) and clauses[start] in settled
            factor = (_PLACE_FACTOR if after_place else 1.0) * (
                _SETTLED_FACTOR if in_settled else 1.0)
            for r, kind, group in usage[pid]:
                state = states.get(r)
                if state is None:
                    state = states[r] = _State()
                if by >= 0:
                    state.negated.append((pid, start, end, by))
                elif kind == _ANY:
                    if shadowed:
                        state.shadowed.append((pid, start, end))
                    elif pid not in state.any_hits or state.any_hits[pid][2] < factor:
                        state.any_hits[pid] = (start, end, factor, after_place, in_settled)
                elif kind == _ALL:
                    if shadowed and self._shadowed_by_other_queue(
                            found, start, end, rules[r].queue):
                        continue
                    state.groups.setdefault(group, (pid, start, end))
                else:
                    state.exceptions.append((pid, start, end))
        return states

    def _shadowed_by_other_queue(self, found: list[tuple[int, int, int]], start: int, end: int,
                                 queue: str) -> bool:
        """Whether a longer `any` match of a queue other than `queue` covers start..end."""
        for pid, s, e in found:
            if s <= start and end <= e and e - s > end - start and \
                    self._any_queues[pid] - {queue}:
                return True
        return False

    def _candidates(self, states: dict[int, _State], channel: str | None, account: str | None,
                    sender: str | None) -> list[int]:
        found = set(states)
        if account is not None and account in self._by_account:
            found.update(self._by_account[account])
        if sender is not None and sender in self._by_sender:
            found.update(self._by_sender[sender])
        if channel is not None:
            found.update(self._by_channel.get(channel.casefold(), ()))
        found.update(self._always)
        return sorted(found)

    # -- deciding ----------------------------------------------------------------------------

    def evaluate(self, text: str, channel: str | None, account: str | None,
                 sender: str | None, *, detail: bool = False) -> Evaluation:
        """Route `text`; with `detail`, keep a `RuleResult` for every rule that was looked at."""
        tokens = self.normaliser.tokens(text, spans=detail)
        if self.is_greeting(tokens.words):
            why = ("greeting or filler only" if tokens.words else "no words in the message")
            return Evaluation(tokens, RouteDecision(TRIAGE, None, why), greeting=True)

        states = self._scan(tokens)
        text_for_regex = _Joined(tokens)
        fired: list[tuple[Rule, float, _State, list[str]]] = []
        results: list[RuleResult] = []
        empty = _State()
        for r in self._candidates(states, channel, account, sender):
            rule = self.rules[r]
            state = states.get(r, empty)
            result = RuleResult(rule, False) if detail else None
            if result is not None:
                self._describe_hits(tokens, state, result)
            why_not, regex_hits, group_hits = self._judge(
                rule, state, text_for_regex, channel, account, sender)
            if result is not None:
                result.source_ok = rule.source_matches(channel, account, sender)
                result.regex_matched = regex_hits
                result.group_regex_matched = group_hits
                result.groups_missing = [
                    group for g, group in enumerate(result.groups_missing_by_index)
                    if g not in state.groups and not _any_search(rule.all_regex[g],
                                                                   text_for_regex)]
                result.why_not = why_not
                results.append(result)
            if why_not:
                continue
            evidence = sum(hit[2] for hit in state.any_hits.values())
            evidence += len(rule.all_of) + len(regex_hits)
            if not rule.has_text_conditions:
                evidence = 1.0
            score = round(rule.weight * evidence, 6)
            fired.append((rule, score, state, [f"/{p}/" for p in regex_hits + group_hits]))
            if result is not None:
                result.fired = True
                result.score = score

        if not fired:
            why = "no rule matched"
            if any(s.negated for s in states.values()):
                why += " (some phrases were discarded by negation)"
            return Evaluation(tokens, RouteDecision(TRIAGE, None, why), results=results)

        tier = min(rule.tier for rule, _, _, _ in fired)
        totals: dict[str, float] = {}
        best: dict[str, tuple[float, Rule, _State, list[str]]] = {}
        first: dict[str, int] = {}
        for rule, score, state, patterns in fired:
            if rule.tier != tier:
                continue
            totals[rule.queue] = round(totals.get(rule.queue, 0.0) + score, 6)
            first.setdefault(rule.queue, rule.index)
            if rule.queue not in best or score > best[rule.queue][0]:
                best[rule.queue] = (score, rule, state, patterns)
        queue = max(totals, key=lambda q: (totals[q], -first[q]))
        score, rule, state, patterns = best[queue]
        reason = self._reason(rule, score, totals[queue], state, patterns, channel, account,
                              sender)
        return Evaluation(tokens, RouteDecision(queue, rule.name, reason), results=results,
                          tier=tier, totals=totals)

    def _judge(self, rule: Rule, state: _State, text: _Joined, channel: str | None,
               account: str | None, sender: str | None) -> tuple[str, list[str], list[str]]:
        """Why `rule` does not fire ("" if it does), its regex hits, its group regex hits.

        Cheap conditions first; regexes run only for rules whose other conditions hold.
        """
        if not rule.source_matches(channel, account, sender):
            return "channel/account/sender does not match", [], []
        if state.exceptions:
            return "an exception ('none') matched", [], []
        group_hits: list[str] = []
        for g, patterns in enumerate(rule.all_regex):
            if g in state.groups:
                continue
            hit = next((p.pattern for p in patterns if p.search(text.value) is not None), None)
            if hit is None:
                return "an 'all' group is missing", [], group_hits
            group_hits.append(hit)
        regex_hits = [p.pattern for p in rule.regex if p.search(text.value) is not None]
        if (rule.any_of or rule.regex) and not state.any_hits and not regex_hits:
            if state.negated or state.shadowed:
                return ("its phrases occur only negated or inside longer phrases",
                        regex_hits, group_hits)
            return "no 'any' phrase or regex matched", regex_hits, group_hits
        if any(p.search(text.value) is not None for p in rule.none_regex):
            return "an exception ('none') matched", regex_hits, group_hits
        return "", regex_hits, group_hits

    def _reason(self, rule: Rule, score: float, total: float, state: _State,
                patterns: list[str], channel: str | None, account: str | None,
                sender: str | None) -> str:
        parts = [f'"{self._texts[pid]}"' for pid in state.any_hits]
        parts += [f'"{self._texts[pid]}"' for pid, _, _ in state.groups.values()]
        parts += patterns
        if parts:
            what = "matched " + ", ".join(dict.fromkeys(parts))
        else:
            source = [f"{k} {v}" for k, v, cond in (("channel", channel, rule.channel),
                                                     ("account", account, rule.account),
                                                     ("sender", sender, rule.sender)) if cond]
            what = "came through " + ", ".join(source)
        numbers = f"tier {rule.tier}, weight {format_number(rule.weight)}, " \
                  f"score {format_number(score)}"
        if total != score:
            numbers += f", queue total {format_number(total)}"
        return f"{what} ({numbers})"

    def _describe_hits(self, tokens: Tokens, state: _State, result: RuleResult) -> None:
        texts = self._texts
        result.matched = [Hit(texts[pid], s, e, factor=f, place=p, settled=d)
                          for pid, (s, e, f, p, d) in state.any_hits.items()]
        result.shadowed = [Hit(texts[pid], s, e) for pid, s, e in state.shadowed]
        result.groups_matched = [Hit(texts[pid], s, e) for pid, s, e in state.groups.values()]
        result.exceptions = [Hit(texts[pid], s, e) for pid, s, e in state.exceptions]
        result.negated = [Hit(texts[pid], s, e, by) for pid, s, e, by in state.negated]
        result.groups_missing_by_index = [
            tuple(p.text for p in group) + tuple(f"/{r.pattern}/" for r in regexes)
            for group, regexes in zip(result.rule.all_of, result.rule.all_regex, strict=True)]


class _Joined:
    """The normalised text for regexes (tokens joined by spaces), built on first use."""

    __slots__ = ("_tokens", "_value")

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens
        self._value: str | None = None

    @property
    def value(self) -> str:
        if self._value is None:
            self._value = " ".join(self._tokens.words)
        return self._value


def _any_search(patterns: Sequence[re.Pattern[str]], text: _Joined) -> bool:
    return any(p.search(text.value) is not None for p in patterns)
