"""LeakFilter: apply a LeakRules to rationales; each verdict names its rule and matched span."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, replace

from corpus.leaks.rules import ANSWER, AllowRule, LeakRule, LeakRules
from corpus.leaks.text import TOKEN, Text, normalise

_MAX_MATCH = 200  # characters of the matched text kept in a verdict


@dataclass(frozen=True)
class LeakVerdict:
    """``span``: [start, end) of ``match`` in the normalised rationale (`normalise`);
    ``part``: which part of the filter decided: "rules", or "classifier" (the learned
    second opinion, asked only when no rule fired; ``rule`` is then "learned_classifier"
    and ``match`` the sentence it scored highest)."""

    leak: bool
    rule: str | None = None
    match: str | None = None
    span: tuple[int, int] | None = None
    part: str | None = None


_CLEAN = LeakVerdict(False)

# "the correct answer is X" in a hint: X is its first word ("No", "B", "C" of "C. 7 to 13 days").
_HINT_ANSWER = re.compile(r"\bcorrect\s+answer\s+(?:is|was)\s*:?\s*[\"'(*\[]*([^\W_]+)")
# A frame followed by at most this many words is the text's own conclusion.
_CONCLUSION_TAIL_WORDS = 12
# A one-letter option or Yes/No is also an ordinary word ("a patient", "no fever", "vitamin D"): as a
# near rule's {answer} term it counts only where it stands as the answer, i.e. not as a determiner
# before a word (other than a verb of the answer: "A is the one", "D has to be"), nor after a word
# that makes a letter a name ("hepatitis B", "group A", "type C").
_ANSWER_VERBS = ("is|was|it|it's|has|had|must|then|fits?|being|would|should|seems|looks|again|as|here|"
                 "stands|holds|checks|remains|makes|will|be|wins|comes|sounds|feels|too|ok|okay")
_LETTER_NAMES = ("vitamin", "hepatitis", "hep", "type", "group", "class", "grade", "stage", "factor", "pugh",
                 "influenza", "lead", "zone", "plan", "protein", "complex", "cluster", "phase", "apo", "lipoprotein")
_WORDLIKE = re.compile(r"[a-e]|yes|no")


class LeakFilter:
    """Apply LeakRules to rationales. Stateless after construction (caches aside); thread-safe."""

    def __init__(self, rules: LeakRules | None = None):
        self.rules = rules if rules is not None else LeakRules.load()
        self._hint_cache: dict[tuple[str, str], _HintParts] = {}

    def check(self, rationale: str | None, hint: str | None = None, answer: str | None = None) -> LeakVerdict:
        """The verdict for one rationale. `hint`: the hint sentence (or just the
        hinted answer) it was generated with; `answer`: the gold option's text
        ("C. 7 to 13 days", "Yes") when known, so the hint's content near a
        givenness cue ("has to be 7 to 13 days, so") is recognised."""
        if not (rationale or "").strip():
            return _CLEAN
        text = Text(rationale, self.rules.spelling)
        if not text.canon.strip():
            return _CLEAN
        parts = self._hint_parts(hint or "", answer or "") if (hint or answer) else None
        allow = _AllowIndex(self.rules.allow, text.canon)  # spans computed only once a rule matches
        for rule in self.rules.rules:
            spans = _LazySpans(allow, rule.name)
            if rule.kind == "hint_quote":
                found = _quote(rule, text.canon, parts, spans) if parts and hint else None
            elif rule.kind == "near" and rule.answer_group >= 0:
                near = parts.near_rule(rule) if parts else None
                found = _near(near, text, spans) if near is not None else None
            elif rule.kind == "near":
                found = _near(rule, text, spans)
            elif rule.kind == "answer_cue":
                found = _first_unallowed(parts.cue_regexes(rule), text.canon, spans) if parts else None
            else:
                found = _first_unallowed(rule.regexes, text.canon, spans)
            if found is not None:
                start, end = text.to_norm(*found)
                return LeakVerdict(True, rule.name, text.norm[start:end][:_MAX_MATCH], (start, end), "rules")
        model = self.rules.classifier
        if model is not None and model.probability(rationale, hint, answer) >= model.threshold:
            # only when no rule fired, and only above a high threshold: a second opinion, not a vote
            start, end = model.top_sentence(text.norm, hint, answer)
            return LeakVerdict(True, LeakRules.CLASSIFIER_RULE, text.norm[start:end][:_MAX_MATCH], (start, end),
                               "classifier")
        return _CLEAN

    def _hint_parts(self, hint: str, answer: str) -> "_HintParts":
        key = (hint, answer)
        parts = self._hint_cache.get(key)
        if parts is None:
            parts = _HintParts(hint, answer)
            if len(self._hint_cache) < 4096:
                self._hint_cache[key] = parts
        return parts


class _HintParts:
    """What the hint-aware rules need from one row's hint: the frame "the correct
    answer is X", the hint's word n-grams, and the hinted answer's forms."""

    def __init__(self, hint: str, answer: str):
        folded = normalise(hint).strip()
        self.tokens = tuple(TOKEN.findall(folded))
        found = _HINT_ANSWER.search(folded)
        if found:
            said = found.group(1)
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
        self.forms = _answer_forms(said, normalise(answer).strip())
        self._grams: dict[int, frozenset] = {}
        self._cues: dict[str, tuple[re.Pattern, ...]] = {}
        self._near: dict[str, LeakRule | None] = {}

    def grams(self, n: int) -> frozenset:
        if n not in self._grams:
            self._grams[n] = frozenset(tuple(self.tokens[i: i + n]) for i in range(len(self.tokens) - n + 1))
        return self._grams[n]

    def cue_regexes(self, rule: LeakRule) -> tuple[re.Pattern, ...]:
        """The rule's patterns with {answer} as this row's answer forms (none: no patterns)."""
        if rule.name not in self._cues:
            if not self.forms:
                self._cues[rule.name] = ()
            else:
                bodies = "|".join(r"\s+".join(re.escape(w) for w in form.split()) for form in self.forms)
                answer = rf"(?<![^\W_])(?:{bodies})(?![^\W_])"
                self._cues[rule.name] = tuple(re.compile(t.replace(ANSWER, answer), re.IGNORECASE) for t in rule.templates)
        return self._cues[rule.name]


    def near_rule(self, rule: LeakRule) -> LeakRule | None:
        """A near rule with its {answer} group as this row's answer forms (None: no forms)."""
        if rule.name not in self._near:
            self._near[rule.name] = None
            if self.forms:
                groups = list(rule.groups)
                groups[rule.answer_group] = _standalone_answer(self.forms)
                self._near[rule.name] = replace(rule, groups=tuple(groups), answer_group=-1)
        return self._near[rule.name]


def answer_regex(hint: str, answer: str) -> re.Pattern | None:
    """The row's hinted answer where it stands as the answer (None: the row names no answer)."""
    if not (hint or answer):
        return None
    forms = _HintParts(hint, answer).forms
    return _standalone_answer(forms) if forms else None


def _standalone_answer(forms: tuple[str, ...]) -> re.Pattern:
    """The answer forms as a near term: word-like forms only where they stand as the answer."""
    bodies = []
    for form in forms:
        body = r"\s+".join(re.escape(w) for w in form.split())
        if _WORDLIKE.fullmatch(form):
            names = "".join(rf"(?<!\b{name}\s)(?<!\b{name}-)" for name in _LETTER_NAMES)
            body = rf"{names}{body}(?![\w'-])(?!\s+(?!(?:{_ANSWER_VERBS})(?![\w']))\w)"
        bodies.append(body)
    return re.compile(rf"(?<![^\W_])(?:{'|'.join(bodies)})(?![^\W_])")


def _answer_forms(label: str | None, answer: str) -> tuple[str, ...]:
    """How a rationale may name the hinted answer: its label ("b", "yes"), the
    option's text with and without the label ("b. 3 to 6 days", "3 to 6 days"),
    without a trailing parenthesis ("less than 3 days"), and the option's range
    without its unit, with whole numbers also as words ("3 to 6", "three to six
    days", "5.5 or more", "below 4"): a rationale restates a range in its own words."""
    forms = set()
    if label:
        forms.add(label)
    if answer:
        forms.add(answer)
        head, _, rest = answer.partition(". ")
        if rest and len(head) == 1:
            forms.add(head)
            forms.add(rest)
            bare = re.sub(r"\s*\([^)]*\)\s*$", "", rest)
            forms.add(bare)
            forms.update(_range_forms(bare))
    return tuple(sorted((f for f in forms if f.strip()), key=lambda f: (-len(f), f)))


_RANGE_WORDS = frozenset("to or and more less than below above under over at least most between from up".split())
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")  # "-4.0" of a base excess band too
_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty").split()


def _range_forms(option: str) -> set[str]:
    """The option's range in other words: unit dropped ("100 to 119 bpm" -> "100 to 119"), "4.0" as
    "4", whole numbers up to twenty as words with and without the unit ("three to six days"). Only
    forms of two words or more with a number in them: a bare "4" is no answer."""
    words = option.split()
    core = [w for w in words if _NUMBER.fullmatch(w) or w in _RANGE_WORDS]
    if not any(_NUMBER.fullmatch(w) for w in core):
        return set()
    found = set()
    for tokens in (core, words):
        for variant in (tokens, [_strip_zeros(w) for w in tokens]):
            spelled = [_NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < len(_NUMBER_WORDS) else w for w in variant]
            for form in (variant, spelled):
                if len(form) >= 2:
                    found.add(" ".join(form))
            # "140 to 199" is also written "140-199" (an en dash reads as "-" once normalised)
            if len(variant) >= 3 and variant[1] == "to" and _NUMBER.fullmatch(variant[0]) and _NUMBER.fullmatch(variant[2]) \
                    and not variant[2].startswith("-"):
                found.add(" ".join([f"{variant[0]}-{variant[2]}", *variant[3:]]))
    return found


def _strip_zeros(word: str) -> str:
    """ "4.0" -> "4", "0.70" -> "0.7": a rationale drops the zeros an option's band is written with."""
    return word.rstrip("0").rstrip(".") if re.fullmatch(r"-?\d+\.\d+", word) else word


def _quote(rule: LeakRule, text: str, parts: _HintParts, spans: "_LazySpans") -> tuple[int, int] | None:
    """hint_quote: the hint's frame not as the text's conclusion, or min_words consecutive hint words."""
    if parts.frame is not None:
        whole = parts.frame.search(text)
        if whole and not text[: whole.start()].strip() and not text[whole.end():].strip(" \t\n.!\"')"):
            # nothing but the hint's frame ("The correct answer is B."): no rationale, just the hint
            return whole.start(), whole.end()
        for match in _unallowed(parts.frame, text, spans):
            tail = TOKEN.findall(text, match.end(), match.end() + 400)
            if len(tail) > _CONCLUSION_TAIL_WORDS:  # the text goes on: not its conclusion
                return match.start(), match.end()
    grams = parts.grams(rule.min_words)
    if not grams:
        return None
    n = rule.min_words
    firsts = {gram[0] for gram in grams}
    words = [(m.group(0), m.start(), m.end()) for m in TOKEN.finditer(text)]
    for i in range(len(words) - n + 1):
        if words[i][0] in firsts and tuple(word for word, _, _ in words[i: i + n]) in grams:
            start, end = words[i][1], words[i + n - 1][2]
            if not spans.covers(start, end):
                return start, end
    return None


def _near(rule: LeakRule, text: Text, spans: "_LazySpans") -> tuple[int, int] | None:
    """near: a match of the first term group with a match of every other group
    within `window` words (same sentence, and in group order, when the rule says)."""
    found = []
    for regex in rule.groups:
        matches = [(m.start(), m.end()) for m in _unallowed(regex, text.canon, spans)]
        if not matches:
            return None
        found.append(matches)
    others = []
    for matches in found[1:]:
        tokens = [text.token_index(start) for start, _ in matches]
        others.append((tokens, matches))
    best = None
    for start, end in found[0]:
        first = text.token_index(start)
        last = max(first, text.token_index(end) - 1)  # the window counts from either edge of a multi-word term
        sentence = text.sentence_index(start)
        span = [start, end]
        for tokens, matches in others:
            hit = None
            low = bisect.bisect_left(tokens, first - rule.window)
            high = bisect.bisect_right(tokens, last + rule.window)
            for index in range(low, min(high, low + 64)):  # 64: enough candidates, bounded on odd texts
                other_start, other_end = matches[index]
                if other_start < end and other_end > start:
                    continue  # the same words cannot be both terms
                if rule.ordered and other_start < start:
                    continue
                if rule.same_sentence and text.sentence_index(other_start) != sentence:
                    continue
                hit = (other_start, other_end)
                break
            if hit is None:
                break
            span = [min(span[0], hit[0]), max(span[1], hit[1])]
        else:
            if best is None or span[0] < best[0]:
                best = tuple(span)
            break  # the earliest first-group match that fires
    return best


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
