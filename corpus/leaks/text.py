"""The text a leak rule sees: normalised, tokenised, with misspelled reference words corrected.

Rationales are checked in two views:

* ``norm``: NFKC, straight quotes, "-" for every dash, no zero-width
  characters, case-folded (`normalise`). Verdicts report spans of this view.
* ``canon``: ``norm`` with each misspelled *reference word* replaced by the
  word it misspells ("anwser" -> "answer", "hnt" -> "hint", "gievn" ->
  "given"), so every rule written for the right spelling also catches the
  wrong one. A token is read as a misspelling of a lexicon word when it is
  within the allowed edits of that word (optimal string alignment: a swap of
  two neighbouring letters is one edit), starts with the same letter, and is
  not itself an English word (pyspellchecker's frequency list): "hit",
  "started" and "valve" stay what they are. A token of at least
  ``scrambled_min_length`` letters that has exactly a lexicon word's letters
  in another order, first letter kept, is read as that word too ("awnser",
  "anwesr": two swaps, beyond the edit budget, but a common way to mistype).

Spans found in ``canon`` map back to ``norm`` (`Text.to_norm`).
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from rapidfuzz.distance import OSA

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


TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_WORD = re.compile(r"[a-z]+")  # only plain letter tokens can be misspellings (no digits: "h1n1", "t4")
# A sentence ends at . ! ? followed by whitespace, or at a line break; "4.2" and "e.g.x" do not split.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+|\n+")


@dataclass(frozen=True)
class Spelling:
    """The spelling section of a rules file: which words are corrected, and how far."""

    words: frozenset[str]
    exceptions: frozenset[str] = frozenset()
    max_edits: int = 1
    long_word: int = 8  # words of at least this many letters may be max_edits + 1 edits away
    min_length: int = 3
    known_word_min_count: int = 50  # a token this frequent in English is a word, not a misspelling
    scrambled_min_length: int = 5  # 0: no scrambled-letter matches

    def correct(self, token: str) -> str | None:
        """The lexicon word `token` misspells, or None."""
        return _correct(token, self)


@lru_cache(maxsize=1)
def _english() -> dict:
    from spellchecker import SpellChecker

    return SpellChecker(distance=1).word_frequency.dictionary


@lru_cache(maxsize=65536)
def _correct(token: str, spelling: Spelling) -> str | None:
    if len(token) < spelling.min_length or token in spelling.words or token in spelling.exceptions:
        return None
    if _english().get(token, 0) >= spelling.known_word_min_count:
        return None
    best, best_distance = None, None
    for word in spelling.words:
        if word[0] != token[0] or abs(len(word) - len(token)) > spelling.max_edits + 1:
            continue
        allowed = spelling.max_edits + (1 if len(word) >= spelling.long_word else 0)
        distance = OSA.distance(token, word, score_cutoff=allowed)
        if distance <= allowed and (best_distance is None or (distance, word) < (best_distance, best)):
            best, best_distance = word, distance
    if best is None and spelling.scrambled_min_length and len(token) >= spelling.scrambled_min_length:
        letters = sorted(token)
        best = min((word for word in spelling.words if word[0] == token[0] and sorted(word) == letters), default=None)
    return best


class Text:
    """One rationale in both views, with token and sentence positions of ``canon``."""

    def __init__(self, raw: str, spelling: Spelling | None):
        self.norm = normalise(raw)
        pieces, self._moves, position = [], [], 0  # moves: (canon_start, canon_end, norm_start, norm_end)
        self.corrections: list[tuple[str, str]] = []
        shift = 0
        if spelling is not None:
            for match in _WORD.finditer(self.norm):
                word = spelling.correct(match.group(0))
                if word is None:
                    continue
                pieces.append(self.norm[position: match.start()])
                canon_start = match.start() + shift
                pieces.append(word)
                shift += len(word) - len(match.group(0))
                self._moves.append((canon_start, canon_start + len(word), match.start(), match.end()))
                self.corrections.append((match.group(0), word))
                position = match.end()
        pieces.append(self.norm[position:])
        self.canon = "".join(pieces) if self._moves else self.norm
        self._move_starts = [move[0] for move in self._moves]
        self._token_starts: list[int] | None = None
        self._sentence_ends: list[int] | None = None

    def to_norm(self, start: int, end: int) -> tuple[int, int]:
        """A span of ``canon`` as a span of ``norm``."""
        return self._map(start, False), self._map(end, True)

    def _map(self, position: int, is_end: bool) -> int:
        index = bisect.bisect_right(self._move_starts, position - (1 if is_end else 0)) - 1
        if index < 0:
            return position
        canon_start, canon_end, norm_start, norm_end = self._moves[index]
        if position < canon_end or (is_end and position == canon_end):
            return norm_end if is_end else norm_start
        return position - canon_end + norm_end

    def token_index(self, position: int) -> int:
        """How many tokens of ``canon`` start before `position`."""
        if self._token_starts is None:
            self._token_starts = [m.start() for m in TOKEN.finditer(self.canon)]
        return bisect.bisect_left(self._token_starts, position)

    def sentence_index(self, position: int) -> int:
        if self._sentence_ends is None:
            self._sentence_ends = [m.end() for m in _SENTENCE_END.finditer(self.canon)]
        return bisect.bisect_right(self._sentence_ends, position)
