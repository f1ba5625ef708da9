"""Routing decisions per second: the default rules, and generated rule sets of 20 and 1,000 rules.

The messages are the labelled citizen messages (the shared samples when present, else this
repository's own test messages), routed round-robin with their channel. The two generated rule
sets hold the same 10,000 phrases -- every word of the messages' vocabulary (so that messages
really hit rules), two-word and `word*` prefix phrases, made-up words -- dealt to 20 rules (500
phrases each) or to 1,000 rules (10 each); every tenth rule also has an exception, every 25th
an `all` word and a regex. So the comparison isolates the number of rules. Targets: >= 10,000
decisions/s with the default rules; 1,000 rules no more than 2x slower than 20.

    python benchmarks/routing.py
    python benchmarks/routing.py --seconds 5 --repeat 5

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omnichannel.router import RuleSet, load_rules, parse_rules  # noqa: E402
from omnichannel.router.text import Normaliser  # noqa: E402

SAMPLES = REPO.parent / "shared" / "routing-samples.jsonl"
OWN = REPO / "tests" / "router" / "citizen_messages.jsonl"


def messages() -> tuple[Path, list[tuple[str, str | None]]]:
    """The benchmark's messages as (text, channel), and the file they came from."""
    path = SAMPLES if SAMPLES.exists() else OWN
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    return path, [(item["text"], item.get("channel")) for item in items]


def generated_rules(n: int, vocabulary: list[str], phrases: int = 10_000,
                    seed: int = 7) -> RuleSet:
    """`n` rules over 10 queues sharing the same `phrases` phrases, whatever `n` is.

    The phrases are every word of `vocabulary` once (so messages hit them), two-word and
    prefix phrases, and made-up words up to `phrases`; they are dealt round-robin to the rules.
    Every tenth rule also has an exception, every 25th an `all` word and a regex.
    """
    rng = random.Random(seed)
    words = vocabulary[:]
    rng.shuffle(words)
    pool = [f"zq{i}x" for i in range(phrases)]
    items = words + [f"{a} {b}" for a, b in zip(pool[0::2], pool[1::2], strict=False)]
    items += [f"{w}*" for w in pool[: phrases // 20]] + pool
    items = items[:phrases]
    rng.shuffle(items)
    lines = ["version: 1", "opds:"] + [f"  q{i}: Queue {i}" for i in range(10)]
    lines += ["negations: [tidak, bukan, seng, belum]", "greetings: [halo, min, selamat pagi]",
              "rules:"]
    for i in range(n):
        mine = items[i::n]
        lines += [f"  - name: rule-{i}", f"    queue: q{i % 10}",
                  f"    weight: {1 + i % 3}", f"    any: [{', '.join(mine)}]"]
        if i % 10 == 0:
            lines.append(f"    none: [kecuali{i}]")
        if i % 25 == 0:
            lines.append(f"    all: [{rng.choice(words)}]")
            lines.append(f"    regex: ['{rng.choice(words)} \\d+']")
    return parse_rules("\n".join(lines) + "\n", f"generated-{n}.yaml")


def vocabulary_of(texts: list[str]) -> list[str]:
    """Distinct normalised words of the messages, longer than two letters, in a stable order."""
    normaliser = Normaliser()
    seen: dict[str, None] = {}
    for text in texts:
        for token in normaliser.tokens(text).words:
            if len(token) > 2 and token.isalpha():
                seen.setdefault(token, None)
    return list(seen)


def rate(rules: RuleSet, items: list[tuple[str, str | None]], seconds: float) -> float:
    """Decisions per second over about `seconds`, after one warm-up pass."""
    for text, channel in items:
        rules.route(text, channel=channel)
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for text, channel in items:
            rules.route(text, channel=channel)
        done += len(items)
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def measure(rules: RuleSet, items: list[tuple[str, str | None]], seconds: float,
            repeat: int) -> float:
    """Median decisions per second over `repeat` runs."""
    return statistics.median(rate(rules, items, seconds) for _ in range(repeat))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    args = parser.parse_args(argv)

    source, items = messages()
    default = load_rules(REPO / "config" / "routing.yaml")
    vocabulary = vocabulary_of([text for text, _ in items])
    small = generated_rules(20, vocabulary)
    large = generated_rules(1000, vocabulary)
    avg_chars = statistics.mean(len(text) for text, _ in items)

    print(f"messages: {len(items)} from {source} (mean {avg_chars:.0f} characters)")
    figures: dict[str, Any] = {"messages": len(items), "message_source": str(source)}
    for label, rules in (("default", default), ("generated_20", small),
                         ("generated_1000", large)):
        per_second = measure(rules, items, args.seconds, args.repeat)
        figures[f"{label}_rules"] = len(rules.rules)
        figures[f"{label}_decisions_per_s"] = round(per_second)
        print(f"{label:>15}: {len(rules.rules):5d} rules  {per_second:10,.0f} decisions/s  "
              f"({1e6 / per_second:.1f} us/decision)")
    slowdown = figures["generated_20_decisions_per_s"] / figures["generated_1000_decisions_per_s"]
    figures["slowdown_1000_vs_20"] = round(slowdown, 2)
    figures["target_default_met"] = figures["default_decisions_per_s"] >= 10_000
    figures["target_scaling_met"] = slowdown <= 2.0
    print(f"1,000 rules vs 20 rules: {slowdown:.2f}x slower (target <= 2x)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
