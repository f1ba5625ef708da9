"""Routing rules: load and validate the YAML rules file into typed rules, and the `RuleSet`.

Every problem in a file is collected (not just the first) and reported with its file, line and
column, both 1-based, taken from ruamel.yaml's round-trip nodes. A YAML syntax error stops the
parse where it is, so it is the one error that comes alone. The file format is documented in the
header of ``config/routing.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from omnichannel.model import TRIAGE, RouteDecision
from omnichannel.router.text import Normaliser

if TYPE_CHECKING:
    from omnichannel.router.matcher import Evaluation

#: Tier of a rule that does not say; a lower tier wins outright over a higher one.
DEFAULT_TIER = 2
#: How many tokens after a negation word a phrase may start and still be negated.
DEFAULT_NEGATION_WINDOW = 1

#: How much a phrase counts when it follows a place word ("di", "depan", ...): it names where.
PLACE_FACTOR = 0.5
#: How much a phrase counts in a clause that says its topic is fine or done ("sudah bayar").
SETTLED_FACTOR = 0.5

_TOP_KEYS = ("version", "opds", "aliases", "negations", "negation_window", "contrast_words",
             "place_words", "cause_words", "settled", "greetings", "rules")
_RULE_KEYS = ("name", "queue", "tier", "weight", "any", "all", "none", "regex", "channel",
              "account", "sender")
_CODE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_TRIAGE_NAME = "Triage (verifikasi dan disposisi manual)"

#: A phrase as the matcher sees it: normalised tokens, each with a prefix flag (``word*``).
Pattern = tuple[tuple[str, bool], ...]


@dataclass(frozen=True, slots=True)
class RuleError:
    """One problem in a rules file, at a 1-based line and column."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class RulesError(Exception):
    """A rules file could not be loaded; `errors` lists every problem found."""

    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Phrase:
    """A keyword or phrase as written in the rules file and as the matcher compares it."""

    text: str
    pattern: Pattern

    def __str__(self) -> str:
        return f'"{self.text}"'


@dataclass(frozen=True, slots=True)
class Rule:
    """One routing rule: conditions on the text and the source, and the queue it names."""

    name: str
    queue: str
    index: int
    line: int
    tier: int = DEFAULT_TIER
    weight: float = 1.0
    any_of: tuple[Phrase, ...] = ()
    all_of: tuple[tuple[Phrase, ...], ...] = ()
    none_of: tuple[Phrase, ...] = ()
    #: Regular expressions that count like `any` phrases (the `regex` key and /.../ in `any`).
    regex: tuple[re.Pattern[str], ...] = ()
    #: /.../ alternatives of each `all` group (parallel to `all_of`).
    all_regex: tuple[tuple[re.Pattern[str], ...], ...] = ()
    #: /.../ exceptions in `none`.
    none_regex: tuple[re.Pattern[str], ...] = ()
    channel: frozenset[str] = frozenset()
    account: frozenset[str] = frozenset()
    sender: frozenset[str] = frozenset()

    @property
    def has_text_conditions(self) -> bool:
        """Whether the rule looks at the text at all (phrases or regexes)."""
        return bool(self.any_of or self.all_of or self.regex)

    def source_matches(self, channel: str | None, account: str | None,
                       sender: str | None) -> bool:
        """Whether the channel, account and sender conditions (those given) all hold."""
        if self.channel and (channel is None or channel.casefold() not in self.channel):
            return False
        if self.account and account not in self.account:
            return False
        return not (self.sender and sender not in self.sender)


@dataclass(frozen=True, slots=True)
class Lexicon:
    """File-wide vocabulary: negation words, place words, greetings, aliases."""

    negations: frozenset[str] = frozenset()
    negation_window: int = DEFAULT_NEGATION_WINDOW
    place_words: frozenset[str] = frozenset()
    greetings: tuple[Phrase, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    #: Words that end a clause like punctuation does ("tapi", "namun").
    contrast_words: frozenset[str] = frozenset()
    #: Phrases saying a topic is fine or done; `any` matches in their clause count half.
    settled: tuple[Phrase, ...] = ()
    #: Words introducing a cause ("karena"); like place words, the phrase after counts half.
    cause_words: frozenset[str] = frozenset()


class RuleSet:
    """A validated rules file with its matcher compiled once; routing is a pure function."""

    def __init__(self, opds: dict[str, str], rules: list[Rule], lexicon: Lexicon,
                 normaliser: Normaliser | None = None) -> None:
        from omnichannel.router.matcher import Matcher

        self.opds: dict[str, str] = dict(opds)
        self.opds.setdefault(TRIAGE, _TRIAGE_NAME)
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.lexicon = lexicon
        self.normaliser = normaliser or Normaliser(lexicon.aliases)
        self._matcher = Matcher(self.rules, lexicon, self.normaliser)

    def route(self, text: str, *, channel: str | None = None, account: str | None = None,
              sender: str | None = None) -> RouteDecision:
        """The queue for a message, the rule that decided (None for the fallback) and why."""
        return self._matcher.evaluate(text, channel, account, sender).decision

    def evaluate(self, text: str, *, channel: str | None = None, account: str | None = None,
                 sender: str | None = None) -> Evaluation:
        """The decision with every rule that was looked at and how it fared (for tools)."""
        return self._matcher.evaluate(text, channel, account, sender, detail=True)

    def explain(self, text: str, *, channel: str | None = None, account: str | None = None,
                sender: str | None = None) -> str:
        """A human-readable account of how `text` is routed: winner, evidence, runners-up."""
        from omnichannel.router.explain import explain

        return explain(self, self.evaluate(text, channel=channel, account=account,
                                           sender=sender))


def load_rules(path: str | Path) -> RuleSet:
    """Load and validate a rules file; raises RulesError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError([RuleError(str(path), 1, 1, f"cannot read rules file: {exc}")]) from exc
    return parse_rules(text, str(path))


def parse_rules(text: str, filename: str) -> RuleSet:
    """Parse and validate rules from `text` (`filename` is used in error messages)."""
    return _Parser(filename).parse(text)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class _Parser:
    """Walks the round-trip YAML tree, building rules and collecting errors with positions."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.errors: list[RuleError] = []
        self.normaliser = Normaliser()

    # -- positions ---------------------------------------------------------------------------

    def error(self, pos: tuple[int, int], message: str) -> None:
        self.errors.append(RuleError(self.filename, pos[0] + 1, pos[1] + 1, message))

    @staticmethod
    def key_pos(node: Any, key: Any) -> tuple[int, int]:
        try:
            line, col = node.lc.key(key)
            return int(line), int(col)
        except (AttributeError, KeyError, TypeError):
            return _Parser.node_pos(node)

    @staticmethod
    def value_pos(node: Any, key: Any) -> tuple[int, int]:
        try:
            line, col = node.lc.value(key)
            return int(line), int(col)
        except (AttributeError, KeyError, TypeError):
            return _Parser.key_pos(node, key)

    @staticmethod
    def item_pos(node: Any, index: int) -> tuple[int, int]:
        try:
            line, col = node.lc.item(index)
            return int(line), int(col)
        except (AttributeError, KeyError, TypeError, IndexError):
            return _Parser.node_pos(node)

    @staticmethod
    def node_pos(node: Any) -> tuple[int, int]:
        try:
            return int(node.lc.line), int(node.lc.col)
        except (AttributeError, TypeError):
            return (0, 0)

    # -- the document ------------------------------------------------------------------------

    def parse(self, text: str) -> RuleSet:
        try:
            doc = YAML(typ="rt").load(text)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            pos = (mark.line, mark.column) if mark is not None else (0, 0)
            problem = exc.problem or exc.context or "invalid YAML"
            self.error(pos, f"YAML syntax error: {problem}")
            raise RulesError(self.errors) from exc
        except YAMLError as exc:
            self.error((0, 0), f"YAML syntax error: {exc}")
            raise RulesError(self.errors) from exc
        if not isinstance(doc, dict):
            self.error(self.node_pos(doc), f"the rules file must be a mapping with keys "
                       f"{', '.join(_TOP_KEYS)}; found {_describe(doc)}")
            raise RulesError(self.errors)

        for key in doc:
            if key not in _TOP_KEYS:
                self.error(self.key_pos(doc, key), f"unknown key {key!r}; expected one of "
                           f"{', '.join(_TOP_KEYS)}")
        if "version" in doc and (isinstance(doc["version"], bool) or doc["version"] != 1):
            self.error(self.value_pos(doc, "version"),
                       f"unsupported version {doc['version']!r}; this engine reads version 1")

        aliases = self.aliases(doc)
        self.normaliser = Normaliser(aliases)
        opds = self.opds(doc)
        negations, window = self.negations(doc)
        places = self.words(doc, "place_words") if "place_words" in doc else frozenset()
        causes = self.words(doc, "cause_words") if "cause_words" in doc else frozenset()
        contrast = (self.words(doc, "contrast_words") if "contrast_words" in doc
                    else frozenset())
        settled = self.settled(doc) if "settled" in doc else ()
        greetings = self.phrases(doc, "greetings", "greetings") if "greetings" in doc else ()
        rules = self.rules(doc, opds)
        if self.errors:
            raise RulesError(sorted(self.errors, key=lambda e: (e.line, e.column)))
        lexicon = Lexicon(negations, window, places, greetings, aliases, contrast, settled,
                          causes)
        return RuleSet(opds, rules, lexicon, self.normaliser)

    def aliases(self, doc: Any) -> dict[str, str]:
        node = doc.get("aliases")
        if node is None:
            return {}
        if not isinstance(node, dict):
            self.error(self.value_pos(doc, "aliases"),
                       f"'aliases' must be a mapping of word: replacement; found {_describe(node)}")
            return {}
        out: dict[str, str] = {}
        plain = Normaliser()
        for key, value in node.items():
            if not isinstance(key, str) or len(plain.phrase(key)) != 1 or "*" in key:
                self.error(self.key_pos(node, key),
                           f"alias {key!r} must be a single word")
                continue
            if not isinstance(value, str) or not plain.phrase(value) or "*" in value:
                self.error(self.value_pos(node, key),
                           f"alias {key!r} must be replaced by words; found {_describe(value)}")
                continue
            out[key] = value
        return out

    def opds(self, doc: Any) -> dict[str, str]:
        if "opds" not in doc:
            self.error((0, 0), "missing required key 'opds' (the departments: code: name)")
            return {TRIAGE: _TRIAGE_NAME}
        node = doc["opds"]
        if not isinstance(node, dict) or not node:
            self.error(self.value_pos(doc, "opds"),
                       f"'opds' must be a mapping of code: name; found {_describe(node)}")
            return {TRIAGE: _TRIAGE_NAME}
        out: dict[str, str] = {}
        for code, name in node.items():
            if not isinstance(code, str) or not _CODE.fullmatch(code):
                self.error(self.key_pos(node, code),
                           f"OPD code {code!r} must be lower-case letters, digits, - or _")
                continue
            if not isinstance(name, str) or not name.strip():
                self.error(self.value_pos(node, code),
                           f"OPD {code!r} needs a name (text); found {_describe(name)}")
                continue
            out[code] = name.strip()
        out.setdefault(TRIAGE, _TRIAGE_NAME)
        return out

    def negations(self, doc: Any) -> tuple[frozenset[str], int]:
        words = self.words(doc, "negations") if "negations" in doc else frozenset()
        window = DEFAULT_NEGATION_WINDOW
        if "negation_window" in doc:
            value = doc["negation_window"]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 5:
                self.error(self.value_pos(doc, "negation_window"),
                           f"'negation_window' must be a whole number from 0 to 5; "
                           f"found {value!r}")
            else:
                window = value
        return words, window

    def settled(self, doc: Any) -> tuple[Phrase, ...]:
        """The `settled` phrases (none may start with a ``word*`` prefix)."""
        out: list[Phrase] = []
        for item, pos in self.items(doc, "settled", "settled"):
            phrase = self.phrase(item, pos, "settled")
            if phrase is not None and phrase.pattern[0][1]:
                self.error(pos, f"settled: {phrase} may not start with a word*")
            elif phrase is not None:
                out.append(phrase)
        return tuple(out)

    def words(self, doc: Any, key: str) -> frozenset[str]:
        """A list of single words (negations, place words), normalised."""
        words: set[str] = set()
        for item, pos in self.items(doc, key, key):
            phrase = self.phrase(item, pos, key)
            if phrase is None:
                continue
            if len(phrase.pattern) != 1 or phrase.pattern[0][1]:
                self.error(pos, f"{key}: {phrase} must be a single word")
            else:
                words.add(phrase.pattern[0][0])
        return frozenset(words)

    # -- lists of phrases --------------------------------------------------------------------

    def items(self, parent: Any, key: str, what: str) -> Iterator[tuple[Any, tuple[int, int]]]:
        """Each item of the list at parent[key] (a lone scalar counts as a one-item list)."""
        node = parent[key]
        if isinstance(node, list):
            if not node:
                self.error(self.value_pos(parent, key), f"{what}: the list is empty")
            for i, item in enumerate(node):
                yield item, self.item_pos(node, i)
        elif isinstance(node, str | int | float) and not isinstance(node, bool):
            yield node, self.value_pos(parent, key)
        else:
            self.error(self.value_pos(parent, key),
                       f"{what} must be a list; found {_describe(node)}")

    def phrase(self, item: Any, pos: tuple[int, int], what: str) -> Phrase | None:
        if not isinstance(item, str):
            hint = "; put numbers in quotes" if isinstance(item, int | float) else ""
            self.error(pos, f"{what}: each phrase must be text; found {_describe(item)}{hint}")
            return None
        try:
            pattern = self.normaliser.phrase(item)
        except ValueError as exc:
            self.error(pos, f"{what}: phrase {item!r}: {exc}")
            return None
        if not pattern:
            self.error(pos, f"{what}: phrase {item!r} has no letters or digits")
            return None
        return Phrase(item.strip(), pattern)

    def phrases(self, parent: Any, key: str, what: str) -> tuple[Phrase, ...]:
        out: list[Phrase] = []
        for item, pos in self.items(parent, key, what):
            phrase = self.phrase(item, pos, what)
            if phrase is not None:
                out.append(phrase)
        return tuple(out)

    def strings(self, parent: Any, key: str, what: str) -> frozenset[str]:
        out: set[str] = set()
        for item, pos in self.items(parent, key, what):
            if not isinstance(item, str | int) or isinstance(item, bool) or not str(item):
                self.error(pos, f"{what}: each value must be text; found {_describe(item)}")
            else:
                out.add(str(item))
        return frozenset(out)

    # -- rules -------------------------------------------------------------------------------

    def rules(self, doc: Any, opds: dict[str, str]) -> list[Rule]:
        if "rules" not in doc:
            self.error((0, 0), "missing required key 'rules' (the list of routing rules)")
            return []
        node = doc["rules"]
        if node is None:
            return []
        if not isinstance(node, list):
            self.error(self.value_pos(doc, "rules"),
                       f"'rules' must be a list of rules; found {_describe(node)}")
            return []
        seen: dict[str, int] = {}
        out: list[Rule] = []
        for i, item in enumerate(node):
            pos = self.item_pos(node, i)
            if not isinstance(item, dict):
                self.error(pos, f"rule #{i + 1} must be a mapping with keys "
                           f"name, queue, ...; found {_describe(item)}")
                continue
            name = item.get("name")
            duplicate = False
            if isinstance(name, str) and name.strip():
                duplicate = name.strip() in seen
                if duplicate:
                    self.error(self.value_pos(item, "name"),
                               f"duplicate rule name {name.strip()!r} (first defined on line "
                               f"{seen[name.strip()]})")
                else:
                    seen[name.strip()] = pos[0] + 1
            rule = self.rule(item, pos, len(out), i + 1, opds)
            if rule is not None and not duplicate:
                out.append(rule)
        return out

    def rule(self, node: Any, pos: tuple[int, int], index: int, number: int,
             opds: dict[str, str]) -> Rule | None:
        before = len(self.errors)
        for key in node:
            if key not in _RULE_KEYS:
                self.error(self.key_pos(node, key),
                           f"unknown key {key!r} in rule; expected one of {', '.join(_RULE_KEYS)}")

        label = f"rule #{number}"
        name = node.get("name")
        if isinstance(name, str) and name.strip():
            name = name.strip()
            label = f"rule {name!r}"
        elif "name" in node:
            self.error(self.value_pos(node, "name"),
                       f"{label}: name must be text; found {_describe(name)}")
        missing = [key for key in ("name", "queue") if key not in node]
        if missing:
            keys = " and ".join(f"'{key}'" for key in missing)
            self.error(pos, f"{label} is missing required key{'s' * (len(missing) > 1)} {keys}")
        queue = node.get("queue")
        if "queue" in node and not isinstance(queue, str):
            self.error(self.value_pos(node, "queue"),
                       f"{label}: queue must be an OPD code; found {_describe(queue)}")
        elif "queue" in node and queue not in opds:
            self.error(self.value_pos(node, "queue"),
                       f"{label}: unknown OPD code {queue!r} (declare it under 'opds')")

        tier = DEFAULT_TIER
        if "tier" in node:
            value = node["tier"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                self.error(self.value_pos(node, "tier"),
                           f"{label}: tier must be a whole number >= 0; found {value!r}")
            else:
                tier = int(value)

        weight = 1.0
        if "weight" in node:
            value = node["weight"]
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                self.error(self.value_pos(node, "weight"),
                           f"{label}: weight must be a number > 0; found {value!r}")
            else:
                weight = float(value)

        any_of, any_regex = self.entries(node, "any", f"{label} 'any'")
        none_of, none_regex = self.entries(node, "none", f"{label} 'none'")
        all_of, all_regex = self.groups(node, label) if "all" in node else ((), ())
        regex = self.regexes(node, label) if "regex" in node else ()
        regex += any_regex
        sources: dict[str, frozenset[str]] = {}
        for key in ("channel", "account", "sender"):
            if key in node:
                values = self.strings(node, key, f"{label} {key!r}")
                sources[key] = (frozenset(v.casefold() for v in values) if key == "channel"
                                else values)
        if not any_of and not all_of and not regex and not sources and len(self.errors) == before:
            self.error(pos, f"{label} has no condition: give at least one of any, all, regex, "
                       f"channel, account, sender")
        if len(self.errors) > before:
            return None
        return Rule(
            name=name, queue=queue, index=index, line=pos[0] + 1, tier=tier, weight=weight,
            any_of=any_of, all_of=all_of, none_of=none_of, regex=regex, all_regex=all_regex,
            none_regex=none_regex,
            channel=sources.get("channel", frozenset()),
            account=sources.get("account", frozenset()),
            sender=sources.get("sender", frozenset()),
        )

    def entry(self, item: Any, pos: tuple[int, int],
              what: str) -> Phrase | re.Pattern[str] | None:
        """A phrase, or a regular expression when written between slashes: /.../."""
        if isinstance(item, str) and len(item.strip()) > 2 and item.strip()[0] == "/" \
                and item.strip()[-1] == "/":
            return self.compile(item.strip()[1:-1], pos, what)
        return self.phrase(item, pos, what)

    def entries(self, node: Any, key: str,
                what: str) -> tuple[tuple[Phrase, ...], tuple[re.Pattern[str], ...]]:
        """The phrases and /regexes/ of the list at node[key] (none when the key is absent)."""
        phrases: list[Phrase] = []
        patterns: list[re.Pattern[str]] = []
        if key in node:
            for item, pos in self.items(node, key, what):
                entry = self.entry(item, pos, what)
                if isinstance(entry, Phrase):
                    phrases.append(entry)
                elif entry is not None:
                    patterns.append(entry)
        return tuple(phrases), tuple(patterns)

    def groups(self, node: Any, label: str) -> tuple[tuple[tuple[Phrase, ...], ...],
                                                     tuple[tuple[re.Pattern[str], ...], ...]]:
        """`all`: each item is a phrase or a list of alternatives; every item must match."""
        groups: list[tuple[Phrase, ...]] = []
        regexes: list[tuple[re.Pattern[str], ...]] = []
        what = f"{label} 'all'"
        for item, pos in self.items(node, "all", what):
            alternatives = [(item, pos)]
            if isinstance(item, list):
                if not item:
                    self.error(pos, f"{what}: empty list of alternatives")
                alternatives = [(sub, self.item_pos(item, j)) for j, sub in enumerate(item)]
            phrases: list[Phrase] = []
            patterns: list[re.Pattern[str]] = []
            for sub, sub_pos in alternatives:
                entry = self.entry(sub, sub_pos, what)
                if isinstance(entry, Phrase):
                    phrases.append(entry)
                elif entry is not None:
                    patterns.append(entry)
            if phrases or patterns:
                groups.append(tuple(phrases))
                regexes.append(tuple(patterns))
        return tuple(groups), tuple(regexes)

    def compile(self, pattern: str, pos: tuple[int, int], what: str) -> re.Pattern[str] | None:
        try:
            return re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            where = f" at position {exc.pos}" if exc.pos is not None else ""
            self.error(pos, f"{what}: bad regular expression {pattern!r}: {exc.msg}{where}")
            return None

    def regexes(self, node: Any, label: str) -> tuple[re.Pattern[str], ...]:
        out: list[re.Pattern[str]] = []
        what = f"{label} 'regex'"
        for item, pos in self.items(node, "regex", what):
            if not isinstance(item, str):
                self.error(pos, f"{what}: each pattern must be text; found {_describe(item)}")
                continue
            compiled = self.compile(item, pos, what)
            if compiled is not None:
                out.append(compiled)
        return tuple(out)
