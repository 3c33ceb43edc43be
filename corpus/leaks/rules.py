"""Leak-rules files: loading, validation and compilation (format: corpus/templates/leak_rules.yaml)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path

import yaml

from corpus.errors import ConfigError
from corpus.leaks.text import Spelling, normalise

DEFAULT_RULES = Path(str(resources.files("corpus").joinpath("templates", "leak_rules.yaml")))

KINDS = ("phrase", "pattern", "hint_quote", "near", "answer_cue")
ALLOW_KINDS = ("phrase", "pattern")
ANSWER = "{answer}"  # where an answer_cue pattern (or a near rule's term group) puts the row's hinted answer
_NEVER = re.compile(r"(?!)")  # the placeholder of a near rule's {answer} group

# --- the rules ----------------------------------------------------------------------


@dataclass(frozen=True)
class LeakRule:
    """One rule of the file. ``regexes``: phrase / pattern; ``groups``: near
    (one regex per term group); ``templates``: answer_cue (regex sources with
    {answer}); none of them for hint_quote."""

    name: str
    kind: str
    regexes: tuple[re.Pattern, ...]
    why: str = ""
    min_words: int = 6
    groups: tuple[re.Pattern, ...] = ()
    window: int = 6
    same_sentence: bool = True
    ordered: bool = False
    templates: tuple[str, ...] = field(default=())
    answer_group: int = -1  # near: the index of the group that is the row's hinted answer ("{answer}"), -1: none


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


def _near_rule(entry: dict, name: str, why: str, where: str) -> LeakRule:
    """kind near: each of `terms` (2 or 3 lists of phrases or, with `patterns: true`, regexes)
    matches within `window` words of the first group's match, in one sentence by default.
    A group that is just ``[{answer}]`` is the row's hinted answer (its letter or Yes/No, the
    option's text): the hint's content near a cue, wherever the two stand in the text."""
    groups = entry.get("terms")
    if not isinstance(groups, list) or not 2 <= len(groups) <= 3:
        raise ConfigError(f"{where}: kind 'near' needs `terms:`, a list of 2 or 3 term lists")
    as_patterns = entry.get("patterns", False) is True
    compiled, answer_group = [], -1
    for number, terms in enumerate(groups, start=1):
        if isinstance(terms, str):
            terms = [terms]
        if not isinstance(terms, list) or not terms or not all(isinstance(t, str) for t in terms):
            raise ConfigError(f"{where}: terms #{number} must be a non-empty list of strings")
        if ANSWER in terms:
            if terms != [ANSWER] or answer_group >= 0:
                raise ConfigError(f"{where}: terms #{number}: {ANSWER} must be a group of its own, in one group only")
            answer_group = number - 1
            compiled.append(_NEVER)  # filled per row with the hinted answer's forms (corpus.leaks.filter)
            continue
        kind = "pattern" if as_patterns else "phrase"
        regexes = _compile_entry({kind + "s": terms}, kind, f"{where}, terms #{number}")
        if len(regexes) != 1:
            raise ConfigError(f"{where}: terms #{number}: patterns with inline flags cannot be joined into one")
        compiled.append(regexes[0])
    window = entry.get("window", 6)
    if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 40:
        raise ConfigError(f"{where}: `window` must be an integer from 1 to 40 (words), found {window!r}")
    flags = {}
    for key in ("same_sentence", "ordered"):
        value = entry.get(key, key == "same_sentence")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: `{key}` must be true or false, found {value!r}")
        flags[key] = value
    return LeakRule(name, "near", (), why, groups=tuple(compiled), window=window, answer_group=answer_group, **flags)


def _answer_cue_rule(entry: dict, name: str, why: str, where: str) -> LeakRule:
    """kind answer_cue: regexes with {answer}, filled per row with the hinted answer's forms."""
    patterns = entry.get("patterns", entry.get("pattern"))
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and ANSWER in p for p in patterns):
        raise ConfigError(f"{where}: kind 'answer_cue' needs `patterns:`, regular expressions that each contain {ANSWER}")
    for pattern in patterns:
        try:
            re.compile(pattern.replace(ANSWER, "(?:x)"))
        except re.error as exc:
            raise ConfigError(f"{where}: pattern {pattern!r} is not a valid regular expression: {exc}") from None
    return LeakRule(name, "answer_cue", (), why, templates=tuple(patterns))


@dataclass(frozen=True)
class LeakRules:
    """The rules of a leak-rules file, in file order (see leak_rules.yaml)."""

    rules: tuple[LeakRule, ...]
    allow: tuple[AllowRule, ...]
    source: str
    fingerprint: str  # sha256 (16 hex) of the effective rules' content and the word list's version
    spelling: Spelling | None = None
    classifier: "LeakClassifier | None" = None  # the learned second opinion (corpus.leaks.classifier)

    CLASSIFIER_RULE = "learned_classifier"  # the `rule` of a verdict the classifier decided

    def why(self, name: str) -> str:
        if name == self.CLASSIFIER_RULE:
            return "the learned second opinion (char, word and cue-class n-grams) scored the rationale as a leak; no rule fired"
        return next((rule.why for rule in self.rules if rule.name == name), "")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(rule.name for rule in self.rules)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "LeakRules":
        """Rules from `path` (default: the packaged corpus/templates/leak_rules.yaml).
        A file with ``extends: default`` adds its rules and allow entries after
        the packaged ones."""
        path = Path(path) if path is not None else DEFAULT_RULES
        rule_entries, allow_entries, spelling_entries, classifier_section = _read_entries(path, seen=())
        rules, allow = _build(rule_entries, allow_entries)
        spelling = _spelling(spelling_entries)
        classifier = _classifier(classifier_section, spelling, allow_regexes(allow))
        content = json.dumps(
            {"rules": [entry for entry, _ in rule_entries], "allow": [entry for entry, _ in allow_entries],
             "spelling": [entry for entry, _ in spelling_entries],
             # the English word list decides what counts as a misspelling
             "words": metadata.version("pyspellchecker") if spelling else None,
             # the classifier file's bytes and threshold decide its verdicts
             "classifier": [classifier.sha256, classifier.threshold] if classifier else None},
            sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
        )
        return cls(rules, allow, str(path), hashlib.sha256(content.encode("utf-8")).hexdigest()[:16], spelling,
                   classifier)


def _read_entries(path: Path, seen: tuple[Path, ...]):
    """(rule entries, allow entries, spelling sections), each with a 'file, rule #n' location for messages,
    and the `classifier:` section that applies with the file it is in (the file's own, or with
    `extends: default` the default's when the file has none; None: no section)."""
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
    unknown = set(data) - {"version", "extends", "rules", "allow", "spelling", "classifier"}
    if unknown:
        raise ConfigError(f"leak rules file {path}: unknown top-level keys {sorted(unknown)}; "
                          "expected version, extends, spelling, rules, allow")
    rules: list[tuple[dict, str]] = []
    allow: list[tuple[dict, str]] = []
    spelling: list[tuple[dict, str]] = []
    classifier = None
    extends = data.get("extends")
    if extends is not None:
        if extends != "default":
            raise ConfigError(f"leak rules file {path}: `extends` must be 'default', found {extends!r}")
        if resolved != DEFAULT_RULES.resolve():
            rules, allow, spelling, classifier = _read_entries(DEFAULT_RULES, seen + (resolved,))
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
    if data.get("spelling") is not None:
        if not isinstance(data["spelling"], dict):
            raise ConfigError(f"leak rules file {path}: `spelling` must be a mapping (words, exceptions, ...)")
        spelling.append((data["spelling"], f"leak rules file {path}, spelling"))
    if extends is None and not rules:
        raise ConfigError(f"leak rules file {path}: no rules (add `rules:`, or `extends: default`)")
    if data.get("classifier") is not None:
        classifier = (data["classifier"], path)
    return rules, allow, spelling, classifier


def _classifier(found, spelling: Spelling | None, allow: tuple = ()):
    """The model a `classifier:` section names (`found`: the section and its file, from
    `_read_entries`): {file: a model next to the rules file, threshold: optional override};
    none, or false: no classifier."""
    from corpus.leaks.classifier import LeakClassifier

    if found is None or found[0] is False:
        return None
    section, source = found
    if not isinstance(section, dict) or not isinstance(section.get("file"), str):
        raise ConfigError(f"leak rules file {source}: `classifier` must be a mapping with `file:` (or false)")
    model = LeakClassifier.load(source.parent / section["file"], spelling, allow)
    threshold = section.get("threshold", model.threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.5 <= threshold <= 1:
        raise ConfigError(f"leak rules file {source}: classifier `threshold` must be a number from 0.5 to 1")
    model.threshold = float(threshold)
    return model


def default_allow() -> tuple[re.Pattern, ...]:
    """The packaged rules file's allow regexes (what the classifier is trained with)."""
    rule_entries, allow_entries, _, _ = _read_entries(DEFAULT_RULES, seen=())
    return allow_regexes(_build(rule_entries, allow_entries)[1])


def default_word_classes() -> dict[str, list[str]]:
    """The packaged rules file's `classifier.word_classes` (what the classifier is trained with):
    {class name: [word or phrase, ...]}; none: {}."""
    found = _read_entries(DEFAULT_RULES, seen=())[3]
    section = found[0] if found and isinstance(found[0], dict) else {}
    classes = section.get("word_classes") or {}
    if not isinstance(classes, dict) or not all(
            isinstance(name, str) and re.fullmatch(r"[a-z]+", name) and isinstance(words, list) and words
            and all(isinstance(w, str) and w.strip() for w in words) for name, words in classes.items()):
        raise ConfigError(f"leak rules file {DEFAULT_RULES}: classifier `word_classes` must map lower-case "
                          "letter names to non-empty lists of words")
    return {name: [w.strip().lower() for w in classes[name]] for name in sorted(classes)}


def allow_regexes(allow) -> tuple[re.Pattern, ...]:
    return tuple(regex for entry in allow for regex in entry.regexes)


def default_spelling() -> Spelling | None:
    """The packaged rules file's spelling section alone (what the classifier is trained with)."""
    return _spelling(_read_entries(DEFAULT_RULES, seen=())[2])


_SPELLING_INTS = ("max_edits", "long_word", "min_length", "known_word_min_count", "scrambled_min_length")


def _spelling(sections: list[tuple[dict, str]]) -> Spelling | None:
    """One Spelling from the default's section and a user file's: word lists add up, numbers override."""
    if not sections:
        return None
    words: set[str] = set()
    exceptions: set[str] = set()
    numbers: dict[str, int] = {}
    for section, where in sections:
        unknown = set(section) - {"words", "exceptions", *_SPELLING_INTS}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; expected words, exceptions, {', '.join(_SPELLING_INTS)}")
        for key, target in (("words", words), ("exceptions", exceptions)):
            values = section.get(key) or []
            if not isinstance(values, list) or not all(isinstance(v, str) and re.fullmatch(r"[a-z]+", v) for v in values):
                raise ConfigError(f"{where}: `{key}` must be a list of lower-case words (letters only), found {values!r}")
            target.update(values)
        for key in _SPELLING_INTS:
            if key in section:
                value = section[key]
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"{where}: `{key}` must be a non-negative integer, found {value!r}")
                numbers[key] = value
    if not words:
        return None
    return Spelling(frozenset(words), frozenset(exceptions), **numbers)


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
        elif kind == "near":
            rules.append(_near_rule(entry, name, why, where))
        elif kind == "answer_cue":
            rules.append(_answer_cue_rule(entry, name, why, where))
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


