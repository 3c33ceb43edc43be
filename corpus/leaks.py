"""The hint-leak filter: does a regenerated rationale reveal it was given the answer?

A hinted prompt (corpus/templates/prompts/hint.txt) tells the model "the
correct answer is X" and asks it not to say so. Rationales that say so anyway
("as the hint says", "the ground truth is B", quoting the hint) are leaks and
are dropped; clinical uses of the same words ("lactate hints at
hypoperfusion", "given his CKD", "corrected calcium", "Final answer: Yes")
are kept.

The rules are data: corpus/templates/leak_rules.yaml (its header documents the
format and how allow entries interact with rules). In short:

* the rationale is normalised (NFKC, curly quotes -> straight, dashes -> "-",
  zero-width characters dropped, case-folded) and every rule and allow entry
  is matched against that text;
* a rule fires on its first match that does not lie wholly inside an allow
  span applying to it;
* the first rule in file order that fires is the verdict's ``rule``.

``quotes_hint`` (kind ``hint_quote``) is built in: with the row's hint it
fires when the rationale repeats the hint's frame "the correct answer is X"
(X the hinted answer; not as a plain conclusion) or a run of ``min_words``
consecutive words of the hint text. A bare "No" or an option's text alone is
never a quote. ``hint`` is the hint sentence (or just the hinted answer), not
the whole prompt: the patient context would otherwise count as "quoted".

Usage::

    filt = LeakFilter(LeakRules.load())            # or LeakRules.load("my_rules.yaml")
    filt.check(rationale, hint="the correct answer is No")
    # LeakVerdict(leak=True, rule='mentions_hint', match='hint')

    check_jsonl("examples.jsonl", "verdicts.jsonl")  # the `corpus leaks` command
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from corpus.atomic import atomic_path
from corpus.errors import ConfigError, SourceError

__all__ = [
    "DEFAULT_RULES",
    "AllowRule",
    "LeakFilter",
    "LeakRule",
    "LeakRules",
    "LeakVerdict",
    "check_jsonl",
    "normalise",
]

DEFAULT_RULES = Path(str(resources.files("corpus").joinpath("templates", "leak_rules.yaml")))

KINDS = ("phrase", "pattern", "hint_quote")
ALLOW_KINDS = ("phrase", "pattern")
_MAX_MATCH = 200  # characters of the matched text kept in a verdict

# --- normalisation -------------------------------------------------------------------

_TRANSLATE: dict[int, str | None] = {}
for _ch in "\u2018\u2019\u201a\u201b\u2032\u02bc\u0060\u00b4":
    _TRANSLATE[ord(_ch)] = "'"
for _ch in "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb":
    _TRANSLATE[ord(_ch)] = '"'
for _ch in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d":
    _TRANSLATE[ord(_ch)] = "-"
for _ch in "\u200b\u200c\u200d\u2060\ufeff\u00ad":
    _TRANSLATE[ord(_ch)] = None


def normalise(text: str) -> str:
    """The text rules are matched against: NFKC, straight quotes, "-" for dashes,
    no zero-width characters, case-folded."""
    return unicodedata.normalize("NFKC", text).translate(_TRANSLATE).casefold()


# --- the rules ----------------------------------------------------------------------


@dataclass(frozen=True)
class LeakRule:
    """One rule of the file. ``regexes`` is empty for ``hint_quote``."""

    name: str
    kind: str
    regexes: tuple[re.Pattern, ...]
    why: str = ""
    min_words: int = 6


@dataclass(frozen=True)
class AllowRule:
    """An allow entry: matches that lie wholly inside its spans are not leaks.
    ``rules`` None: it applies to every rule."""

    name: str
    regexes: tuple[re.Pattern, ...]
    rules: frozenset[str] | None = None
    why: str = ""


def _phrase_regex(phrases: list[str], where: str) -> re.Pattern:
    """One regex for a list of literal phrases: word boundaries where a phrase
    starts or ends with a word character, any whitespace between words. The
    boundary checks are factored out of the alternation (much faster on long
    texts than one lookbehind per phrase)."""
    buckets: dict[tuple[bool, bool], list[str]] = {}
    for phrase in sorted({normalise(p).strip() for p in phrases}, key=lambda p: (-len(p), p)):
        if not phrase:
            raise ConfigError(f"{where}: an empty phrase")
        body = r"\s+".join(re.escape(word) for word in phrase.split())
        key = (phrase[0].isalnum() or phrase[0] == "_", phrase[-1].isalnum() or phrase[-1] == "_")
        buckets.setdefault(key, []).append(body)
    parts = [
        (r"(?<!\w)" if head else "") + "(?:" + "|".join(bodies) + ")" + (r"(?!\w)" if tail else "")
        for (head, tail), bodies in sorted(buckets.items())
    ]
    return re.compile("|".join(parts), re.IGNORECASE)


def _compile_entry(entry: dict, kind: str, where: str) -> tuple[re.Pattern, ...]:
    if kind == "phrase":
        phrases = entry.get("phrases", entry.get("phrase"))
        if isinstance(phrases, str):
            phrases = [phrases]
        if not isinstance(phrases, list) or not phrases or not all(isinstance(p, str) for p in phrases):
            raise ConfigError(f"{where}: kind 'phrase' needs `phrases:`, a non-empty list of strings")
        return (_phrase_regex(phrases, where),)
    patterns = entry.get("patterns", entry.get("pattern"))
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"{where}: kind 'pattern' needs `patterns:`, a non-empty list of regular expressions")
    compiled = []
    for pattern in patterns:
        try:
            regex = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"{where}: pattern {pattern!r} is not a valid regular expression: {exc}") from None
        if regex.match(""):
            raise ConfigError(f"{where}: pattern {pattern!r} matches the empty string (it would fire on every text)")
        compiled.append(regex)
    if len(compiled) > 1:
        # One alternation scans the text once (its leftmost match is the earliest
        # over all patterns); a pattern with global inline flags cannot be joined.
        try:
            return (re.compile("|".join(f"(?:{regex.pattern})" for regex in compiled), re.IGNORECASE),)
        except re.error:
            pass
    return tuple(compiled)


@dataclass(frozen=True)
class LeakRules:
    """The rules of a leak-rules file, in file order (see leak_rules.yaml)."""

    rules: tuple[LeakRule, ...]
    allow: tuple[AllowRule, ...]
    source: str
    fingerprint: str  # sha256 (16 hex) of the effective rules' content

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(rule.name for rule in self.rules)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "LeakRules":
        """Rules from `path` (default: the packaged corpus/templates/leak_rules.yaml).
        A file with ``extends: default`` adds its rules and allow entries after
        the packaged ones."""
        path = Path(path) if path is not None else DEFAULT_RULES
        rule_entries, allow_entries = _read_entries(path, seen=())
        rules, allow = _build(rule_entries, allow_entries)
        content = json.dumps(
            {"rules": [entry for entry, _ in rule_entries], "allow": [entry for entry, _ in allow_entries]},
            sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
        )
        return cls(rules, allow, str(path), hashlib.sha256(content.encode("utf-8")).hexdigest()[:16])


def _read_entries(path: Path, seen: tuple[Path, ...]) -> tuple[list[tuple[dict, str]], list[tuple[dict, str]]]:
    """(rule entries, allow entries), each with a 'file, rule #n' location for messages."""
    resolved = path.resolve()
    if resolved in seen:
        raise ConfigError(f"leak rules file {path}: `extends` loops back to itself")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"leak rules file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"leak rules file {path} is unreadable: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"leak rules file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"leak rules file {path}: expected a mapping with `rules:` (and `allow:`), found {type(data).__name__}")
    unknown = set(data) - {"version", "extends", "rules", "allow"}
    if unknown:
        raise ConfigError(f"leak rules file {path}: unknown top-level keys {sorted(unknown)}; expected version, extends, rules, allow")
    rules: list[tuple[dict, str]] = []
    allow: list[tuple[dict, str]] = []
    extends = data.get("extends")
    if extends is not None:
        if extends != "default":
            raise ConfigError(f"leak rules file {path}: `extends` must be 'default', found {extends!r}")
        if resolved != DEFAULT_RULES.resolve():
            rules, allow = _read_entries(DEFAULT_RULES, seen + (resolved,))
    for key, target in (("rules", rules), ("allow", allow)):
        entries = data.get(key) or []
        if not isinstance(entries, list):
            raise ConfigError(f"leak rules file {path}: `{key}` must be a list, found {type(entries).__name__}")
        for number, entry in enumerate(entries, start=1):
            where = f"leak rules file {path}, {key} #{number}"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: expected a mapping with name, kind, ..., found {entry!r}")
            if isinstance(entry.get("name"), str):
                where += f" ({entry['name']!r})"
            target.append((entry, where))
    if extends is None and not rules:
        raise ConfigError(f"leak rules file {path}: no rules (add `rules:`, or `extends: default`)")
    return rules, allow


def _build(rule_entries, allow_entries) -> tuple[tuple[LeakRule, ...], tuple[AllowRule, ...]]:
    rules: list[LeakRule] = []
    names: set[str] = set()
    for entry, where in rule_entries:
        name, kind = entry.get("name"), entry.get("kind")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"{where}: `name` must be an identifier (letters, digits, _ . -), found {name!r}")
        if name in names:
            raise ConfigError(f"{where}: rule name {name!r} is used twice")
        if kind not in KINDS:
            raise ConfigError(f"{where}: `kind` must be one of {', '.join(KINDS)}, found {kind!r}")
        names.add(name)
        why = str(entry.get("why") or "")
        if kind == "hint_quote":
            min_words = entry.get("min_words", 6)
            if not isinstance(min_words, int) or isinstance(min_words, bool) or min_words < 4:
                raise ConfigError(f"{where}: `min_words` must be an integer >= 4, found {min_words!r}")
            rules.append(LeakRule(name, kind, (), why, min_words))
        else:
            rules.append(LeakRule(name, kind, _compile_entry(entry, kind, where), why))
    if not any(rule.kind == "hint_quote" for rule in rules):
        # The built-in quote check always runs; a file that does not place it runs it last.
        rules.append(LeakRule("quotes_hint", "hint_quote", (), "the rationale quotes the hint sentence it was given"))
    allow: list[AllowRule] = []
    rule_names = {rule.name for rule in rules}
    for entry, where in allow_entries:
        name, kind = entry.get("name"), entry.get("kind", "phrase" if "phrases" in entry else "pattern")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: `name` must be a non-empty string, found {name!r}")
        if kind not in ALLOW_KINDS:
            raise ConfigError(f"{where}: `kind` must be one of {', '.join(ALLOW_KINDS)}, found {kind!r}")
        scope = entry.get("rules")
        if scope is not None:
            if isinstance(scope, str):
                scope = [scope]
            if not isinstance(scope, list) or not all(isinstance(s, str) for s in scope):
                raise ConfigError(f"{where}: `rules` must be a list of rule names, found {scope!r}")
            missing = sorted(set(scope) - rule_names)
            if missing:
                raise ConfigError(f"{where}: `rules` names unknown rules {missing}; known: {sorted(rule_names)}")
            scope = frozenset(scope)
        allow.append(AllowRule(name, _compile_entry(entry, kind, where), scope, str(entry.get("why") or "")))
    return tuple(rules), tuple(allow)


# --- the filter ---------------------------------------------------------------------


@dataclass(frozen=True)
class LeakVerdict:
    leak: bool
    rule: str | None = None
    match: str | None = None


_CLEAN = LeakVerdict(False, None, None)


class _Spans:
    """Allow spans; ``covers(start, end)``: does one span contain [start, end)?"""

    __slots__ = ("starts", "max_ends")

    def __init__(self, spans: list[tuple[int, int]]):
        spans.sort()
        self.starts = [start for start, _ in spans]
        self.max_ends = []
        best = -1
        for _, end in spans:
            best = max(best, end)
            self.max_ends.append(best)

    def covers(self, start: int, end: int) -> bool:
        index = bisect.bisect_right(self.starts, start)
        return index > 0 and self.max_ends[index - 1] >= end


_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
# "the correct answer is X" in a hint: X is its first word ("No", "B", "C" of "C. 7 to 13 days").
_HINT_ANSWER = re.compile(r"\bcorrect\s+answer\s+(?:is|was)\s*:?\s*[\"'(*\[]*([^\W_]+)")
# A frame followed by at most this many words is the text's own conclusion.
_CONCLUSION_TAIL_WORDS = 12


class LeakFilter:
    """Apply LeakRules to rationales. Stateless after construction; thread-safe."""

    def __init__(self, rules: LeakRules | None = None):
        self.rules = rules if rules is not None else LeakRules.load()
        self._hint_cache: dict[str, _HintParts] = {}

    def check(self, rationale: str | None, hint: str | None = None) -> LeakVerdict:
        """The verdict for one rationale; `hint` is the hint sentence (or just the
        hinted answer) the rationale was generated with, when known."""
        text = normalise(rationale or "")
        if not text.strip():
            return _CLEAN
        allow = _AllowIndex(self.rules.allow, text)  # spans computed only once a rule matches
        for rule in self.rules.rules:
            spans = _LazySpans(allow, rule.name)
            if rule.kind == "hint_quote":
                found = self._quote(rule, text, hint, spans) if hint else None
            else:
                found = _first_unallowed(rule.regexes, text, spans)
            if found is not None:
                start, end = found
                return LeakVerdict(True, rule.name, text[start:end][:_MAX_MATCH])
        return _CLEAN

    # -- the built-in quote check

    def _hint_parts(self, hint: str) -> "_HintParts":
        parts = self._hint_cache.get(hint)
        if parts is None:
            parts = _HintParts(hint)
            if len(self._hint_cache) < 4096:
                self._hint_cache[hint] = parts
        return parts

    def _quote(self, rule: LeakRule, text: str, hint: str, spans: "_LazySpans") -> tuple[int, int] | None:
        parts = self._hint_parts(hint)
        if parts.frame is not None:
            for match in _unallowed(parts.frame, text, spans):
                tail = _TOKEN.findall(text, match.end(), match.end() + 400)
                if len(tail) > _CONCLUSION_TAIL_WORDS:  # the text goes on: not its conclusion
                    return match.start(), match.end()
        grams = parts.grams(rule.min_words)
        if not grams:
            return None
        n = rule.min_words
        firsts = {gram[0] for gram in grams}
        words = [(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(text)]
        for i in range(len(words) - n + 1):
            if words[i][0] in firsts and tuple(word for word, _, _ in words[i: i + n]) in grams:
                start, end = words[i][1], words[i + n - 1][2]
                if not spans.covers(start, end):
                    return start, end
        return None


class _HintParts:
    """What the quote check needs from one hint: the frame regex "the correct
    answer is X" for its answer X, and its word n-grams."""

    def __init__(self, hint: str):
        folded = normalise(hint).strip()
        self.tokens = tuple(_TOKEN.findall(folded))
        answer = _HINT_ANSWER.search(folded)
        if answer:
            said = answer.group(1)
        else:  # a hint that is just the answer: "No", "B", "C. 7 to 13 days"
            said = self.tokens[0] if self.tokens and len(self.tokens) <= 6 and "answer" not in self.tokens else None
        self.frame = None
        if said:
            self.frame = re.compile(
                r"\b(?:the\s+)?correct\s+answer\s+(?:is|was|would\s+be|=|:)\s*:?\s*[\"'(*\[]*"
                + re.escape(said) + r"(?![^\W_])"
                # "A"/"I" are also words: "the correct answer is a matter of ..." is no quote
                + (r"(?!\s+[^\W\d_])" if said in ("a", "i") else "")
            )
        self._grams: dict[int, frozenset] = {}

    def grams(self, n: int) -> frozenset:
        if n not in self._grams:
            self._grams[n] = frozenset(
                tuple(self.tokens[i: i + n]) for i in range(len(self.tokens) - n + 1)
            )
        return self._grams[n]


class _AllowIndex:
    """Allow spans of one text, per rule, computed on first use."""

    def __init__(self, allow: tuple[AllowRule, ...], text: str):
        self.allow, self.text = allow, text
        self._matches: list[tuple[int, int, frozenset | None]] | None = None
        self._by_rule: dict[str, _Spans] = {}

    def for_rule(self, name: str) -> _Spans:
        spans = self._by_rule.get(name)
        if spans is None:
            if self._matches is None:
                self._matches = [
                    (m.start(), m.end(), entry.rules)
                    for entry in self.allow for regex in entry.regexes for m in regex.finditer(self.text)
                    if m.end() > m.start()
                ]
            spans = _Spans([(s, e) for s, e, scope in self._matches if scope is None or name in scope])
            self._by_rule[name] = spans
        return spans


class _LazySpans:
    """One rule's allow spans, computed on the first ``covers`` call."""

    __slots__ = ("index", "name", "spans")

    def __init__(self, index: _AllowIndex, name: str):
        self.index, self.name, self.spans = index, name, None

    def covers(self, start: int, end: int) -> bool:
        if self.spans is None:
            self.spans = self.index.for_rule(self.name)
        return self.spans.covers(start, end)


def _unallowed(regex: re.Pattern, text: str, spans: "_LazySpans"):
    """Matches of `regex` not inside an allow span; after an allowed match the
    search goes on from its next character, so a leak overlapping it is found."""
    position = 0
    while position <= len(text):
        match = regex.search(text, position)
        if match is None:
            return
        if match.end() > match.start() and not spans.covers(match.start(), match.end()):
            yield match
            position = match.end() if match.end() > match.start() else match.start() + 1
        else:
            position = match.start() + 1


def _first_unallowed(regexes: tuple[re.Pattern, ...], text: str, spans: "_LazySpans") -> tuple[int, int] | None:
    """The earliest firing match over a rule's regexes."""
    best = None
    for regex in regexes:
        match = next(_unallowed(regex, text, spans), None)
        if match is not None and (best is None or match.start() < best[0]):
            best = (match.start(), match.end())
    return best


# --- the `corpus leaks` command -----------------------------------------------------


def check_jsonl(
    input_path: str | Path, output_path: str | Path, rules: LeakRules | str | Path | None = None
) -> dict[str, Any]:
    """Check every row of a JSON-lines file: each line an object with `rationale`
    (a string), optional `hint` and optional `id` (default: the 0-based line
    number). Writes one line `{"id", "leak", "rule"}` per row, in input order,
    to `output_path` (atomically: nothing is written when a line is bad). Blank
    lines are skipped. Returns {"rows", "leaks", "by_rule"}.

    A line that is not JSON, not an object, or lacks a string `rationale`
    raises SourceError naming the file and the (1-based) line number."""
    input_path, output_path = Path(input_path), Path(output_path)
    if not isinstance(rules, LeakRules):
        rules = LeakRules.load(rules)
    leak_filter = LeakFilter(rules)
    rows = leaks = 0
    by_rule: dict[str, int] = {}
    try:
        source = input_path.open("rb")
    except OSError as exc:
        raise SourceError(f"{input_path}: cannot read the input file: {exc}") from None
    with source, atomic_path(output_path) as tmp, tmp.open("w", encoding="utf-8") as sink:
        for index, line in enumerate(_lines(source, input_path)):
            if not line.strip():
                continue
            where = f"{input_path}, line {index + 1}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise SourceError(f"{where}: expected a JSON object with 'rationale', found {type(row).__name__}")
            rationale = row.get("rationale")
            if not isinstance(rationale, str):
                found = "no 'rationale' field" if "rationale" not in row else f"'rationale' is {type(rationale).__name__}"
                raise SourceError(f"{where}: each row needs a 'rationale' string; found {found}")
            hint = row.get("hint")
            if hint is not None and not isinstance(hint, str):
                raise SourceError(f"{where}: 'hint' must be a string or null, found {type(hint).__name__}")
            row_id = row.get("id")
            verdict = leak_filter.check(rationale, hint)
            out = {"id": index if row_id is None else row_id, "leak": verdict.leak, "rule": verdict.rule}
            sink.write(json.dumps(out, ensure_ascii=False) + "\n")
            rows += 1
            if verdict.leak:
                leaks += 1
                by_rule[verdict.rule] = by_rule.get(verdict.rule, 0) + 1
    return {"rows": rows, "leaks": leaks, "by_rule": dict(sorted(by_rule.items()))}


def _lines(source, path: Path):
    """Decoded lines of a file opened in binary; a decoding error names the line."""
    for number, raw in enumerate(source, start=1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise SourceError(f"{path}, line {number}: not UTF-8 text ({exc.reason})") from None
