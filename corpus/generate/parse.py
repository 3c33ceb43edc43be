"""Reading a model's answer out of its generated text (DESIGN.md, "Records").

A sample's text is a rationale followed by an answer. The answer is read in
this order, and the path that gave it is recorded as ``parse_status``:

1. ``boxed``: every ``\\boxed{...}`` (and ``\\fbox{...}``) in the text, braces
   matched so ``\\boxed{\\text{Yes}}`` works. A box takes precedence over any
   answer statement, wherever the statement stands (the prompt asks for a box,
   so a box is the model's committed answer; a later "Answer: No" after
   ``\\boxed{Yes}`` does not override it).

   * Several boxes that all name the same option -> that option (models often
     restate the box: ``\\boxed{B}`` ... ``\\boxed{B. 3 to 6 days}``).
   * Boxes naming different things -> ``conflict``, predicted None. We do not
     take "the last one wins" as math graders do: a rationale that commits to
     two different answers is a hedge, and counting it correct when its last box
     happens to match the gold answer would put hedging rationales into the SFT
     set and DPO "chosen" side. A box whose content is not an option, next to a
     box that is, is a conflict too (the model boxed two different things).
   * Empty boxes (``\\boxed{}``, echoed from the instruction "put your answer in
     \\boxed{}") are ignored. An unclosed box (generation cut off mid-answer)
     is no box: the text goes on to the statement path like any other, where
     "The answer is \\boxed{Yes" (closing brace lost) still reads Yes and
     "\\boxed{Ye" reads nothing.
   * Boxes that all name something that is not an option (``\\boxed{E}`` with
     four options, ``\\boxed{Maybe}`` for Yes/No) -> ``invalid``, predicted None,
     with no fall-back to later paths: the model gave an answer and it is not
     one of the choices, so reading some other answer from the prose would
     credit an output the model did not commit to.

2. ``statement``: the LAST explicit answer statement that names an option:
   "the answer is C", "Final answer: C", "Answer: Yes", "**Answer:** B",
   "The correct option would be (d)", "I would choose option B", "I'd say no",
   "my answer: no", "B is the correct answer", and a heading "Final Answer"
   followed by the answer on the next line. Case-insensitive. A last line
   that is nothing but an option ("...reasoning.\n\nNo", a whole text "B.")
   counts as the last statement; a longer last line does not ("No readmission
   is expected" without a trigger is prose). Statements whose
   text names no option ("the answer is not straightforward", "before giving my
   final answer, ...") are skipped and the previous statement is tried. Rules
   for the traps:

   * Hypotheticals are not answers: "If the answer is Yes, ..." is skipped.
   * Negations: "the answer is not A, it is C" reads C (a correction after
     "but", "it is", "it's", "rather", "instead"); "the answer is not A" with
     no correction is skipped (we do not guess the complement). An option
     that itself starts with "not" ("not recorded") is not a negation.
   * Leading hedges are read through: "the answer is likely No", "Answer: I
     think it is B".
   * The last statement that looks like an answer but names no option (a lone
     letter out of range, "Answer: E" for four options) gives ``invalid``.
   * "Answer: A or B" / "Yes/No" (a hedge between options) gives ``invalid``.
   * A letter whose text contradicts another option ("B. 7 to 13 days" when B
     is "3 to 6 days") gives ``invalid``.

3. ``logprob``: only when the caller passes ``logprob_fn(options) ->
   list[float]`` (the generator backend scores each option's tokens after the
   prompt; C-Reason's fallback): the option with the highest score, the first
   one on ties; NaN scores are ignored. This module never imports torch. It is
   also used for empty text, since "no readable answer" is exactly the case the
   fallback is for; callers that want empty generations marked ``unparsed``
   simply pass no ``logprob_fn``.

Otherwise ``unparsed``, predicted None.

Normalisation of a candidate answer: Unicode NFKC (full-width ``Ｂ``, ``：``
and non-breaking spaces), curly quotes, LaTeX commands (``\\text``,
``\\textbf``, ``\\,``), math ``$``, markdown ``**``/``_``/backticks, case, outer
quotes and trailing punctuation. Then an option is matched by: its exact text
(``B. 3 to 6 days``) or its text without the letter (``3 to 6 days``, also
without a trailing parenthetical: ``less than 3 days``); a letter form (``B``,
``(B)``, ``B)``, ``b.``, ``Option B``, ``choice (b)``; a bare lowercase letter
counts only when followed by ``.``, ``)``, ``:``, ``,`` or the end, so the
article in "the answer is a long stay" is not option A); or the option's text
at the start followed by a word boundary ("Yes, the patient will ...", "no
readmission" -> "No"; "not"/"none" are not "No").

Every scan is linear: regexes are precompiled, anchored or built from bounded
quantifiers over disjoint character classes (no nested repetition, so no
catastrophic backtracking), boxes are matched in one stack pass over the braces
(a box longer than ``_MAX_BOX`` characters is not an answer), a statement's
candidate is at most ``_MAX_CANDIDATE`` characters, repeated candidates are
resolved once, and only the last ``_MAX_STATEMENTS`` statements are tried (a
model stuck repeating "the answer is" stays cheap). A typical 100k-character
text parses in milliseconds; adversarial ones (12,000 unclosed boxes) in well
under a second.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["PARSE_STATUSES", "ParsedAnswer", "parse_answer", "split_rationale"]

PARSE_STATUSES = ("boxed", "statement", "logprob", "invalid", "conflict", "unparsed")

# A box longer than this is not an answer (or is unclosed): stop the brace scan.
_MAX_BOX = 1000
# What follows an answer trigger that we look at: one line, this many characters.
_MAX_CANDIDATE = 200
# Statements tried, from the last one back. A model stuck in a loop ("the answer
# is ... the answer is ...") repeats a trigger thousands of times; no real text
# has this many answer statements after its last readable one.
_MAX_STATEMENTS = 200
# Lines looked at after a heading like "**Final Answer**" whose own line is empty.
_MAX_FOLLOWING_LINES = 4


@dataclass(frozen=True)
class ParsedAnswer:
    """predicted: exactly one element of the options, or None.
    parse_status: one of PARSE_STATUSES (the path that decided).
    raw: the answer text as the model wrote it (box content or the statement's
    rest of line), None for logprob / unparsed."""

    predicted: str | None
    parse_status: str
    raw: str | None


# --- normalising a candidate --------------------------------------------------

# NFKC leaves typographic quotes alone; map them so outer-quote stripping and
# "it's" in corrections work.
_QUOTES = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
        "\u00ab": '"', "\u00bb": '"',
    }
)
# LaTeX commands (\text, \textbf, \mathrm, \quad) and spacing (\, \; \!) become a
# space; an escaped symbol (\% \& \$) keeps the symbol. Non-nested: linear.
_LATEX_COMMAND = re.compile(r"\\(?:[A-Za-z]+\*?|[,;:! ])")
_LATEX_ESCAPE = re.compile(r"\\(?=[%&#_$])")
# Braces (left over from \text{...}), math dollars and markdown emphasis/code
# carry no answer content.
_MARKUP = re.compile(r"[{}$*_`]+")
_SPACES = re.compile(r"\s+")
# Leading: quotes, list bullets, heading marks, ":"/"=" left by a trigger, dashes.
_LEAD_JUNK = " \t\"'>#:=\u2022\u00b7-\u2013\u2014"
# Trailing: quotes and sentence punctuation ("Yes." "B," "No!").
_TRAIL_JUNK = " \t\"'.,;:!?"
# Hedge words before the answer: "the answer is likely No", "most probably B",
# "Answer: I think it is B".
_FILLER = re.compile(
    r"""(?:
        (?:(?:most|very|quite)\s+)?(?:likely|probably|possibly|definitely|clearly|certainly|therefore|thus|so|then|still)\b
      | I\s+(?:think|believe|guess)(?:\s+that)?(?:\s+it\s+is|\s+it's|\s+it\s+would\s+be)?\b
    )[\s,:]*""",
    re.I | re.X,
)
# A statement that negates: "not A, it is C", "definitely not Yes".
_NEGATION = re.compile(r"(?:(?:definitely|certainly|clearly|surely)\s+)?not\b", re.I)
# The correction that follows a negation; what comes after it is the answer.
_CORRECTION = re.compile(r"\b(?:but(?:\s+rather)?|it\s+is|it's|it\s+was|rather|instead|the\s+answer\s+is)\b[\s,:]*", re.I)
# "A or B", "Yes/No", "B | C": a hedge between two options.
_HEDGE = re.compile(r"\s*(?:/|\||\bor\b)\s*", re.I)


def _clean(text: str) -> str:
    """Case-preserving normal form of a short candidate (see module docstring)."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    text = _LATEX_ESCAPE.sub("", text)
    text = _LATEX_COMMAND.sub(" ", text)
    text = _MARKUP.sub("", text)
    text = _SPACES.sub(" ", text).lstrip(_LEAD_JUNK).rstrip(_TRAIL_JUNK)
    # "(Yes)": one outer pair of parentheses around everything.
    if text.startswith("(") and text.endswith(")") and text.count("(") == 1 and text.count(")") == 1:
        text = text[1:-1].strip(_TRAIL_JUNK)
    return text


# --- matching a candidate against the options -----------------------------------

# "A. less than 3 days", "B) 3 to 6 days": a lettered option and its text.
_OPTION_LETTERED = re.compile(r"([A-J])\s*[.):]\s+(\S.*)", re.S)
# A trailing parenthetical in an option's text: "less than 3 days (0 to 2 days)".
_TRAILING_PAREN = re.compile(r"\s*\([^()]*\)\Z")
# Letter forms, matched at the start of a cleaned (case-preserved) candidate.
# "Option B", "choice (b)": either case; the letter must end the word.
_LETTER_PREFIXED = re.compile(r"(?i:option|choice)\s*[(\[]?\s*([A-Ja-j])\s*[)\]]?(?![A-Za-z0-9])")
# "B", "(B)", "B)", "B. 3 to 6 days", "B because": an uppercase letter alone.
_LETTER_UPPER = re.compile(r"[(\[]?([A-J])(?:[)\]]|(?=[.:,;]|\s|\Z))")
# "b", "(b)", "b.", "b:" but not "a long stay" (article) or "i think" (pronoun).
_LETTER_LOWER = re.compile(r"[(\[]?([a-j])(?:[)\]]|(?=[.:,;]|\Z))")
_REST_JUNK = " .):,;-\u2013\u2014"

_MATCH, _INVALID, _NONE = "match", "invalid", "none"


@dataclass(frozen=True)
class _Options:
    options: tuple[str, ...]
    exact: dict[str, int]  # folded key -> option index (full text, text, short text)
    keys: tuple[tuple[str, int], ...]  # the same keys, longest first, for prefix matching
    letters: dict[str, int]  # "B" -> index, lettered options only


@lru_cache(maxsize=256)
def _option_table(options: tuple[str, ...]) -> _Options:
    if not options:
        raise ValueError("parse_answer needs at least one option")
    if len(set(options)) != len(options):
        raise ValueError(f"duplicate options: {list(options)!r}")
    seen: dict[str, set[int]] = {}
    letters: dict[str, int] = {}
    for index, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            raise ValueError(f"options must be non-empty strings: {list(options)!r}")
        normal = unicodedata.normalize("NFKC", option).strip()
        variants = [normal]
        lettered = _OPTION_LETTERED.fullmatch(normal)
        if lettered:
            letters[lettered.group(1)] = index
            body = lettered.group(2).strip()
            variants.append(body)
            short = _TRAILING_PAREN.sub("", body)
            if short and short != body:
                variants.append(short)
        for variant in variants:
            key = _clean(variant).casefold()
            if key:
                seen.setdefault(key, set()).add(index)
    # A key shared by two options names neither.
    exact = {key: next(iter(indexes)) for key, indexes in seen.items() if len(indexes) == 1}
    keys = tuple(sorted(exact.items(), key=lambda item: -len(item[0])))
    return _Options(tuple(options), exact, keys, letters)


def _prefix_option(folded: str, table: _Options) -> tuple[int, int] | None:
    """(option index, key length) of the longest option text that starts `folded`
    and ends at a word boundary ("no readmission" -> No; "not", "none" -> nothing)."""
    for key, index in table.keys:  # longest first
        if folded.startswith(key) and (len(folded) == len(key) or not folded[len(key)].isalnum()):
            return index, len(key)
    return None


def _hedged(rest: str, index: int, table: _Options) -> bool:
    """Does `rest` (what follows an option) offer another option: "A or B", "Yes/No"?"""
    hedge = _HEDGE.match(rest)
    if not hedge or hedge.end() == 0:
        return False
    kind, other = _resolve(rest[hedge.end():], table, hedges=False, negations=False)
    return kind == _MATCH and other != index


def _resolve(candidate: str, table: _Options, *, hedges: bool = True, negations: bool = True) -> tuple[str, int | None]:
    """(_MATCH, index) | (_INVALID, None): answer-shaped but not an option | (_NONE, None): prose."""
    cleaned = _clean(candidate)
    for _ in range(3):  # "most likely, therefore B"
        filler = _FILLER.match(cleaned)
        if not filler or filler.end() == 0:
            break
        cleaned = cleaned[filler.end():]
    if not cleaned or not any(ch.isalnum() for ch in cleaned):
        return _NONE, None
    folded = cleaned.casefold()
    if folded in table.exact:
        return _MATCH, table.exact[folded]
    # A negation, unless an option itself starts with "not" ("C. not recorded").
    if negations and _NEGATION.match(cleaned) and _prefix_option(folded, table) is None:
        correction = _CORRECTION.search(cleaned)
        if correction:
            return _resolve(cleaned[correction.end():], table, hedges=hedges, negations=False)
        return _NONE, None

    letter = _LETTER_PREFIXED.match(cleaned) or _LETTER_UPPER.match(cleaned) or _LETTER_LOWER.match(cleaned)
    if letter:
        rest = cleaned[letter.end():].lstrip(_REST_JUNK)
        index = table.letters.get(letter.group(1).upper())
        if index is not None:
            if hedges and _hedged(cleaned[letter.end():], index, table):
                return _INVALID, None
            said = _prefix_option(rest.casefold(), table) if rest else None
            if said is not None and said[0] != index:  # "B. 7 to 13 days" when B is 3 to 6
                return _INVALID, None
            return _MATCH, index
        if not rest or letter.re is _LETTER_PREFIXED:  # "E", "Option E": a letter that is no option
            return _INVALID, None
        # an uppercase word like "I think ...": not a letter, go on

    prefix = _prefix_option(folded, table)
    if prefix is not None:
        index, length = prefix
        if hedges and _hedged(cleaned[length:], index, table):
            return _INVALID, None
        return _MATCH, index
    return _NONE, None


# --- finding boxes and statements ------------------------------------------------

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Braces for the matching pass; an escaped brace (\{ \}) is a literal, skipped.
_BRACE = re.compile(r"\\[{}]|[{}]")


def _boxes(text: str) -> list[tuple[int, str]]:
    """(start, content) of every closed box of at most _MAX_BOX characters.

    One stack pass over the braces finds every "{"'s partner, so the cost is
    linear in the text even with thousands of unclosed boxes."""
    opens = {match.end() - 1: match.start() for match in _BOX_OPEN.finditer(text)}
    if not opens:
        return []
    found = []
    stack: list[int] = []
    for match in _BRACE.finditer(text):
        brace = match.group(0)
        if brace == "{":
            stack.append(match.start())
        elif brace == "}" and stack:  # a stray "}" closes nothing
            open_at = stack.pop()
            if open_at in opens and match.start() - open_at <= _MAX_BOX:
                found.append((opens[open_at], text[open_at + 1: match.start()]))
    found.sort(key=lambda item: item[0])
    return found


# Forward triggers: the answer follows. Each alternative is a fixed phrase with
# bounded [\s*_] runs (markdown "**Answer**:"), so a failed attempt costs O(1).
_STATEMENT = re.compile(
    r"""
    \b(?:final|correct|right|best|most\s+likely)\s+(?:answer|option|choice)
        (?:[\s*_]{0,6}(?:is|would\s+be|will\s+be|should\s+be)\b)?[\s*_]{0,6}[:\uff1a=]?
  | \banswer\s+to\s+(?:this|the)\s+question\s+(?:is|would\s+be)\b
  | \banswer[\s*_]{0,6}(?:is\b|would\s+be\b|[:\uff1a=])
  | \b(?:conclusion|prediction|verdict)[\s*_]{0,6}[:\uff1a]
  | \bI(?:\s+would|\s+will|\s+am\s+going\s+to|['\u2019](?:d|ll))?\s+(?:choose|select|pick|go\s+with|answer|say)\b
    """,
    re.I | re.X,
)
# Backward forms: the answer precedes "is the correct answer". Letters uppercase
# only, so "a is the ..." in prose does not count.
_REVERSE = re.compile(
    r"""
    (?:\b(?i:option|choice)\s*)?\(?\b(?:[A-J]|(?i:yes|no))\b\)?[\s*_"']{0,4}
    (?i:is\s+(?:the\s+)?(?:most\s+likely|correct|right|best|final)\s+(?:answer|option|choice))\b
    """,
    re.X,
)
# "If the answer is Yes, ...", "whether the answer is B": not a statement.
_HYPOTHETICAL = re.compile(r"\b(?:if|whether|unless|suppose|supposing|assuming|when)\s+(?:that\s+)?(?:the\s+|my\s+)?\Z", re.I)
_REVERSE_TAIL = re.compile(r"[\s*_\"')]*(?i:is)\b")


def _statements(text: str) -> list[tuple[int, re.Match]]:
    """(start, match) for each answer statement, in text order; the candidate is
    read lazily by _candidate (most texts need only the last one)."""
    found = []
    for pattern in (_STATEMENT, _REVERSE):
        for match in pattern.finditer(text):
            if not _HYPOTHETICAL.search(text, max(0, match.start() - 30), match.start()):
                found.append((match.start(), match))
    found.sort(key=lambda item: item[0])
    return found


def _candidate(text: str, match: re.Match) -> str:
    """The answer a statement names: what follows a forward trigger, what precedes
    "is the correct answer" in a backward one."""
    if match.re is _REVERSE:
        said = match.group(0)
        tail = _REVERSE_TAIL.search(said)
        return said[: tail.start()] if tail else said
    return _following(text, match.end())


# The text's last line on its own: "...reasoning.\n\nNo", or a whole text "B.".
_LAST_LINE = re.compile(r"[^\n]*\S[^\n]*\s*\Z")
# A lone letter ("B", "(b)", "C.") on that line.
_BARE_LETTER = re.compile(r"[(\[]?([A-Ja-j])[)\]]?")
_BARE_YES_NO = frozenset({"yes", "no"})


def _last_line(text: str) -> tuple[int, str] | None:
    """(start, line) of the last non-blank line when it is short enough to be a
    bare answer."""
    tail = text[-_MAX_CANDIDATE:]
    match = _LAST_LINE.search(tail)
    if not match:
        return None
    start = len(text) - len(tail) + match.start()
    if start > 0 and text[start - 1] != "\n":  # the line began before the window
        return None
    return start, match.group(0)


def _bare_answer(line: str, table: _Options) -> int | None:
    """The option a line names when it is nothing but an option: its exact text
    or a lone letter. Anything longer is prose ("No readmission is likely")."""
    cleaned = _clean(line)
    folded = cleaned.casefold()
    if folded in table.exact:
        return table.exact[folded]
    letter = _BARE_LETTER.fullmatch(cleaned)
    return table.letters.get(letter.group(1).upper()) if letter else None


def _following(text: str, position: int) -> str:
    """The rest of the line after a trigger, or the next non-empty line when the
    trigger is a heading ("**Final Answer**\\n\\nB")."""
    window = text[position: position + _MAX_CANDIDATE * 2]
    lines = window.split("\n", _MAX_FOLLOWING_LINES + 1)
    for line in lines[: _MAX_FOLLOWING_LINES + 1]:
        if _clean(line):
            return line[:_MAX_CANDIDATE]
    return lines[0][:_MAX_CANDIDATE]


# Markdown and the trigger's colon around a statement's raw text ("** B" -> "B").
_RAW_JUNK = " \t*_:\uff1a="


# --- the parser ---------------------------------------------------------------------


def _parse(text: str, table: _Options, logprob_fn) -> tuple[ParsedAnswer, int | None]:
    """The answer and where it stands in the text (None for logprob / unparsed)."""
    options = table.options
    memo: dict[str, tuple[str, int | None]] = {}  # repeated boxes/statements are resolved once

    def resolve(candidate: str) -> tuple[str, int | None]:
        if candidate not in memo:
            memo[candidate] = _resolve(candidate, table)
        return memo[candidate]

    boxes = [(start, content) for start, content in _boxes(text) if any(ch.isalnum() for ch in _clean(content))]
    if boxes:
        picks: list[int] = []
        bad = False
        for _, content in boxes:
            kind, index = resolve(content)
            if kind == _MATCH:
                picks.append(index)
            else:
                bad = True
        contents = list(dict.fromkeys(content.strip() for _, content in boxes))
        anchor = boxes[-1][0]
        if len(set(picks)) > 1 or (picks and bad):
            return ParsedAnswer(None, "conflict", " | ".join(contents)), anchor
        if bad:
            return ParsedAnswer(None, "invalid", boxes[-1][1].strip()), anchor
        return ParsedAnswer(options[picks[0]], "boxed", boxes[-1][1].strip()), anchor

    # A last line that is nothing but an option ("...\n\nNo") is the last statement.
    last = _last_line(text)
    if last is not None:
        index = _bare_answer(last[1], table)
        if index is not None:
            return ParsedAnswer(options[index], "statement", last[1].strip()), last[0]

    for start, match in reversed(_statements(text)[-_MAX_STATEMENTS:]):
        candidate = _candidate(text, match)
        kind, index = resolve(candidate)
        if kind == _MATCH:
            return ParsedAnswer(options[index], "statement", candidate.strip(_RAW_JUNK)), start
        if kind == _INVALID:
            return ParsedAnswer(None, "invalid", candidate.strip(_RAW_JUNK)), start

    if logprob_fn is not None:
        scores = list(logprob_fn(list(options)))
        if len(scores) != len(options):
            raise ValueError(f"logprob_fn returned {len(scores)} scores for {len(options)} options")
        best = None
        for index, score in enumerate(scores):
            score = float(score)
            if math.isnan(score):
                continue
            if best is None or score > float(scores[best]):
                best = index
        if best is not None:
            return ParsedAnswer(options[best], "logprob", None), None
    return ParsedAnswer(None, "unparsed", None), None


def parse_answer(
    text: str | None,
    options: Sequence[str],
    logprob_fn: Callable[[list[str]], Sequence[float]] | None = None,
) -> ParsedAnswer:
    """Read the model's answer from `text`: boxed, else the last answer statement,
    else (with `logprob_fn`) the highest-scoring option. See the module docstring
    for every rule."""
    return _parse(text or "", _option_table(tuple(options)), logprob_fn)[0]


# "**Final Answer**", "The answer is:", "Conclusion:" ending the text before the
# answer: a lead-in that belongs to the answer, not to the reasoning.
_LEAD_IN = re.compile(
    r"(?:final\s+answer|answer(?:\s+is|\s+would\s+be)?|conclusion|prediction)[\s*_#:\uff1a=]*\Z", re.I
)
_SENTENCE_END = re.compile(r"[.!?](?=\s)")
_PUNCTUATION_LINE = re.compile(r"[\W_]*\Z")


def _sentence_start(text: str, line_start: int, position: int) -> int:
    """Start of the sentence holding `position`, not before its line's start."""
    start = line_start
    for end in _SENTENCE_END.finditer(text, line_start, position):
        start = end.end()
    while start < position and text[start] in " \t":
        start += 1
    return start


def _looks_like_answer(candidate: str) -> bool:
    """Without options: a short rest of line counts as an answer, a long one is prose."""
    cleaned = _clean(candidate)
    return bool(cleaned) and len(cleaned.split()) <= 12


def split_rationale(text: str | None, options: Sequence[str] | None = None) -> str:
    """The reasoning part of `text`: the text before the final answer, without the
    answer's sentence, its lead-in ("**Final Answer**", "The answer is:") and
    whatever follows it. When the answer comes first ("Answer: No\\n\\nThe
    patient ..."), the text after the answer's line. With `options`, the answer
    is the one `parse_answer` reads; without, the last box, else the last answer
    statement whose rest of line is short. Text with no answer is returned whole
    (stripped)."""
    text = text or ""
    if not text.strip():
        return ""
    if options is not None:
        anchor = _parse(text, _option_table(tuple(options)), None)[1]
    else:
        boxes = [start for start, content in _boxes(text) if any(ch.isalnum() for ch in _clean(content))]
        anchor = boxes[-1] if boxes else None
        last = _last_line(text) if anchor is None else None
        if last is not None:
            cleaned = _clean(last[1])
            if cleaned.casefold() in _BARE_YES_NO or _BARE_LETTER.fullmatch(cleaned):
                anchor = last[0]
        if anchor is None:
            for start, match in reversed(_statements(text)[-_MAX_STATEMENTS:]):
                if _looks_like_answer(_candidate(text, match)):
                    anchor = start
                    break
    if anchor is None:
        return text.strip()

    line_start = text.rfind("\n", 0, anchor) + 1
    head = text[: _sentence_start(text, line_start, anchor)]
    for _ in range(5):  # peel lead-ins and separator lines ("---", "**") above the answer
        head = head.rstrip()
        last_line_start = head.rfind("\n") + 1
        sentence = _sentence_start(head, last_line_start, len(head))
        segment = head[sentence:]
        if segment and len(segment) <= _MAX_CANDIDATE and _LEAD_IN.search(segment):
            head = head[:sentence]
        elif head and _PUNCTUATION_LINE.match(head, last_line_start):
            head = head[:last_line_start]
        else:
            break
    head = head.strip()
    if head:
        return head
    line_end = text.find("\n", anchor)
    return "" if line_end < 0 else text[line_end:].strip()
